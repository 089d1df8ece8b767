"""Reading and writing Delta tables through Spark: the only module that touches storage.

Tables are named by their :mod:`hmrec.lake.tables` entry, which also gives
their partitioning. ``hmrec.lake.reader`` reads them without a JVM.

Bronze tables (``in_manifest`` in the catalogue) are read, and their
:func:`version` reported, at the version of the last complete ingest manifest
(:func:`hmrec.lake.manifest.pinned_version`), so no stage ever reads what a
killed ingest left half-written. :func:`head_version` is the latest commit,
for the writers.
"""
from __future__ import annotations

import datetime as dt
import json

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.lake import manifest
from hmrec.lake.tables import Table


def path(cfg: Config, table: Table) -> str:
    return cfg.table_path(table.name)


def exists(spark: SparkSession, cfg: Config, table: Table) -> bool:
    return DeltaTable.isDeltaTable(spark, path(cfg, table))


def read(spark: SparkSession, cfg: Config, table: Table, version: int | None = None) -> DataFrame:
    """Read a table (a bronze table at its manifest's version unless ``version`` is given).

    A missing table is an error that names the stage to run.
    """
    p = path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, p):
        raise FileNotFoundError(
            f"Delta table {table.name} does not exist at {p}; run `hmrec {table.writer}` "
            f"(or `hmrec run`) first, or check paths.lakehouse"
        )
    if version is None:
        version = manifest.pinned_version(cfg, table, spark)
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(p)


def read_as_of(spark: SparkSession, cfg: Config, table: Table, as_of: dt.date) -> DataFrame:
    """Rows of a per-cutoff table for one as-of date.

    A table replaced as a whole by each run (``table.replaced_whole``) is read
    at its last version written for ``as_of``, by time travel when a later run
    has replaced it since; no such version reads as no rows.
    """
    rows = read(spark, cfg, table).where(F.col("as_of") == F.lit(as_of))
    if not table.replaced_whole or rows.limit(1).count() > 0:
        return rows
    version = version_for_as_of(spark, cfg, table, as_of)
    if version is None:
        return spark.createDataFrame([], table.schema)
    return read(spark, cfg, table, version=version).where(F.col("as_of") == F.lit(as_of))


def version_for_as_of(spark: SparkSession, cfg: Config, table: Table, as_of: dt.date) -> int | None:
    """The latest version of a whole-replaced table whose commit was written for ``as_of`` (its userMetadata)."""
    p = path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, p):
        return None
    wanted = as_of.isoformat()
    for row in DeltaTable.forPath(spark, p).history().select("version", "userMetadata").orderBy(F.col("version").desc()).collect():
        try:
            meta = json.loads(row["userMetadata"]) if row["userMetadata"] else {}
        except ValueError:
            continue
        if meta.get("as_of") == wanted:
            return int(row["version"])
    return None


def version(spark: SparkSession, cfg: Config, table: Table) -> int | None:
    """The Delta version of a table that readers see, or None if it does not exist.

    That is the latest version, but for a bronze table the version of the last
    complete ingest manifest.
    """
    p = path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, p):
        return None
    pinned = manifest.pinned_version(cfg, table, spark)
    if pinned is not None:
        return pinned
    return DeltaTable.forPath(spark, p).history(1).select("version").first()[0]


def head_version(spark: SparkSession, cfg: Config, table: Table) -> int | None:
    """The latest committed Delta version of a table, or None if it does not exist."""
    p = path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, p):
        return None
    return DeltaTable.forPath(spark, p).history(1).select("version").first()[0]


def has_as_of(spark: SparkSession, cfg: Config, table: Table, as_of: dt.date) -> bool:
    """Whether a per-cutoff table already holds rows for ``as_of``."""
    if not exists(spark, cfg, table):
        return False
    return read_as_of(spark, cfg, table, as_of).limit(1).count() > 0


def ensure_table(spark: SparkSession, cfg: Config, table: Table, constraints: dict[str, str] | None = None) -> None:
    """Create the table (catalogue schema and partitioning) if it is missing and add any missing CHECK constraint."""
    p = path(cfg, table)
    builder = DeltaTable.createIfNotExists(spark).location(p).addColumns(table.schema)
    if table.partition_by:
        builder = builder.partitionedBy(*table.partition_by)
    builder.execute()
    if constraints:
        props = DeltaTable.forPath(spark, p).detail().select("properties").first()[0] or {}
        for cname, expr in constraints.items():
            if f"delta.constraints.{cname.lower()}" not in props:
                spark.sql(f"ALTER TABLE delta.`{p}` ADD CONSTRAINT {cname} CHECK ({expr})")


def write(
    df: DataFrame,
    cfg: Config,
    table: Table,
    mode: str = "overwrite",
    replace_where: str | None = None,
    metadata: dict | None = None,
    merge_schema: bool = False,
) -> int:
    """Write ``df`` as one atomic Delta commit, partitioned as the catalogue says; returns the rows written.

    ``replace_where`` replaces just the matching rows (one as-of partition);
    plain overwrite replaces the table, whose previous version stays readable
    through time travel. ``metadata`` is stored as the commit's userMetadata.
    The row count comes from the commit's operationMetrics, so nothing is
    counted twice; a write that made no commit (nothing to change) wrote 0.
    """
    return commit(df, cfg, table, mode, replace_where, metadata, merge_schema)[0]


