"""What the report tells beside the metrics: the data, the model's training, a few customers.

:func:`report_context` gathers it once the evaluation has its holdout frame;
its keys (``data``, ``training``, ``examples``) go into the metrics document
next to the metrics, and :mod:`hmrec.evaluation.report` renders them. Each is
optional there: a document without them renders as before.
"""
from __future__ import annotations

import datetime as dt

import pandas as pd
from mlflow.exceptions import MlflowException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config, defaults
from hmrec.errors import HmrecError
from hmrec.lake import storage, tables
from hmrec.model import registry
from hmrec.progress import log

NAME_COLUMNS = ["prod_name", "product_type_name", "colour_group_name"]
HISTORY_SHOWN = 8


def _span(spark: SparkSession, cfg: Config, table: tables.Table, as_of: dt.date) -> dict:
    """Rows, first and last t_dat of one as-of of a split table (zeros when it is absent)."""
    if not storage.exists(spark, cfg, table):
        return {"rows": 0, "first": None, "last": None}
    row = storage.read_as_of(spark, cfg, table, as_of).agg(
        F.count(F.lit(1)).alias("rows"), F.min("t_dat").alias("first"), F.max("t_dat").alias("last")).first()
    iso = (lambda d: d.isoformat() if d is not None else None)
    return {"rows": int(row["rows"]), "first": iso(row["first"]), "last": iso(row["last"])}


def _count(spark: SparkSession, cfg: Config, table: tables.Table) -> int | None:
    """Rows of a table, None when it is absent."""
    return storage.read(spark, cfg, table).count() if storage.exists(spark, cfg, table) else None


def data_summary(spark: SparkSession, cfg: Config, as_of: dt.date) -> dict:
    """Customers, articles and transactions in bronze (None when absent); rows and dates of the
    training, validation and holdout rows."""
    return {
        "customers": _count(spark, cfg, tables.CUSTOMERS),
        "articles": _count(spark, cfg, tables.ARTICLES),
        "transactions": _count(spark, cfg, tables.TRANSACTIONS),
        "train": _span(spark, cfg, tables.TRAIN, as_of),
        "validation": _span(spark, cfg, tables.VALIDATION, as_of),
        "holdout": _span(spark, cfg, tables.HOLDOUT, as_of),
    }


def _value(text: str, like: object) -> object:
    """An MLflow param (a string) as the type of the config value ``like``."""
    if isinstance(like, bool):
        return text == "True"
    for kind in (int, float):
        if isinstance(like, kind):
            try:
                return kind(text)
            except ValueError:
                return text
    return text


def training_summary(cfg: Config, version: str) -> dict | None:
    """Epochs, loss, validation figures, run time and changed settings of a model version's training run.

    ``settings`` lists each train key whose value in the run differs from its
    default: set in the config or with --set, or changed by the train job (it
    fits the batch size to small data sets). None when the registry has no
    such version.
    """
    client = registry.client(cfg)
    try:
        run = client.get_run(client.get_model_version(cfg.paths.registered_model, version).run_id)
        losses = client.get_metric_history(run.info.run_id, "train_loss")
    except MlflowException as exc:
        log("evaluate", f"no training summary in the report: {exc}")
        return None
    metrics, params = run.data.metrics, run.data.params
    settings = []
    for key, default in defaults()["train"].items():
        if f"train.{key}" not in params:
            continue
        used = _value(params[f"train.{key}"], default)
        if used != default:
            settings.append({"key": f"train.{key}", "default": default, "used": used})
    end = run.info.end_time or run.info.start_time
    return {
        "model_version": str(version),
        "run_id": run.info.run_id,
        "epochs": len(losses),
        "train_loss": [round(m.value, 4) for m in sorted(losses, key=lambda m: m.step)],
        "validation": {k[4:].replace("_at_", "@"): round(v, 4) for k, v in metrics.items() if k.startswith("val_")},
        "seconds": round((end - run.info.start_time) / 1000, 1),
        "samples_per_s": round(metrics.get("samples_per_s", 0.0)),
        "rows": int(run.data.tags.get("train_rows", 0)),
        "settings": settings,
    }


def pick_examples(frame: pd.DataFrame, n: int = 3) -> list[str]:
    """Up to ``n`` holdout customers in id order: active with a hit, active without one, then cold."""
    f = frame.sort_values("customer_id")
    hit = [bool(set(m) & set(a)) for m, a in zip(f["model"], f["actual"])]
    f = f.assign(hit=hit)
    picks = []
    for mask in ((f["segment"] == "active") & f["hit"], (f["segment"] == "active") & ~f["hit"], f["segment"] == "cold"):
        ids = f.loc[mask & ~f["customer_id"].isin(picks), "customer_id"]
        if len(ids):
            picks.append(ids.iloc[0])
    rest = f.loc[~f["customer_id"].isin(picks), "customer_id"]
    return picks + rest.head(max(n - len(picks), 0)).tolist()


def examples(spark: SparkSession, cfg: Config, as_of: dt.date, frame: pd.DataFrame, n: int = 3) -> list[dict]:
    """A few holdout customers: what the model saw (purchases before the as-of), their list, what they bought."""
    chosen = pick_examples(frame, n)
    if not chosen or not storage.exists(spark, cfg, tables.ARTICLES):
        return []
    ids = F.broadcast(spark.createDataFrame([(c,) for c in chosen], "customer_id string"))
    recs = (storage.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("as_of") == F.lit(as_of))
            .join(ids, "customer_id").select("customer_id", "rank", "article_id", "source").toPandas())
    rows = frame.set_index("customer_id").loc[chosen]
    wanted = set(recs["article_id"])
    for c in chosen:
        wanted.update(rows.loc[c, "history"][:HISTORY_SHOWN])
        wanted.update(rows.loc[c, "actual"])
    names = (storage.read(spark, cfg, tables.ARTICLES).where(F.col("article_id").isin(sorted(wanted)))
             .select("article_id", *NAME_COLUMNS).toPandas().drop_duplicates("article_id").set_index("article_id"))

    def named(article_id: str, **extra: object) -> dict:
        found = names.loc[article_id].to_dict() if article_id in names.index else {}
        return {"article_id": article_id, **{c: found.get(c) for c in NAME_COLUMNS}, **extra}

    out = []
    for c in chosen:
        actual = set(rows.loc[c, "actual"])
        listed = recs[recs["customer_id"] == c].sort_values("rank")
        ranks = dict(zip(listed["article_id"], listed["rank"]))
        out.append({
            "customer_id": c,
            "segment": rows.loc[c, "segment"],
            "history": [named(a) for a in rows.loc[c, "history"][:HISTORY_SHOWN]],
            "list": [named(a, rank=int(r), source=s, bought=a in actual)
                     for a, r, s in zip(listed["article_id"], listed["rank"], listed["source"])],
            "bought": [named(a, rank=int(ranks[a]) if a in ranks else None) for a in sorted(actual)],
        })
    return out


def report_context(cfg: Config, spark: SparkSession, as_of: dt.date, version: str, frame: pd.DataFrame) -> dict:
    """The ``data``, ``training`` and ``examples`` keys of the metrics document (see the module notes)."""
    context: dict = {"data": data_summary(spark, cfg, as_of)}
    if "," not in version:
        training = training_summary(cfg, version)
        if training is not None:
            context["training"] = training
    try:
        context["examples"] = examples(spark, cfg, as_of, frame)
    except HmrecError as exc:
        log("evaluate", f"no example customers in the report: {exc}")
    return context
