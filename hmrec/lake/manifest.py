"""Ingest manifests: which versions of the bronze tables make one whole ingest.

Delta commits each table on its own; an ingest writes four of them. So the
ingest ends by appending one row to ``tables.INGEST_MANIFESTS`` holding the
Delta version it wrote of each table (and their row counts and the input
fingerprint), and every reader reads a table flagged ``in_manifest`` at the
version of the latest manifest row (:func:`pinned_version`; both
:mod:`hmrec.lake.storage` and the JVM-free :mod:`hmrec.lake.reader` ask
here). An ingest killed between its table commits has appended no row, so
nobody reads what it left; the next ingest writes every table again and
commits its own manifest.

A lakehouse written before manifests existed has no manifest table: its
tables are read at their latest version until the next ingest records one.
A manifest table without rows means the first ingest has not finished.

The manifest table is small (one row per ingest) and read without Spark
through delta-rs when the lakehouse is a local path; on other roots
(``hdfs://``, ``s3a://``) Spark reads it.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import tables
from hmrec.lake.tables import Table


class NoCompleteIngest(HmrecError):
    """The manifest table exists but holds no row: no ingest has finished in this lakehouse."""


@dataclass(frozen=True)
class Manifest:
    """One finished ingest: the version and row count of each bronze table it wrote."""

    manifest_id: str
    seq: int
    committed_at: dt.datetime | None
    versions: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    # {t_dat or "-": (rows, checksum)} of every transactions row ingested so far (empty before they were kept)
    days: dict[str, tuple[int, int]] = field(default_factory=dict)
    batch: dict = field(default_factory=dict)  # what this ingest added (hmrec.etl.ingest)

    def describe(self) -> str:
        """``manifest <id> (ingest #<seq>, <time>)`` for messages."""
        when = f", {self.committed_at:%Y-%m-%d %H:%M:%S}" if self.committed_at else ""
        return f"manifest {self.manifest_id} (ingest #{self.seq}{when})"


def _local_root(cfg: Config) -> bool:
    root = cfg.lakehouse
    return "://" not in root or root.startswith("file://")


def _as_dict(value: object) -> dict[str, int]:
    """A map column's value (pyarrow gives a list of pairs, Spark a dict) as a dict."""
    if value is None:
        return {}
    items = value.items() if isinstance(value, dict) else value
    return {str(k): int(v) for k, v in items}


def _from_rows(rows: list[dict]) -> Manifest | None:
    if not rows:
        return None
    row = max(rows, key=lambda r: int(r["seq"]))
    counts, sums = _as_dict(row.get("day_rows")), _as_dict(row.get("day_sums"))
    return Manifest(
        manifest_id=str(row["manifest_id"]),
        seq=int(row["seq"]),
        committed_at=row.get("committed_at"),
        versions=_as_dict(row.get("versions")),
        rows=_as_dict(row.get("rows")),
        fingerprint=row.get("fingerprint") or "",
        days={day: (n, sums.get(day, 0)) for day, n in counts.items()},
        batch=json.loads(row["batch"]) if row.get("batch") else {},
    )


_MISSING = object()


def _read_delta_rs(cfg: Config) -> object:
    """The manifest rows through delta-rs, or ``_MISSING`` when the table does not exist."""
    location = cfg.table_path(tables.INGEST_MANIFESTS.name)
    try:
        delta = DeltaTable(location)
    except TableNotFoundError:
        return _MISSING
    rows: list[dict] = []
    for f in delta.file_uris():
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def _read_spark(spark: object, cfg: Config) -> object:
    """The manifest rows through Spark, or ``_MISSING`` when the table does not exist."""
    # imported here: this module is also used by the JVM-free reader, which never loads delta-spark
    from delta.tables import DeltaTable as SparkDeltaTable

    location = cfg.table_path(tables.INGEST_MANIFESTS.name)
    if not SparkDeltaTable.isDeltaTable(spark, location):
        return _MISSING
    return [r.asDict() for r in spark.read.format("delta").load(location).collect()]


def read_latest(cfg: Config, spark: object | None = None) -> tuple[bool, Manifest | None]:
    """(whether the manifest table exists, its latest row or None).

    Read through delta-rs for a local lakehouse, else through ``spark``
    (which must then be given).
    """
    if _local_root(cfg) or spark is None:
        rows = _read_delta_rs(cfg)
    else:
        rows = _read_spark(spark, cfg)
    if rows is _MISSING:
        return False, None
    return True, _from_rows(rows)  # type: ignore[arg-type]


def history(cfg: Config, spark: object | None = None) -> list[Manifest]:
    """Every complete ingest's manifest, oldest first (empty when there is none)."""
    if _local_root(cfg) or spark is None:
        rows = _read_delta_rs(cfg)
    else:
        rows = _read_spark(spark, cfg)
    if rows is _MISSING:
        return []
    return sorted((_from_rows([r]) for r in rows), key=lambda m: m.seq)  # type: ignore[union-attr]


def latest(cfg: Config, spark: object | None = None) -> Manifest | None:
    """The last complete ingest's manifest, or None when the lakehouse has none (yet)."""
    return read_latest(cfg, spark)[1]


def pinned_version(cfg: Config, table: Table, spark: object | None = None) -> int | None:
    """The version of ``table`` every reader reads: the last manifest's, or None for the latest version.

    None also for tables outside manifests and for a lakehouse written before
    manifests existed. A manifest table without rows (the first ingest never
    finished) is a :class:`NoCompleteIngest` error.
    """
    if not table.in_manifest:
        return None
    exists, manifest = read_latest(cfg, spark)
    if not exists:
        return None
    if manifest is None:
        raise NoCompleteIngest(
            f"no ingest has finished in the lakehouse {cfg.lakehouse} yet, so {table} has no complete version "
            f"to read (an ingest was stopped before its end); run `hmrec ingest --data DIR` (or `hmrec run`)"
        )
    return manifest.versions.get(table.name)


def fingerprint_json(fp: dict) -> str:
    """The one text form of an ingest fingerprint, as stored in a manifest."""
    return json.dumps(fp, sort_keys=True, default=str)


def unchanged_before(history: list[Manifest], old_id: str | None, new_id: str | None,
                     before: dt.date) -> str | None:
    """Why the bronze rows a stage reads are the same under two manifests, or None when that is not known.

    The rows read are the catalogues (articles and customers, whole) and the
    transactions dated before ``before``. They are the same when the
    catalogues' versions are equal, every ingest between the two only
    appended transactions (batch mode ``append`` or ``grown``: earlier rows
    left as they were, :mod:`hmrec.etl.ingest`), and every date before
    ``before`` has the same row count and checksum in both. A manifest
    without per-date checksums, or one not in ``history``, is never the same.
    Returns a reason naming the dates that changed, for the refresh's log.
    """
    if old_id is None or new_id is None:
        return None
    if old_id == new_id:
        return f"the same bronze data ({old_id})"
    seqs = {m.manifest_id: i for i, m in enumerate(history)}  # the last row of each id (a repeat keeps its id)
    if old_id not in seqs or new_id not in seqs or seqs[old_id] > seqs[new_id]:
        return None
    old, new = history[seqs[old_id]], history[seqs[new_id]]
    if not old.days or not new.days:
        return None
    for table in (tables.ARTICLES, tables.CUSTOMERS):
        if old.versions.get(table.name) != new.versions.get(table.name):
            return None
    tx = tables.TRANSACTIONS.name
    prev = old
    for later in history[seqs[old_id] + 1: seqs[new_id] + 1]:
        if later.versions.get(tx) != prev.versions.get(tx) and later.batch.get("mode") not in ("append", "grown"):
            return None
        prev = later
    limit = before.isoformat()
    changed = sorted(d for d in set(old.days) | set(new.days) if d[:1].isdigit() and old.days.get(d) != new.days.get(d))
    if any(d < limit for d in changed):
        return None
    if not changed:
        return f"no dated transaction changed ({old_id} -> {new_id})"
    span = changed[0] if len(changed) == 1 else f"{changed[0]} .. {changed[-1]}"
    return f"bronze data changed ({old_id} -> {new_id}) only on {span}, on or after {limit}, which it does not read"
