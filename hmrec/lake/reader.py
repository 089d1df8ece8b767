"""Reading Delta tables without a JVM, for commands that must answer in well under a second.

Reading goes through the ``deltalake`` package (delta-rs), not Spark: it
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
filesystem over ``DeltaTable.file_uris()`` exits cleanly.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError, DeltaProtocolError, TableNotFoundError

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import manifest
from hmrec.lake.tables import Table

if TYPE_CHECKING:
    import pandas as pd


def live_files(cfg: Config, table: Table, hint: str, as_of: str | None = None) -> list[str]:
    """Paths of the parquet files in a table's current snapshot (of one as-of partition when given).

    A bronze table's snapshot is the version of the last complete ingest
    manifest, as through Spark. ``hint`` says what to run if the table is
    missing. Tables with deletion vectors are refused: hmrec never writes
    them, and reading around them needs more than the file list.
    """
    location = cfg.table_path(table.name)
    try:
        version = manifest.pinned_version(cfg, table)
        delta = DeltaTable(location) if version is None else DeltaTable(location, version=version)
        features = delta.protocol().reader_features or []
        if "deletionVectors" in features:
            raise HmrecError(
                f"Delta table {table} at {location} uses deletion vectors, which hmrec reads only through Spark; "
                f"rewrite it with `hmrec {table.writer}`"
            )
        filters = [("as_of", "=", as_of)] if as_of and delta.metadata().partition_columns else None
        return delta.file_uris(partition_filters=filters)
    except TableNotFoundError:
        raise HmrecError(f"Delta table {table} does not exist at {location}; {hint}") from None
    except (DeltaProtocolError, DeltaError) as exc:
        raise HmrecError(f"cannot read Delta table {table} at {location} without Spark: {exc}") from None


# Above this many rows in a row group, pyarrow's vectorised is_in beats a Python
# scan even after paying for the pandas import it triggers.
VECTORISE_ABOVE = 200_000


def _matching_positions(keys, values: set[str]) -> list[int]:
    """Row positions of a string column whose value is in ``values``."""
    if len(keys) <= VECTORISE_ABOVE:
        # Building any pyarrow array from Python objects imports pandas; a plain scan does not.
        return [i for i, v in enumerate(keys.to_pylist()) if v in values]
    # imported here: they import pandas, which the small-table path avoids (see the module notes)
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


def read_table(cfg: Config, table: Table, columns: list[str], as_of: str | None = None) -> "pd.DataFrame":
    """Some columns of a table (one as-of partition if given) as a pandas frame, read without a JVM."""
    import pandas as pd  # imported here: the fast lookups above never need pandas

    parts = [pq.read_table(f, columns=columns).to_pandas() for f in live_files(cfg, table, f"run `hmrec {table.writer}` first", as_of)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