def commit(
    df: DataFrame,
    cfg: Config,
    table: Table,
    mode: str = "overwrite",
    replace_where: str | None = None,
    metadata: dict | None = None,
    merge_schema: bool = False,
) -> tuple[int, int | None]:
    """:func:`write`, returning (rows written, the table's latest version after it)."""
    before = head_version(df.sparkSession, cfg, table)
    writer = df.write.format("delta").mode(mode)
    if replace_where is not None:
        writer = writer.option("replaceWhere", replace_where)
    if table.partition_by:
        writer = writer.partitionBy(*table.partition_by)
    if metadata is not None:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True, default=str))
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    writer.save(path(cfg, table))
    latest = DeltaTable.forPath(df.sparkSession, path(cfg, table)).history(1).select("version", "operationMetrics").first()
    if latest is None or latest["version"] == before:
        return 0, before
    return _int_metrics(latest["operationMetrics"]).get("numOutputRows", 0), int(latest["version"])


def _sql_literal(value: object) -> str:
    if isinstance(value, dt.date):
        value = value.isoformat()
    return "'" + str(value).replace("'", "''") + "'"


def write_partition(
    df: DataFrame, cfg: Config, table: Table, as_of: dt.date, metadata: dict | None = None,
    merge_schema: bool = False, **keys: object
) -> int:
    """Replace the rows of one as-of (and of ``keys``, e.g. ``model_version=...``) in one atomic commit.

    ``merge_schema`` adds the columns of ``df`` that the table lacks (Delta's schema evolution), so a
    table written by an earlier release takes rows with new columns; its other rows read them as null.
    Returns the rows written.
    """
    where = " AND ".join(f"{col} = {_sql_literal(v)}" for col, v in {"as_of": as_of, **keys}.items())
    return write(df, cfg, table, mode="overwrite", replace_where=where, metadata=metadata, merge_schema=merge_schema)


def commit_metadata(spark: SparkSession, cfg: Config, table: Table, **match: str) -> dict | None:
    """The userMetadata of the table's latest commit whose metadata holds every ``match`` item (e.g. the
    commit that last wrote one as-of partition), parsed; None when no commit matches."""
    p = path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, p):
        return None
    for row in DeltaTable.forPath(spark, p).history().select("version", "userMetadata").orderBy(F.col("version").desc()).collect():
        try:
            meta = json.loads(row["userMetadata"]) if row["userMetadata"] else {}
        except ValueError:
            continue
        if isinstance(meta, dict) and all(meta.get(k) == v for k, v in match.items()):
            return meta
    return None


def last_metadata(spark: SparkSession, cfg: Config, table: Table) -> dict | None:
    """userMetadata of the table's latest commit, parsed, or None."""
    p = path(cfg, table)
    if not DeltaTable.isDeltaTable(spark, p):
        return None
    row = DeltaTable.forPath(spark, p).history(1).select("userMetadata").first()
    if row is None or not row[0]:
        return None
    try:
        return json.loads(row[0])
    except ValueError:
        return None


def last_operation_metrics(spark: SparkSession, cfg: Config, table: Table) -> dict[str, int]:
    """operationMetrics of the table's latest commit (e.g. ``numOutputRows``) as ints.

    Lets a job report how many rows it wrote without counting them again.
    """
    row = DeltaTable.forPath(spark, path(cfg, table)).history(1).select("operationMetrics").first()
    return _int_metrics(row[0] if row is not None else None)


def _int_metrics(metrics: dict | None) -> dict[str, int]:
    return {k: int(v) for k, v in (metrics or {}).items() if str(v).lstrip("-").isdigit()}


def upsert(df: DataFrame, cfg: Config, table: Table, key: str, metadata: dict | None = None) -> tuple[int, int, int]:
    """Delta ``MERGE`` of ``df`` into ``table`` on ``key``, one atomic commit: (inserted, updated, version).

    A row whose key is new is inserted; a row whose key exists replaces it
    only when some other column differs (null-safe), so an unchanged row is
    neither rewritten nor counted; a row of the table missing from ``df`` is
    kept. ``df`` must hold each key once. ``metadata`` is the commit's userMetadata.
    """
    spark = df.sparkSession
    p = path(cfg, table)
    columns = [c for c in table.schema.fieldNames() if c != key]
    changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in columns)
    conf_key = "spark.databricks.delta.commitInfo.userMetadata"
    if metadata is not None:
        spark.conf.set(conf_key, json.dumps(metadata, sort_keys=True, default=str))
    try:
        (DeltaTable.forPath(spark, p).alias("t")
         .merge(df.select(*table.schema.fieldNames()).alias("s"), f"t.`{key}` = s.`{key}`")
         .whenMatchedUpdateAll(condition=changed)
         .whenNotMatchedInsertAll()
         .execute())
    finally:
        if metadata is not None:
            spark.conf.unset(conf_key)
    latest = DeltaTable.forPath(spark, p).history(1).select("version", "operationMetrics").first()
    metrics = _int_metrics(latest["operationMetrics"])
    return metrics.get("numTargetRowsInserted", 0), metrics.get("numTargetRowsUpdated", 0), int(latest["version"])


def restore(spark: SparkSession, cfg: Config, table: Table, version: int) -> int:
    """Delta ``RESTORE`` of ``table`` to ``version`` (a new commit; time travel keeps the rest); returns the new version."""
    DeltaTable.forPath(spark, path(cfg, table)).restoreToVersion(version)
    return int(head_version(spark, cfg, table))
