"""The split job: training rows before the as-of date, holdout rows in the days after it.

    hmrec split --as-of YYYY-MM-DD

reads ``tables.INTERACTIONS`` and writes the as-of partition of
``tables.TRAIN`` (t_dat < as_of, and within the last ``split.train_days``
days when that is positive) and of ``tables.HOLDOUT`` (as_of <= t_dat <
as_of + ``split.holdout_days``). The two windows never overlap, so nothing the
model learns from is evaluated.

:func:`window` is the one definition of "the last N days before a cutoff"
that the features, the split and the training window all use.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import schemas, storage, tables
from hmrec.progress import log, stage


def window(rows: DataFrame, as_of: dt.date, days: int = 0) -> DataFrame:
    """Rows with t_dat before ``as_of``, and on or after ``as_of - days`` when ``days`` > 0."""
    t = F.col("t_dat")
    cond = t < F.lit(as_of)
    if days > 0:
        cond = cond & (t >= F.lit(as_of - dt.timedelta(days=days)))
    return rows.where(cond)


def train_rows(interactions: DataFrame, as_of: dt.date, train_days: int) -> DataFrame:
    """Interactions before ``as_of`` (the last ``train_days`` days of them when > 0), as SPLIT_ROWS."""
    return schemas.conform(window(interactions, as_of, train_days).withColumn("as_of", F.lit(as_of)), schemas.SPLIT_ROWS)


def holdout_rows(interactions: DataFrame, as_of: dt.date, holdout_days: int) -> DataFrame:
    """Interactions with as_of <= t_dat < as_of + ``holdout_days``, as SPLIT_ROWS."""
    t = F.col("t_dat")
    cond = (t >= F.lit(as_of)) & (t < F.lit(as_of + dt.timedelta(days=holdout_days)))
    return schemas.conform(interactions.where(cond).withColumn("as_of", F.lit(as_of)), schemas.SPLIT_ROWS)


def training_window(spark: SparkSession, cfg: Config, as_of: dt.date) -> DataFrame:
    """The rows models learn from at ``as_of``: the as-of's training rows with both indices, in the last
    ``train.train_days`` days when that is positive. The two-tower model and the ALS peer both read these."""
    if not storage.exists(spark, cfg, tables.TRAIN):
        raise HmrecError(
            f"table {tables.TRAIN} does not exist at {cfg.table_path(tables.TRAIN.name)}; "
            f"run `hmrec split --as-of {as_of.isoformat()}` first"
        )
    rows = window(storage.read_as_of(spark, cfg, tables.TRAIN, as_of), as_of, cfg.train.train_days)
    return rows.where(F.col("customer_idx").isNotNull() & F.col("article_idx").isNotNull())


def split(cfg: Config, spark: SparkSession, as_of: dt.date) -> dict:
    """Write the ``as_of`` partitions of the training and holdout rows; returns the stage summary."""
    with stage("split") as summary:
        interactions = storage.read(spark, cfg, tables.INTERACTIONS)
        span = interactions.agg(F.min("t_dat"), F.max("t_dat"), F.count(F.lit(1))).first()
        first, last, rows_in = span[0], span[1], span[2]
        summary["rows_in"] = rows_in
        summary["as_of"] = as_of.isoformat()
        if first is None:
            raise HmrecError(
                f"{tables.INTERACTIONS} is empty, so there is nothing to split; check {tables.TRANSACTIONS} "
                "and run `hmrec features` again"
            )
        if as_of <= first:
            raise HmrecError(
                f"as-of date {as_of} is not after the first transaction: {tables.INTERACTIONS} covers "
                f"t_dat {first} .. {last}; choose an --as-of between {first + dt.timedelta(days=1)} and "
                f"{last + dt.timedelta(days=1)}"
            )
        lineage = {"as_of": as_of.isoformat()}
        for key, table, rows in (
            ("train_rows", tables.TRAIN, train_rows(interactions, as_of, cfg.split.train_days)),
            ("holdout_rows", tables.HOLDOUT, holdout_rows(interactions, as_of, cfg.split.holdout_days)),
        ):
            summary[key] = storage.write_partition(rows, cfg, table, as_of, metadata=lineage)
        summary["rows_written"] = summary["train_rows"] + summary["holdout_rows"]
        if summary["holdout_rows"] == 0:
            end = as_of + dt.timedelta(days=cfg.split.holdout_days)
            log("split", f"WARNING: no transaction in the holdout window {as_of} .. {end - dt.timedelta(days=1)} "
                         f"({tables.INTERACTIONS} covers {first} .. {last}); the evaluation of this as-of will have "
                         f"nothing to measure. Choose an --as-of on or before {last} to evaluate.")
    return dict(summary)
