"""Offline evaluation on the holdout week: the model against simple baselines.

Methods, each a ranked list per holdout customer:

- ``model``: the customer's list in gold/recommendations (what was served);
- ``popularity``: the global popularity list (gold/popularity, 'global');
- ``popularity_segment``: the list of the customer's age segment, then the global one;
- ``repurchase``: the customer's distinct purchases before the as-of date, most
  recent first (ties: bought more often), then the global popularity list.

Customers are split into segments by their history in gold/train: ``cold``
(no purchase before the as-of date), ``lapsed`` (last purchase more than
``evaluate.lapsed_days`` before it) and ``active`` (the rest). Only customers
with a holdout purchase are evaluated, and only their lists reach the driver.

- ``model_retrieval``: the two-tower model's own ranking, before the
  repurchase blend: the exact inner-product top ``evaluate.curve_max_k`` over
  gold/item_embeddings of the served model version for customers the scoring
  job gives to the model (``score.min_history``), the age segment's popularity
  list for the others (as served). Present when that version is registered.

The Recall@K curve runs to ``evaluate.curve_max_k`` for every method but
``model``, whose served lists stop at ``score.k``; ``model_retrieval`` shows
the model beyond that.
"""
from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd

from hmrec.evaluation import metrics as M
from hmrec.config import Config, IndexConfig
from hmrec.errors import HmrecError
from hmrec.progress import log, stage
from hmrec.lake import tables

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

METHODS = ["model", "popularity", "popularity_segment", "repurchase"]
RETRIEVAL = "model_retrieval"
SEGMENTS = ["cold", "lapsed", "active"]
ALL = "all"
GLOBAL = "global"

# ---- pure parts -------------------------------------------------------------------------


def customer_segments(last_purchase: pd.Series, as_of: dt.date, lapsed_days: int) -> pd.Series:
    """'cold' (no purchase before as_of), 'lapsed' (last one more than ``lapsed_days`` earlier) or 'active'."""
    last = pd.to_datetime(last_purchase)
    gap = (pd.Timestamp(as_of) - last).dt.days
    out = np.where(last.isna(), "cold", np.where(gap > lapsed_days, "lapsed", "active"))
    return pd.Series(out, index=last_purchase.index, dtype=object)


def fill_list(head: Sequence[str] | None, fallback: Sequence[str], n: int) -> list[str]:
    """``head`` then ``fallback``, distinct, first ``n``."""
    out: list[str] = []
    seen: set[str] = set()
    for item in list(head if head is not None else []) + list(fallback):
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == n:
                break
    return out


def baseline_lists(frame: pd.DataFrame, popularity: dict[str, list[str]], length: int) -> pd.DataFrame:
    """Add the baseline methods' lists to ``frame`` (columns ``age_segment``, ``history``)."""
    glob = popularity.get(GLOBAL, [])
    out = frame.copy()
    top = glob[:length]
    out["popularity"] = [top] * len(out)
    by_seg = {seg: fill_list(items, glob, length) for seg, items in popularity.items()}
    out["popularity_segment"] = [by_seg.get(s, top) for s in out["age_segment"]]
    out["repurchase"] = [fill_list(h, glob, length) for h in out["history"]]
    return out


def compute_metrics(frame: pd.DataFrame, methods: Sequence[str], k: int, catalogue_size: int) -> dict[str, dict[str, dict[str, float]]]:
    """{segment: {method: metrics}} for 'all' and each customer segment present; 'users' counts customers."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    groups = [(ALL, frame)] + [(s, frame[frame["segment"] == s]) for s in SEGMENTS]
    for name, group in groups:
        if group.empty:
            continue
        results[name] = {}
        for method in methods:
            values = M.all_metrics(group["actual"].tolist(), group[method].tolist(), k, catalogue_size)
            values["users"] = float(len(group))
            results[name][method] = values
    return results


def recall_curves(frame: pd.DataFrame, methods: Sequence[str], max_k: int) -> dict[str, np.ndarray]:
    """Mean Recall@K, K = 1.. the method's longest list (at most ``max_k``)."""
    out = {}
    for method in methods:
        longest = int(frame[method].map(len).max()) if len(frame) else 0
        upto = max(1, min(max_k, longest))
        out[method] = M.recall_curve(frame["actual"].tolist(), frame[method].tolist(), upto)
    return out


