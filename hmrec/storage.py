"""Reading and writing Delta tables: the only module that touches storage."""
from __future__ import annotations

import datetime as dt
import json

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from hmrec.config import Config


def path(cfg: Config, name: str) -> str:
    return cfg.table_path(name)


def exists(spark: SparkSession, cfg: Config, name: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path(cfg, name))


def read(spark: SparkSession, cfg: Config, name: str, version: int | None = None) -> DataFrame:
    """Read a table; a missing table is an error that names the stage to run."""
    p = path(cfg, name)
    if not DeltaTable.isDeltaTable(spark, p):
        raise FileNotFoundError(
            f"Delta table {name} does not exist at {p}; run the stage that writes it "
            f"(see `hmrec --help`) or check paths.lakehouse"
        )
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(p)


def read_as_of(spark: SparkSession, cfg: Config, name: str, as_of: dt.date) -> DataFrame:
    """Rows of an as_of-partitioned table for one as-of date."""
    from pyspark.sql import functions as F

    return read(spark, cfg, name).where(F.col("as_of") == F.lit(as_of))


def version(spark: SparkSession, cfg: Config, name: str) -> int | None:
    """Current Delta version of a table, or None if it does not exist."""
    p = path(cfg, name)
    if not DeltaTable.isDeltaTable(spark, p):
        return None
    return DeltaTable.forPath(spark, p).history(1).select("version").first()[0]


def has_as_of(spark: SparkSession, cfg: Config, name: str, as_of: dt.date) -> bool:
    """Whether an as_of-partitioned table already holds rows for ``as_of``."""
    if not exists(spark, cfg, name):
        return False
    return read_as_of(spark, cfg, name, as_of).limit(1).count() > 0


def ensure_table(
    spark: SparkSession,
    cfg: Config,
    name: str,
    schema: StructType,
    partition_by: list[str] | None = None,
    constraints: dict[str, str] | None = None,
) -> None:
    """Create the table if it is missing and add any missing CHECK constraint."""
    p = path(cfg, name)
    builder = DeltaTable.createIfNotExists(spark).location(p).addColumns(schema)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    builder.execute()
    if constraints:
        props = DeltaTable.forPath(spark, p).detail().select("properties").first()[0] or {}
        for cname, expr in constraints.items():
            if f"delta.constraints.{cname.lower()}" not in props:
                spark.sql(f"ALTER TABLE delta.`{p}` ADD CONSTRAINT {cname} CHECK ({expr})")


def write(
    df: DataFrame,
    cfg: Config,
    name: str,
    mode: str = "overwrite",
    replace_where: str | None = None,
    partition_by: list[str] | None = None,
    metadata: dict | None = None,
) -> None:
    """Write ``df`` as one atomic Delta commit.

    ``replace_where`` replaces just the matching rows (one as-of partition);
    plain overwrite replaces the table, whose previous version stays readable
    through time travel. ``metadata`` is stored as the commit's userMetadata.
    """
    writer = df.write.format("delta").mode(mode)
    if replace_where is not None:
        writer = writer.option("replaceWhere", replace_where)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if metadata is not None:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True, default=str))
    writer.save(path(cfg, name))


def write_as_of(df: DataFrame, cfg: Config, name: str, as_of: dt.date, metadata: dict | None = None) -> None:
    """Replace one as-of partition of a gold table atomically."""
    write(
        df,
        cfg,
        name,
        mode="overwrite",
        replace_where=f"as_of = '{as_of.isoformat()}'",
        partition_by=["as_of"],
        metadata=metadata,
    )


def last_metadata(spark: SparkSession, cfg: Config, name: str) -> dict | None:
    """userMetadata of the table's latest commit, parsed, or None."""
    p = path(cfg, name)
    if not DeltaTable.isDeltaTable(spark, p):
        return None
    row = DeltaTable.forPath(spark, p).history(1).select("userMetadata").first()
    if row is None or not row[0]:
        return None
    try:
        return json.loads(row[0])
    except ValueError:
        return None


def last_operation_metrics(spark: SparkSession, cfg: Config, name: str) -> dict[str, int]:
    """operationMetrics of the table's latest commit (e.g. ``numOutputRows``) as ints.

    Lets a job report how many rows it wrote without counting them again.
    """
    row = DeltaTable.forPath(spark, path(cfg, name)).history(1).select("operationMetrics").first()
    metrics = (row[0] if row is not None else None) or {}
    return {k: int(v) for k, v in metrics.items() if str(v).lstrip("-").isdigit()}
