"""`hmrec run`: the scheduled refresh, every stage in order for one as-of date.

A stage is skipped when it already finished for this as-of on the same bronze
data (recorded in the Delta table ``meta/stage_runs``) and its output is still
there, unless ``force``. A crash leaves the finished stages recorded, so running
the same command again resumes at the stage that failed. When a stage runs
again, every later stage runs again too, since its inputs changed.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec.lake import storage
from hmrec.config import Config
from hmrec.progress import log, stage
from hmrec.lake.schemas import STAGE_RUNS
from hmrec.lake import tables

STAGE_RUNS_TABLE = tables.STAGE_RUNS
PIPELINE = ["features", "split", "popularity", "train", "index", "score", "evaluate"]


def _outputs_exist(spark: SparkSession, cfg: Config, name: str, as_of: dt.date) -> bool:
    """Whether the stage's output for ``as_of`` is still in the lakehouse."""
    if name == "features":
        return storage.has_as_of(spark, cfg, tables.USER_FEATURES, as_of) and storage.has_as_of(
            spark, cfg, tables.ITEM_FEATURES, as_of
        )
    if name == "split":
        return storage.has_as_of(spark, cfg, tables.TRAIN, as_of)
    if name == "popularity":
        return storage.has_as_of(spark, cfg, tables.POPULARITY, as_of)
    if name == "train":
        from hmrec.model.registry import latest_version

        return latest_version(cfg, as_of) is not None
    if name == "index":
        return storage.has_as_of(spark, cfg, tables.ITEM_EMBEDDINGS, as_of)
    if name == "score":
        if not storage.exists(spark, cfg, tables.RECOMMENDATIONS):
            return False
        recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
        return recs.where(F.col("as_of") == F.lit(as_of)).limit(1).count() > 0
    if name == "evaluate":
        return storage.has_as_of(spark, cfg, tables.EVAL_METRICS, as_of)
    raise ValueError(f"unknown stage {name}")


def _finished(spark: SparkSession, cfg: Config, name: str, as_of: dt.date, bronze_version: int | None) -> bool:
    if not storage.exists(spark, cfg, STAGE_RUNS_TABLE):
        return False
    rows = (
        storage.read(spark, cfg, STAGE_RUNS_TABLE)
        .where((F.col("as_of") == F.lit(as_of)) & (F.col("stage") == name))
        .orderBy(F.col("finished_at").desc())
        .limit(1)
        .collect()
    )
    return bool(rows) and rows[0]["bronze_version"] == bronze_version


def _record(spark: SparkSession, cfg: Config, name: str, as_of: dt.date, bronze_version: int | None, summary: object) -> None:
    row = (as_of, name, bronze_version, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
           json.dumps(summary, default=str, sort_keys=True))
    storage.write(spark.createDataFrame([row], STAGE_RUNS), cfg, STAGE_RUNS_TABLE, mode="append")


def _stage_functions(cfg: Config, spark: SparkSession, as_of: dt.date) -> dict[str, Callable[[], object]]:
    from hmrec.evaluation.evaluate import evaluate
    from hmrec.etl.features import build_features
    from hmrec.serve.index import build_index
    from hmrec.etl.popularity import popularity
    from hmrec.serve.score import score
    from hmrec.etl.split import split
    from hmrec.train.job import train

    return {
        "features": lambda: build_features(cfg, spark, as_of=as_of),
        "split": lambda: split(cfg, spark, as_of=as_of),
        "popularity": lambda: popularity(cfg, spark, as_of=as_of),
        "train": lambda: train(cfg, spark, as_of=as_of),
        "index": lambda: build_index(cfg, spark, as_of=as_of),
        "score": lambda: score(cfg, spark, as_of=as_of),
        "evaluate": lambda: evaluate(cfg, spark, as_of=as_of),
    }


def run(cfg: Config, spark: SparkSession, data_dir: str, as_of: dt.date, force: bool = False) -> dict:
    """Ingest ``data_dir`` and run every later stage for ``as_of``; returns per-stage results."""
    from hmrec.etl.ingest import ingest

    results: dict[str, object] = {}
    with stage("run") as summary:
        results["ingest"] = ingest(cfg, spark, data_dir=data_dir)
        bronze_version = storage.version(spark, cfg, tables.TRANSACTIONS)
        functions = _stage_functions(cfg, spark, as_of)
        rerun = force
        ran, skipped = [], []
        for name in PIPELINE:
            if not rerun and _finished(spark, cfg, name, as_of, bronze_version) and _outputs_exist(
                spark, cfg, name, as_of
            ):
                log("run", f"{name}: already done for {as_of} on bronze version {bronze_version}, skipped (--force reruns it)")
                skipped.append(name)
                continue
            # Everything after a stage that ran consumes its new output.
            rerun = True
            results[name] = functions[name]()
            _record(spark, cfg, name, as_of, bronze_version, results[name])
            ran.append(name)
        summary["as_of"] = as_of.isoformat()
        summary["ran"] = "+".join(ran) or "-"
        summary["skipped"] = "+".join(skipped) or "-"
    return results
