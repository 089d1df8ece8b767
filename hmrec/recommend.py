"""``hmrec recommend``: one customer's precomputed list, read without Spark.

Reading goes through the ``deltalake`` package (delta-rs), not a JVM: it
resolves the table's current snapshot from the Delta log, and
``pyarrow.parquet`` reads just the row groups of those live files whose
min/max statistics can hold the wanted ids (the scoring job sorts each file
by customer_id, so most of a large table is skipped). Small row groups are
matched with a plain Python scan: ``pyarrow.dataset``, and any pyarrow array
built from Python values, imports pandas, a third of a second of a command
that should answer in well under one.

Why the file list and not ``DeltaTable.to_pyarrow_dataset()``: with
deltalake 1.6 (built on arro3) that call does return a real pyarrow dataset
and works with the pinned pyarrow 14, but its files are opened through a
filesystem implemented by delta-rs, and at interpreter exit the process
intermittently aborts ("terminate called without an active exception") while
pyarrow's reader threads and delta-rs's runtime are torn down. pyarrow's own
filesystem over ``DeltaTable.file_uris()`` exits cleanly. This reads
unpartitioned tables (gold/recommendations, bronze/articles) without
deletion vectors, which is how hmrec writes them; anything else is reported.
"""
from __future__ import annotations

import re
import sys
from typing import TextIO

from hmrec.config import Config
from hmrec.errors import HmrecError

CUSTOMER_ID = re.compile(r"^[0-9a-f]{64}$")
SHOWN = ["rank", "article_id", "prod_name", "product_type_name", "source", "score"]


def live_files(cfg: Config, name: str, hint: str) -> list[str]:
    """Paths of the parquet files in a Delta table's current snapshot; ``hint`` says what to run if it is missing."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

    location = cfg.table_path(name)
    try:
        table = DeltaTable(location)
        features = table.protocol().reader_features or []
        if "deletionVectors" in features or table.metadata().partition_columns:
            raise HmrecError(
                f"Delta table {name} at {location} uses deletion vectors or partitions, which `hmrec recommend` "
                f"does not read; rewrite it with `hmrec score`"
            )
        return table.file_uris()
    except TableNotFoundError:
        raise HmrecError(f"Delta table {name} does not exist at {location}; {hint}") from None
    except (DeltaProtocolError, DeltaError) as exc:
        raise HmrecError(f"cannot read Delta table {name} at {location} without Spark: {exc}") from None


# Above this many rows in a row group, pyarrow's vectorised is_in beats a Python
# scan even after paying for the pandas import it triggers.
VECTORISE_ABOVE = 200_000


def _matching_positions(keys, values: set[str]) -> list[int]:
    """Row positions of a string column whose value is in ``values``."""
    if len(keys) <= VECTORISE_ABOVE:
        # Building any pyarrow array from Python objects imports pandas; a plain scan does not.
        return [i for i, v in enumerate(keys.to_pylist()) if v in values]
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.is_in(keys, value_set=pa.array(sorted(values), type=pa.string()))
    return pc.indices_nonzero(mask).to_pylist()


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Sorted positions as (start, length) runs of consecutive rows."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


def read_matching(files: list[str], column: str, values: set[str], columns: list[str]) -> list[dict]:
    """Rows (as dicts of ``columns``) of ``files`` whose string ``column`` is in ``values``.

    Row groups whose min/max statistics rule the values out are never read;
    the others are read for ``column`` first and in full only when they match.
    """
    import pyarrow.parquet as pq

    lo, hi = min(values), max(values)
    rows: list[dict] = []
    for f in files:
        if "://" in f:
            from pyarrow import fs

            filesystem, path = fs.FileSystem.from_uri(f)
            pf = pq.ParquetFile(filesystem.open_input_file(path))
        else:
            pf = pq.ParquetFile(f)
        meta = pf.metadata
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            stats = next((rg.column(i).statistics for i in range(rg.num_columns) if rg.column(i).path_in_schema == column), None)
            if stats is not None and stats.has_min_max and (stats.max < lo or stats.min > hi):
                continue
            positions = _matching_positions(pf.read_row_group(g, columns=[column])[column], values)
            if not positions:
                continue
            group = pf.read_row_group(g, columns=columns)
            for start, length in _runs(positions):
                rows.extend(group.slice(start, length).to_pylist())
    return rows


def check_customer_id(customer_id: str) -> str:
    """The id in its Kaggle form (64 lowercase hex characters), or an error saying what is wrong."""
    cid = customer_id.strip().lower()
    if not CUSTOMER_ID.match(cid):
        raise HmrecError(
            f"customer id '{customer_id}' is not a customer_id: expected 64 hexadecimal characters "
            f"(got {len(customer_id.strip())} characters), as in customers.csv"
        )
    return cid


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of recommendation rows."""
    head = f"{'rank':>4}  {'article_id':<10}  {'prod_name':<32}  {'product_type_name':<20}  {'source':<10}  {'score':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['rank']:>4}  {r['article_id']:<10}  {str(r['prod_name'] or '')[:32]:<32}  "
            f"{str(r['product_type_name'] or '')[:20]:<20}  {r['source']:<10}  {r['score']:>9.4f}"
        )
    return "\n".join(lines)


def recommend(cfg: Config, customer_id: str, k: int | None = None, out: TextIO | None = None) -> list[dict]:
    """Print and return a customer's stored list: rank, article_id, prod_name, product_type_name, source, score.

    ``k`` limits the rows shown (default: every stored row).
    """
    cid = check_customer_id(customer_id)
    if k is not None and k <= 0:
        raise HmrecError(f"--k {k}: give a positive number of recommendations to show")

    files = live_files(cfg, "gold/recommendations", "run `hmrec score --as-of YYYY-MM-DD` (or `hmrec run`) first")
    stored = read_matching(files, "customer_id", {cid}, ["article_id", "rank", "score", "source", "model_version", "as_of"])
    if not stored:
        raise HmrecError(
            f"customer_id {cid} has no recommendations in gold/recommendations at {cfg.table_path('gold/recommendations')}: "
            f"it is not in bronze/customers of the last refresh; check the id, or ingest the new customers and rerun `hmrec run`"
        )
    stored.sort(key=lambda r: r["rank"])
    if k is not None:
        stored = stored[:k]

    files = live_files(cfg, "bronze/articles", "run `hmrec ingest --data DIR` first")
    names = read_matching(files, "article_id", {r["article_id"] for r in stored}, ["article_id", "prod_name", "product_type_name"])
    by_id = {r["article_id"]: r for r in names}
    rows = [
        {
            "rank": r["rank"],
            "article_id": r["article_id"],
            "prod_name": by_id.get(r["article_id"], {}).get("prod_name"),
            "product_type_name": by_id.get(r["article_id"], {}).get("product_type_name"),
            "source": r["source"],
            "score": r["score"],
        }
        for r in stored
    ]
    first = stored[0]
    stream = out if out is not None else sys.stdout
    print(f"customer {cid}: {len(rows)} recommendations as of {first['as_of']}, model version {first['model_version']}", file=stream)
    print(format_rows(rows), file=stream, flush=True)
    return rows