def metrics_document(as_of: dt.date, k: int, model_version: str, results: dict,
                     curves: dict[str, np.ndarray] | None = None) -> dict:
    """The metrics.json document of DESIGN.md: methods on everyone, then by segment (plus user counts and curves)."""
    strip = (lambda m: {key: round(v, 6) for key, v in m.items() if key != "users"})
    return {
        "as_of": as_of.isoformat(),
        "k": k,
        "model_version": model_version,
        "methods": {method: strip(m) for method, m in results[ALL].items()},
        "segments": {seg: {method: strip(m) for method, m in by.items()} for seg, by in results.items() if seg != ALL},
        "users": {seg: int(next(iter(by.values()))["users"]) for seg, by in results.items()},
        "recall_curve": {method: [round(float(v), 6) for v in c] for method, c in (curves or {}).items()},
    }


def metric_rows(as_of: dt.date, model_version: str, results: dict) -> list[tuple]:
    """EVAL_METRICS rows: (as_of, model_version, method, segment, metric, value)."""
    return [
        (as_of, model_version, method, seg, metric, float(value))
        for seg, by in results.items()
        for method, values in by.items()
        for metric, value in values.items()
    ]


def format_table(results: dict, k: int) -> str:
    """The metrics as a fixed-width text table, one line per segment and method."""
    names = M.metric_names(k)
    head = f"{'segment':<8} {'method':<19} {'users':>8} " + " ".join(f"{n:>11}" for n in names)
    lines = [head, "-" * len(head)]
    for seg, by in results.items():
        for method, values in by.items():
            lines.append(
                f"{seg:<8} {method:<19} {int(values['users']):>8} " + " ".join(f"{values[n]:>11.5f}" for n in names)
            )
    return "\n".join(lines)


