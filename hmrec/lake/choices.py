"""The choices made for an as-of on its validation week, as stored in ``tables.CHOICES``.

The choose stage (:mod:`hmrec.evaluation.choose`) appends one row per as-of;
training, scoring and evaluation read the latest row of their as-of here.
"""
from __future__ import annotations

import datetime as dt
import json

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.lake import storage, tables


def read_choices(spark: SparkSession, cfg: Config, as_of: dt.date) -> dict | None:
    """The latest choices recorded for ``as_of``: {"choices": {...}, "figures": {...}, "fit_cutoff", ...}, or None."""
    if not storage.exists(spark, cfg, tables.CHOICES):
        return None
    rows = (
        storage.read(spark, cfg, tables.CHOICES).where(F.col("as_of") == F.lit(as_of))
        .orderBy(F.col("chosen_at").desc()).limit(1).collect()
    )
    if not rows:
        return None
    row = rows[0]
    return {
        "as_of": row["as_of"].isoformat(),
        "fit_cutoff": row["fit_cutoff"].isoformat(),
        "fit_model_version": row["fit_model_version"],
        "choices": json.loads(row["choices"]),
        "figures": json.loads(row["figures"]),
    }


def write_choices(spark: SparkSession, cfg: Config, as_of: dt.date, fit_cutoff: dt.date, fit_model_version: str,
                  choices: dict, figures: dict) -> None:
    """Append the choices of ``as_of`` in one commit (the latest row of an as-of is the one read)."""
    row = (as_of, fit_cutoff, fit_model_version, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
           json.dumps(choices, sort_keys=True, default=str), json.dumps(figures, sort_keys=True, default=str))
    storage.write(spark.createDataFrame([row], tables.CHOICES.schema), cfg, tables.CHOICES, mode="append")
