"""The split job: training rows before the as-of date, the validation week, the holdout week.

    hmrec split --as-of YYYY-MM-DD

reads ``tables.INTERACTIONS`` and writes the as-of partition of

- ``tables.TRAIN``: t_dat < as_of (within the last ``split.train_days`` days
  when that is positive);
- ``tables.VALIDATION``: the last ``split.validation_days`` days before the
  as-of (a subset of the training rows). Every choice made at the as-of is
  fitted at the cutoff ``as_of - validation_days`` and measured on these rows;
- ``tables.HOLDOUT``: as_of <= t_dat < as_of + ``split.holdout_days``, read
  only by evaluation. It is empty for a refresh whose as-of is the day after
  the last purchase, which is how a weekly refresh runs.

The holdout never overlaps the other two, so nothing the model learns from
or is tuned on is what the report scores.

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


def validation_rows(interactions: DataFrame, as_of: dt.date, validation_days: int) -> DataFrame:
    """Interactions in the last ``validation_days`` days before ``as_of``, as SPLIT_ROWS."""
    return train_rows(interactions, as_of, validation_days)


def fit_cutoff(cfg: Config, as_of: dt.date) -> dt.date:
    """The cutoff at which the choices for ``as_of`` are fitted: the first day of its validation week."""
    return as_of - dt.timedelta(days=cfg.split.validation_days)


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
            ("validation_rows", tables.VALIDATION, validation_rows(interactions, as_of, cfg.split.validation_days)),
            ("holdout_rows", tables.HOLDOUT, holdout_rows(interactions, as_of, cfg.split.holdout_days)),
        ):
            summary[key] = storage.write_partition(rows, cfg, table, as_of, metadata=lineage)
        summary["rows_written"] = summary["train_rows"] + summary["validation_rows"] + summary["holdout_rows"]
        if summary["validation_rows"] == 0:
            start = fit_cutoff(cfg, as_of)
            log("split", f"WARNING: no transaction in the validation week {start} .. {as_of - dt.timedelta(days=1)}: "
                         f"choices for this as-of fall back to their defaults")
        if summary["holdout_rows"] == 0:
            end = as_of + dt.timedelta(days=cfg.split.holdout_days)
            log("split", f"no transaction yet in the week from {as_of} to {end - dt.timedelta(days=1)} "
                         f"({tables.INTERACTIONS} covers {first} .. {last}): this refresh has no holdout week, "
                         f"so its report gives the validation week only")
    return dict(summary)