def write_report(directory: Path, doc: dict, results: dict, curves: dict[str, np.ndarray], k: int) -> list[Path]:
    """metrics.json, the two PNG plots and report.html in ``directory``; returns the paths written."""
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    path = directory / "metrics.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False))
    written.append(path)

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for method, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=method, marker="." if len(curve) <= 20 else None)
    ax.axvline(k, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title(f"Recall@K on the holdout week after {doc['as_of']}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = directory / "recall_at_k.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    written.append(path)

    segs = [s for s in results if s != ALL] or [ALL]
    methods = list(results[segs[0]].keys())
    fig = Figure(figsize=(10, 4))
    width = 0.8 / max(len(methods), 1)
    for j, metric in enumerate([f"map@{k}", f"recall@{k}"]):
        ax = fig.add_subplot(1, 2, j + 1)
        for i, method in enumerate(methods):
            vals = [results[s][method][metric] for s in segs]
            ax.bar(np.arange(len(segs)) + i * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(segs)) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels([f"{s}\n({int(results[s][methods[0]]['users'])})" for s in segs])
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    path = directory / "segments.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    written.append(path)

    names = M.metric_names(k)
    rows = "".join(
        "<tr>" + f"<td>{html.escape(seg)}</td><td>{html.escape(method)}</td><td>{int(v['users'])}</td>"
        + "".join(f"<td>{v[n]:.5f}</td>" for n in names) + "</tr>"
        for seg, by in results.items() for method, v in by.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hmrec evaluation {html.escape(doc['as_of'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:nth-child(-n+2){{text-align:left}}</style></head>
<body><h1>Evaluation, as of {html.escape(doc['as_of'])}</h1>
<p>Model version {html.escape(str(doc.get('model_version')))}; K = {k}; customers with a holdout purchase:
{doc['users'].get(ALL, 0)}. Segments by history before the as-of date: cold (none), lapsed, active.
The served model lists stop at K; model_retrieval, when present, is the model's own ranking before the repurchase blend, to K = {max((len(c) for c in curves.values()), default=k)}.</p>
<table><tr><th>segment</th><th>method</th><th>users</th>{''.join(f'<th>{html.escape(n)}</th>' for n in names)}</tr>
{rows}</table>
<h2>Recall@K</h2><img src="recall_at_k.png" alt="Recall@K per method">
<h2>By segment</h2><img src="segments.png" alt="metrics by segment">
</body></html>
"""
    path = directory / "report.html"
    path.write_text(page)
    written.append(path)
    return written


# ---- the job --------------------------------------------------------------------------------


def _lists_by_customer(df, order_col: str, item_col: str, out_col: str):
    from pyspark.sql import functions as F

    return df.groupBy("customer_id").agg(
        F.transform(F.sort_array(F.collect_list(F.struct(order_col, item_col))), lambda s: s[item_col]).alias(out_col)
    )


def _gather(cfg: Config, spark: "SparkSession", as_of: dt.date, length: int,
            model_version: str | None) -> tuple[pd.DataFrame, str, dict[str, list[str]], int]:
    """Holdout customers' actual purchases, history, age segment and served lists, on the driver."""
    from pyspark.sql import functions as F

    from hmrec.etl import segments
    from hmrec.lake import storage

    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("as_of") == F.lit(as_of))
    versions = sorted(r[0] for r in recs.select("model_version").distinct().collect())
    if not versions:
        held = [r[0] for r in storage.read(spark, cfg, tables.RECOMMENDATIONS).select("as_of").distinct().limit(3).collect()]
        raise HmrecError(
            f"gold/recommendations holds no lists for as_of {as_of} (it holds {held}); run `hmrec score --as-of {as_of}` first"
        )
    served_version = ",".join(versions)
    if model_version is not None and served_version != str(model_version):
        raise HmrecError(
            f"gold/recommendations for as_of {as_of} were scored with model version {served_version}, "
            f"not {model_version}; run `hmrec score --as-of {as_of} --model-version {model_version}` first"
        )

    holdout = storage.read_as_of(spark, cfg, tables.HOLDOUT, as_of)
    actual = holdout.groupBy("customer_id").agg(F.collect_set("article_id").alias("actual"))
    frame = actual.toPandas()
    if frame.empty:
        raise HmrecError(f"gold/holdout has no rows for as_of {as_of}: nothing to evaluate; run `hmrec split --as-of {as_of}`")
    ids = spark.createDataFrame(frame[["customer_id"]])
    ids = F.broadcast(ids)

    train = storage.read_as_of(spark, cfg, tables.TRAIN, as_of).join(ids, "customer_id")
    per_item = train.groupBy("customer_id", "article_id").agg(F.max("t_dat").alias("last"), F.count(F.lit(1)).alias("n"))
    ordered = F.sort_array(F.collect_list(F.struct("last", "n", "article_id")), asc=False)
    history = per_item.groupBy("customer_id").agg(
        F.max("last").alias("last_purchase"),
        F.transform(F.slice(ordered, 1, length), lambda s: s["article_id"]).alias("history"),
    ).toPandas()

    if storage.exists(spark, cfg, tables.USER_FEATURES):
        ages = (
            storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of)
            .join(ids, "customer_id")
            .select("customer_id", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets).alias("age_segment"))
            .toPandas()
        )
    else:
        ages = pd.DataFrame({"customer_id": pd.Series(dtype=object), "age_segment": pd.Series(dtype=object)})
    served = _lists_by_customer(recs.join(ids, "customer_id"), "rank", "article_id", "model").toPandas()

    pop = storage.read_as_of(spark, cfg, tables.POPULARITY, as_of).select("segment", "rank", "article_id").toPandas()
    popularity = {seg: g.sort_values("rank")["article_id"].tolist() for seg, g in pop.groupby("segment")}
    if GLOBAL not in popularity:
        raise HmrecError(f"gold/popularity has no 'global' list for as_of {as_of}; run `hmrec popularity --as-of {as_of}`")
    catalogue = storage.read(spark, cfg, tables.ARTICLES).select("article_id").distinct().count()

    frame = frame.merge(history, on="customer_id", how="left").merge(ages, on="customer_id", how="left")
    frame = frame.merge(served, on="customer_id", how="left")
    frame["actual"] = frame["actual"].map(list)
    frame["model"] = frame["model"].map(lambda x: list(x) if isinstance(x, (list, np.ndarray)) else [])
    frame["history"] = frame["history"].map(lambda x: list(x) if isinstance(x, (list, np.ndarray)) else [])
    frame["age_segment"] = frame["age_segment"].fillna(GLOBAL)
    return frame, served_version, popularity, catalogue


def top_articles(user_emb: np.ndarray, item_emb: np.ndarray, article_ids: np.ndarray, n: int,
                 index_cfg: IndexConfig) -> list[list[str]]:
    """Each user's ``n`` articles of highest inner product (exact search), best first."""
    from hmrec.serve.index import make_index, search

    if len(user_emb) == 0:
        return []
    _, pos = search(make_index("flat", item_emb, index_cfg), user_emb, n)  # (U, n) rows of item_emb
    return [article_ids[row[row >= 0]].tolist() for row in pos]


def model_retrieval_lists(cfg: Config, spark: "SparkSession", as_of: dt.date, version: str,
                          frame: pd.DataFrame, length: int) -> list[list[str]] | None:
    """The ``model_retrieval`` list of every row of ``frame`` (see the module notes); None when not available."""
    from pyspark.sql import functions as F

    from hmrec.model import registry
    from hmrec.lake import storage
    from hmrec.serve.embedders import ModelEmbedder, embed_in_batches
    from hmrec.serve.index import read_item_embeddings

    try:
        embedder = ModelEmbedder.from_loaded(registry.load_model(cfg, version))
        items, item_emb = read_item_embeddings(spark, cfg, as_of, version, need_vectors=True)
    except HmrecError as exc:
        log("evaluate", f"no {RETRIEVAL} curve: {exc}")
        return None
    ids = F.broadcast(spark.createDataFrame(frame[["customer_id"]]))
    users = (
        storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of)
        .join(ids, "customer_id")
        .where(F.col("n_purchases") >= max(cfg.score.min_history, 1))
        .toPandas()
    )
    log("evaluate", f"{RETRIEVAL}: exact top {length} of {len(items)} articles for {len(users)} holdout customers")
    user_emb = embed_in_batches(embedder.embed_users, users, cfg.score.batch_size) if len(users) else np.zeros((0, 0))
    top = top_articles(user_emb, item_emb, items["article_id"].to_numpy(), length, cfg.index)
    ranked = dict(zip(users["customer_id"], top))
    return [ranked.get(c, fallback) for c, fallback in zip(frame["customer_id"], frame["popularity_segment"])]


def run_evaluation(
    cfg: Config,
    spark: "SparkSession",
    as_of: dt.date,
    model_version: str | None = None,
    log_metrics: Callable[[str, dict[str, float]], None] | None = None,
) -> dict:
    """Evaluate every method, write gold/eval_metrics and reports/<as_of>/; ``log_metrics(version, metrics)`` gets a flat copy."""
    from hmrec.lake import schemas, storage

    k = cfg.evaluate.k
    with stage("evaluate") as summary:
        length = max(k, cfg.evaluate.curve_max_k)
        frame, version, popularity, catalogue = _gather(cfg, spark, as_of, length, model_version)
        frame["segment"] = customer_segments(frame["last_purchase"], as_of, cfg.evaluate.lapsed_days)
        frame = baseline_lists(frame, popularity, length)
        methods = list(METHODS)
        retrieval = model_retrieval_lists(cfg, spark, as_of, version, frame, length) if "," not in version else None
        if retrieval is not None:
            frame[RETRIEVAL] = retrieval
            methods.append(RETRIEVAL)
        results = compute_metrics(frame, methods, k, catalogue)
        curves = recall_curves(frame, methods, cfg.evaluate.curve_max_k)
        doc = metrics_document(as_of, k, version, results, curves)

        rows = metric_rows(as_of, version, results)
        storage.write_partition(
            spark.createDataFrame(rows, schemas.EVAL_METRICS),
            cfg,
            tables.EVAL_METRICS,
            as_of,
            metadata={"as_of": as_of.isoformat(), "model_version": version},
            model_version=version,
        )
        report_dir = Path(cfg.lakehouse) / "reports" / as_of.isoformat()
        write_report(report_dir, doc, results, curves, k)
        print(format_table(results, k), flush=True)

        if log_metrics is not None and version:
            log_metrics(version, {f"eval.{method}.{seg}.{metric}": v
                                  for seg, by in results.items() for method, vals in by.items()
                                  for metric, v in vals.items() if metric != "users"})
        elif log_metrics is not None:
            log("evaluate", "no model version on gold/recommendations: metrics not logged to MLflow")

        summary["users"] = len(frame)
        summary.update({seg: int((frame["segment"] == seg).sum()) for seg in SEGMENTS})
        summary[f"model_map@{k}"] = round(results[ALL]["model"][f"map@{k}"], 5)
        summary[f"popularity_map@{k}"] = round(results[ALL]["popularity"][f"map@{k}"], 5)
        summary["report"] = str(report_dir)
    return dict(summary, metrics=doc)


def evaluate(cfg: Config, spark: "SparkSession", as_of: dt.date, model_version: str | None = None) -> dict:
    """The ``hmrec evaluate`` stage; metrics also go to the model version's MLflow run."""

    def to_registry(version: str, values: dict[str, float]) -> None:
        from hmrec.model import registry

        try:
            registry.log_metrics(cfg, version, values)
        except HmrecError as exc:
            # Lists scored from replayed embeddings have no registered version; the
            # table and report files already hold the metrics.
            log("evaluate", f"metrics not logged to MLflow: {exc}")

    return run_evaluation(cfg, spark, as_of, model_version, log_metrics=to_registry)
