"""Offline evaluation on the holdout week: the model against simple baselines.

Methods, each a ranked list per holdout customer:

- ``model``: the customer's list in ``tables.RECOMMENDATIONS`` (what was served);
- the baselines of :mod:`hmrec.evaluation.baselines` (``popularity``,
  ``popularity_segment``, ``repurchase``);
- ``model_retrieval``: the two-tower model's own ranking, before the
  repurchase blend: the exact inner-product top ``evaluate.curve_max_k`` over
  ``tables.ITEM_EMBEDDINGS`` of the served model version for customers the
  scoring job gives to the model (``score.min_history``), the age segment's
  popularity list for the others (as served). Present when that version is
  registered;
- ``blend``: the list ``score.method: blend`` serves with the served version
  (its index, the list plans chosen for the as-of), made for the holdout
  customers by the scoring code itself: the two-stage list's comparison on
  the same week (when the blend is served it is ``model``). Present when that
  version and its index are registered;
- ``two_stage``: the ranker of the served version over its candidates
  (``tables.CANDIDATES``), filled from the age segment's popularity list, as
  ``score.method: ranker`` serves it; present when the version has a ranker.
  The metrics document then also gives each candidate source's recall on the
  holdout week (``candidates``).

Only customers with a purchase in ``tables.HOLDOUT`` are evaluated (this is
the one stage that reads it), and only their lists reach the driver. Metrics
are reported for everyone and per customer segment, each with its customer
count and bootstrap 95% intervals over customers (``intervals``): the history
segments ``cold``, ``lapsed`` and ``active``
(:func:`hmrec.evaluation.baselines.customer_segments`), the age bands
``age:<lo>-<hi>`` of ``features.age_buckets`` and ``age:unknown`` (the
customer's ``age`` in ``tables.CUSTOMERS``), and the sales channels
``channel:store``, ``channel:online`` and ``channel:none`` (the channel of
most of the customer's purchases before the as-of; a tie or no purchase:
none). Each customer is in one history segment, one age band and one channel.

The Recall@K curve runs to ``evaluate.curve_max_k`` for every method but
``model``, whose served lists stop at ``score.k``; ``model_retrieval`` shows
the model beyond that.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config, IndexConfig
from hmrec.errors import HmrecError
from hmrec.etl import segments
from hmrec.etl.features import purchase_lists
from hmrec.etl.popularity import GLOBAL
from hmrec.evaluation import metrics as M
from hmrec.evaluation.metrics import group_intervals
from hmrec.evaluation.baselines import ALL, BASELINES, SEGMENTS, baseline_lists, customer_segments
from hmrec.evaluation.context import report_context
from hmrec.evaluation.report import format_table, metric_rows, metrics_document, write_report
from hmrec.lake import schemas, storage, tables
from hmrec.lake.choices import read_choices
from hmrec.model import registry
from hmrec.progress import log, stage
from hmrec.serve.embedders import ModelEmbedder, embed_in_batches
from hmrec.serve.index import make_index, read_item_embeddings, search
from hmrec.serve.blend import fill_list
from hmrec.serve.plans import ListPlan

METHODS = ["model", *BASELINES]
RETRIEVAL = "model_retrieval"
BLEND = "blend"
TWO_STAGE = "two_stage"

# ---- metrics of every method ------------------------------------------------------------

SEGMENT_COLUMNS = ("segment", "age_band", "channel")  # the frame's columns that name each customer's segments


def segment_groups(frame: pd.DataFrame, age_buckets: Sequence[int] | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, row mask) of every group the evaluation reports: ``all``, the history segments (column
    ``segment``), the age bands (``age_band``, in band order when ``age_buckets`` is given) and the sales
    channels (``channel``); a column the frame lacks and an empty group are left out."""
    order = {"segment": list(SEGMENTS), "age_band": segments.age_bands(list(age_buckets)) if age_buckets else [],
             "channel": segments.channel_names()}
    groups = [(ALL, np.ones(len(frame), dtype=bool))]
    for column in SEGMENT_COLUMNS:
        if column not in frame:
            continue
        values = frame[column].to_numpy(dtype=object)
        present = set(values)
        names = [n for n in order[column] if n in present]
        if column != "segment":  # bands of other buckets than ``age_buckets`` come after the known ones
            names += sorted(str(n) for n in present - set(order[column]))
        groups += [(name, values == name) for name in names]
    return [(name, mask) for name, mask in groups if mask.any()]


def per_customer(frame: pd.DataFrame, method: str, k: int) -> dict[str, np.ndarray]:
    """(N,) recall, NDCG, MAP and hit at ``k`` of every row's ``method`` list against its ``actual``."""
    actual, predicted = frame["actual"].tolist(), frame[method].tolist()
    return {
        f"recall@{k}": np.array([M.recall(a, p, k) for a, p in zip(actual, predicted)], dtype=np.float64),
        f"ndcg@{k}": np.array([M.ndcg(a, p, k) for a, p in zip(actual, predicted)], dtype=np.float64),
        f"map@{k}": np.array([M.average_precision(a, p, k) for a, p in zip(actual, predicted)], dtype=np.float64),
        f"hitrate@{k}": np.array([M.hit(a, p, k) for a, p in zip(actual, predicted)], dtype=np.float64),
    }


def compute_metrics(frame: pd.DataFrame, methods: Sequence[str], k: int, catalogue_size: int,
                    age_buckets: Sequence[int] | None = None,
                    values: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{group: {method: metrics}} for every group of :func:`segment_groups`; 'users' counts customers.

    The same figures as :func:`hmrec.evaluation.metrics.all_metrics` on each group's rows (customers who
    bought nothing are left out). ``values`` ({method: :func:`per_customer`}) saves computing them again.
    """
    values = values if values is not None else {m: per_customer(frame, m, k) for m in methods}
    bought = frame["actual"].map(len).to_numpy() > 0
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, mask in segment_groups(frame, age_buckets):
        rows = mask & bought
        results[name] = {}
        for method in methods:
            out = {metric: float(v[rows].mean()) if rows.any() else 0.0 for metric, v in values[method].items()}
            out["coverage"] = M.coverage(frame.loc[mask, method].tolist(), catalogue_size, k)
            out["users"] = float(mask.sum())
            results[name][method] = out
    return results


def intervals(frame: pd.DataFrame, methods: Sequence[str], k: int, age_buckets: Sequence[int] | None = None,
              values: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{group: {method: {"map@k": [low, high], "recall@k": [low, high]}}}: bootstrap 95% intervals over the
    customers of every group of :func:`segment_groups` (customers who bought nothing left out)."""
    values = values if values is not None else {m: per_customer(frame, m, k) for m in methods}
    bought = frame["actual"].map(len).to_numpy() > 0
    groups = [(name, mask & bought) for name, mask in segment_groups(frame, age_buckets)]
    return group_intervals({m: values[m] for m in methods}, groups, [f"map@{k}", f"recall@{k}"])


def recall_curves(frame: pd.DataFrame, methods: Sequence[str], max_k: int) -> dict[str, np.ndarray]:
    """Mean Recall@K, K = 1.. the method's longest list (at most ``max_k``)."""
    out = {}
    for method in methods:
        longest = int(frame[method].map(len).max()) if len(frame) else 0
        upto = max(1, min(max_k, longest))
        out[method] = M.recall_curve(frame["actual"].tolist(), frame[method].tolist(), upto)
    return out


# ---- gathering the holdout frame -------------------------------------------------------


def lists_by_customer(df: DataFrame, order_col: str, item_col: str, out_col: str) -> DataFrame:
    """(customer_id, ``out_col``): each customer's ``item_col`` values ordered by ``order_col`` ascending.

    Turns rows such as those of ``tables.RECOMMENDATIONS`` (one per rank) into
    one ranked list per customer.
    """
    return df.groupBy("customer_id").agg(
        F.transform(F.sort_array(F.collect_list(F.struct(order_col, item_col))), lambda s: s[item_col]).alias(out_col)
    )


def gather_holdout(cfg: Config, spark: SparkSession, as_of: dt.date, length: int,
                   model_version: str | None) -> tuple[pd.DataFrame, str, dict[str, list[str]], int]:
    """Everything the methods' lists and metrics need about the holdout customers, on the driver.

    Returns (frame, served model version, popularity, catalogue size):
    ``frame`` has one row per customer with a purchase in ``tables.HOLDOUT``
    for ``as_of``, with ``actual`` (the distinct articles bought then),
    ``history`` (distinct earlier purchases, most recent first, at most
    ``length``) and ``last_purchase`` from ``tables.TRAIN``, ``channel`` (the
    sales channel of most of those: :func:`hmrec.etl.segments.main_channel`),
    ``age_segment`` (``global`` when unknown), ``age_band`` (from the
    customer's ``age`` in ``tables.CUSTOMERS``:
    :func:`hmrec.etl.segments.age_band`) and ``model`` (the served list, empty
    when none); ``popularity`` maps each segment to its article_ids by rank; the
    catalogue size counts ``tables.ARTICLES``. Refuses lists scored with
    another model version than ``model_version`` (when given).
    """
    # the lists served for this as-of, by time travel when a later refresh has replaced them
    recs = storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, as_of)
    versions = sorted(r[0] for r in recs.select("model_version").distinct().collect())
    if not versions:
        held = [r[0] for r in storage.read(spark, cfg, tables.RECOMMENDATIONS).select("as_of").distinct().limit(3).collect()]
        raise HmrecError(
            f"{tables.RECOMMENDATIONS} holds no lists for as_of {as_of} (it holds {held}); "
            f"run `hmrec score --as-of {as_of}` first"
        )
    served_version = ",".join(versions)
    if model_version is not None and served_version != str(model_version):
        raise HmrecError(
            f"{tables.RECOMMENDATIONS} for as_of {as_of} were scored with model version {served_version}, "
            f"not {model_version}; run `hmrec score --as-of {as_of} --model-version {model_version}` first"
        )

    holdout = storage.read_as_of(spark, cfg, tables.HOLDOUT, as_of)
    actual = holdout.groupBy("customer_id").agg(F.collect_set("article_id").alias("actual"))
    frame = actual.toPandas()
    if frame.empty:
        return frame, served_version, {}, 0
    ids = spark.createDataFrame(frame[["customer_id"]])
    ids = F.broadcast(ids)

    train = storage.read_as_of(spark, cfg, tables.TRAIN, as_of).join(ids, "customer_id")
    history = purchase_lists(train, "customer_id", "article_id", length).toPandas()
    channels = segments.main_channel(train).toPandas()
    if storage.exists(spark, cfg, tables.CUSTOMERS):
        people = (storage.read(spark, cfg, tables.CUSTOMERS).join(ids, "customer_id")
                  .groupBy("customer_id").agg(F.max("age").alias("age")).toPandas())
    else:
        people = pd.DataFrame({"customer_id": pd.Series(dtype=object), "age": pd.Series(dtype=float)})

    if storage.exists(spark, cfg, tables.USER_FEATURES):
        ages = (
            storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of)
            .join(ids, "customer_id")
            .select("customer_id", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets).alias("age_segment"))
            .toPandas()
        )
    else:
        ages = pd.DataFrame({"customer_id": pd.Series(dtype=object), "age_segment": pd.Series(dtype=object)})
    served = lists_by_customer(recs.join(ids, "customer_id"), "rank", "article_id", "model").toPandas()

    pop = storage.read_as_of(spark, cfg, tables.POPULARITY, as_of).select("segment", "rank", "article_id").toPandas()
    popularity = {seg: g.sort_values("rank")["article_id"].tolist() for seg, g in pop.groupby("segment")}
    if GLOBAL not in popularity:
        raise HmrecError(
            f"{tables.POPULARITY} has no '{GLOBAL}' list for as_of {as_of}; run `hmrec popularity --as-of {as_of}`"
        )
    catalogue = storage.read(spark, cfg, tables.ARTICLES).select("article_id").distinct().count()

    frame = frame.merge(history, on="customer_id", how="left").merge(ages, on="customer_id", how="left")
    frame = frame.merge(channels, on="customer_id", how="left").merge(people, on="customer_id", how="left")
    frame["channel"] = frame["channel"].fillna(f"{segments.CHANNEL}{segments.NO_CHANNEL}")
    frame["age_band"] = segments.age_band(frame["age"], cfg.features.age_buckets)
    frame = frame.merge(served, on="customer_id", how="left")
    frame["actual"] = frame["actual"].map(list)
    frame["model"] = frame["model"].map(lambda x: list(x) if isinstance(x, (list, np.ndarray)) else [])
    frame["history"] = frame["history"].map(lambda x: list(x) if isinstance(x, (list, np.ndarray)) else [])
    frame["age_segment"] = frame["age_segment"].fillna(GLOBAL)
    return frame, served_version, popularity, catalogue


# ---- model_retrieval -------------------------------------------------------------------------


def top_articles(user_emb: np.ndarray, item_emb: np.ndarray, article_ids: np.ndarray, n: int,
                 index_cfg: IndexConfig) -> list[list[str]]:
    """Each user's ``n`` articles of highest inner product (exact search), best first."""
    if len(user_emb) == 0:
        return []
    _, pos = search(make_index("flat", item_emb, index_cfg), user_emb, n)  # (U, n) rows of item_emb
    return [article_ids[row[row >= 0]].tolist() for row in pos]


def model_retrieval_lists(cfg: Config, spark: SparkSession, as_of: dt.date, version: str,
                          frame: pd.DataFrame, length: int) -> list[list[str]] | None:
    """The ``model_retrieval`` list of every row of ``frame`` (see the module notes); None when not available."""
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


# ---- blend: the list score.method blend serves ------------------------------------------------------


def blend_lists(cfg: Config, spark: SparkSession, as_of: dt.date, version: str,
                frame: pd.DataFrame) -> list[list[str]] | None:
    """The ``blend`` list of every row of ``frame`` (see the module notes): the scoring job's own batch
    code (:func:`hmrec.serve.score.blend_for`) over the holdout customers' ``tables.USER_FEATURES`` rows,
    the global popularity list for a customer without them (as scoring gives it); None when the version
    or its index is not there."""
    from hmrec.serve.score import blend_for, served_plans

    plans, _ = served_plans(spark, cfg, as_of)
    ids = F.broadcast(spark.createDataFrame(frame[["customer_id"]]))
    users = (storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of).join(ids, "customer_id")
             .withColumn("segment", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets)).toPandas())
    try:
        lists, ctx = blend_for(cfg, spark, as_of, registry.load_model(cfg, version), plans, users)
    except HmrecError as exc:
        log("evaluate", f"no {BLEND} list: {exc}")
        return None
    ranked = {c: ctx.article_ids[row[row >= 0]].tolist() for c, row in zip(users["customer_id"], lists)}
    top = ctx.article_ids[ctx.fill_idx[0, : ctx.k]].tolist()
    log("evaluate", f"{BLEND}: the score.method blend list of {len(users):,} holdout customers")
    return [ranked.get(c, top) for c in frame["customer_id"]]


# ---- two_stage: the ranker over the candidates ---------------------------------------------------


def source_recall(spark: SparkSession, cands: DataFrame, frame: pd.DataFrame, index: DataFrame) -> dict[str, float]:
    """Each candidate source's recall (and the union's) over the rows of ``frame`` (customer_id, ``actual``
    article_ids) with a purchase, a customer without candidates counting 0: counted in Spark over the
    ``tables.CANDIDATES`` rows ``cands``, with ``index`` (article_idx, article_id) naming the articles."""
    from hmrec.rank import sources

    pairs = pd.DataFrame([(c, a) for c, got in zip(frame["customer_id"], frame["actual"]) for a in set(got)],
                         columns=["customer_id", "article_id"])
    bought = spark.createDataFrame(pairs, "customer_id string, article_id string").join(index, "article_id")
    hits = cands.join(bought, ["customer_id", "article_idx"]).groupBy("customer_id").agg(
        F.countDistinct("article_idx").alias("union"),
        *[F.countDistinct(F.when(F.col(f"{source}_rank").isNotNull(), F.col("article_idx"))).alias(source)
          for source in sources.SOURCES]).toPandas().set_index("customer_id")
    sizes = frame.set_index("customer_id")["actual"].map(lambda a: len(set(a)))
    sizes = sizes[sizes > 0]
    recall: dict[str, float] = {}
    for source in (*sources.SOURCES, "union"):
        got = hits[source].reindex(sizes.index).fillna(0).to_numpy(float)
        recall[source] = round(float(np.mean(got / sizes.to_numpy(float))), 5) if len(sizes) else float("nan")
    return recall


def two_stage_lists(cfg: Config, spark: SparkSession, as_of: dt.date, version: str,
                    frame: pd.DataFrame, k: int) -> tuple[list[list[str]], dict[str, float]] | None:
    """The ``two_stage`` list of every row of ``frame`` (the ranker's K best of ``tables.CANDIDATES``, filled
    from the age segment's popularity list) and each candidate source's recall on the holdout week; None
    when the version has no ranker or the as-of no candidates.

    The K best are the places the candidates stage gave when the version's own booster placed them (as
    scoring reads them), else the booster ranks every candidate here, from its features."""
    from hmrec.rank import ranker
    from hmrec.rank.candidates import candidate_rows, check_features, has_candidates
    from hmrec.rank.serve import ranked_top, stored_ranks

    if not ranker.has_ranker(cfg, version) or not has_candidates(spark, cfg, as_of, "serve"):
        log("evaluate", f"no two_stage list: model version {version} has no ranker or {tables.CANDIDATES} "
                        f"no rows for {as_of}")
        return None
    ids = F.broadcast(spark.createDataFrame(frame[["customer_id"]]))
    # Ranked and counted in Spark: the holdout buyers' candidates (about 20M rows at full H&M size) stay
    # there, and only each customer's K best and the per-source hit counts reach the driver.
    cands = candidate_rows(spark, cfg, as_of, "serve").join(ids, "customer_id")
    index = storage.read(spark, cfg, tables.ARTICLE_INDEX).select("article_idx", "article_id")
    names = index.toPandas().set_index("article_idx")["article_id"]
    if stored_ranks(spark, cfg, as_of, version, stage="evaluate"):
        top = cands.where(F.col("ranker_rank") <= k).select(
            "customer_id", "article_idx", F.col("ranker_rank").alias("rank")).toPandas()
        row = cands.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("customer_id").alias("customers")).first()
        per_customer = int(row["rows"]) / max(int(row["customers"]), 1)
    else:
        booster, _ = ranker.load_ranker(cfg, version)
        check_features(spark, cfg, as_of, "serve", ranker.booster_features(booster))
        top = ranked_top(spark, cands, booster, k, cfg.rank.compile)
        per = top.drop_duplicates("customer_id")["candidates"]
        per_customer = float(per.sum()) / max(len(per), 1)
    top = top.sort_values(["customer_id", "rank"])
    ranked = {c: names.reindex(g["article_idx"]).tolist() for c, g in top.groupby("customer_id", sort=False)}
    lists = [fill_list(ranked.get(c, []), fallback, k) for c, fallback in zip(frame["customer_id"], frame["popularity_segment"])]
    recall = source_recall(spark, cands, frame, index)
    recall["per_customer"] = round(per_customer, 1)
    return lists, recall


# ---- the job --------------------------------------------------------------------------------


def run_evaluation(
    cfg: Config,
    spark: SparkSession,
    as_of: dt.date,
    model_version: str | None = None,
    log_metrics: Callable[[str, dict[str, float]], None] | None = None,
) -> dict:
    """Evaluate every method, write ``tables.EVAL_METRICS`` and reports/<as_of>/; ``log_metrics(version, metrics)`` gets a flat copy."""
    k = cfg.evaluate.k
    with stage("evaluate") as summary:
        length = max(k, cfg.evaluate.curve_max_k)
        frame, version, popularity, catalogue = gather_holdout(cfg, spark, as_of, length, model_version)
        validation = validation_section(read_choices(spark, cfg, as_of), k)
        report_dir = Path(cfg.lakehouse) / "reports" / as_of.isoformat()
        if frame.empty:
            found = _without_holdout(cfg, spark, as_of, version, validation, report_dir, k)
            summary.update({key: v for key, v in found.items() if key != "metrics"})  # the stage's logged line
            return dict(summary, metrics=found["metrics"])
        frame["segment"] = customer_segments(frame["last_purchase"], as_of, cfg.evaluate.lapsed_days)
        frame = baseline_lists(frame, popularity, length)
        methods = list(METHODS)
        retrieval = model_retrieval_lists(cfg, spark, as_of, version, frame, length) if "," not in version else None
        if retrieval is not None:
            frame[RETRIEVAL] = retrieval
            methods.append(RETRIEVAL)
        blend = blend_lists(cfg, spark, as_of, version, frame) if "," not in version else None
        if blend is not None:
            frame[BLEND] = blend
            methods.append(BLEND)
        staged = two_stage_lists(cfg, spark, as_of, version, frame, k) if "," not in version else None
        if staged is not None:
            frame[TWO_STAGE] = staged[0]
            methods.append(TWO_STAGE)
        values = {m: per_customer(frame, m, k) for m in methods}
        buckets = cfg.features.age_buckets
        results = compute_metrics(frame, methods, k, catalogue, buckets, values)
        curves = recall_curves(frame, methods, cfg.evaluate.curve_max_k)
        doc = metrics_document(as_of, k, version, results, curves, validation)
        doc["intervals"] = intervals(frame, methods, k, buckets, values)
        if staged is not None:
            doc["candidates"] = {"recall": staged[1], "week": "holdout"}
            log("evaluate", "candidate recall on the holdout week: "
                + ", ".join(f"{s_} {v:.3f}" for s_, v in staged[1].items()))

        rows = metric_rows(as_of, version, results) + validation_rows(as_of, version, validation)
        storage.write_partition(
            spark.createDataFrame(rows, schemas.EVAL_METRICS),
            cfg,
            tables.EVAL_METRICS,
            as_of,
            metadata={"as_of": as_of.isoformat(), "model_version": version},
            model_version=version,
        )
        write_report(report_dir, doc, results, curves, k, context=report_context(cfg, spark, as_of, version, frame))
        print(format_table(results, k), flush=True)

        if log_metrics is not None and version:
            log_metrics(version, {f"eval.{method}.{seg}.{metric}": v
                                  for seg, by in results.items() for method, vals in by.items()
                                  for metric, v in vals.items() if metric != "users"})
        elif log_metrics is not None:
            log("evaluate", f"no model version on {tables.RECOMMENDATIONS}: metrics not logged to MLflow")

        summary["users"] = len(frame)
        summary.update({seg: int((frame["segment"] == seg).sum()) for seg in SEGMENTS})
        summary[f"model_map@{k}"] = round(results[ALL]["model"][f"map@{k}"], 5)
        summary[f"popularity_map@{k}"] = round(results[ALL]["popularity"][f"map@{k}"], 5)
        summary["report"] = str(report_dir)
    return dict(summary, metrics=doc)


def _history_order(by_group: dict) -> dict:
    """``by_group`` with 'all' first, then the history groups in their order (the choices table sorts keys)."""
    order = [ALL, *SEGMENTS]
    return dict(sorted(by_group.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def validation_section(chosen: dict | None, k: int) -> dict | None:
    """The metrics document's ``validation`` part from the choices recorded for the as-of (None when none were made)."""
    if chosen is None:
        return None
    figures, choices = chosen["figures"], chosen["choices"]
    shown = {key: v for key, v in choices.items() if key != "plans"}
    if "plans" in choices:
        shown["plans"] = {g: ListPlan.from_dict(p).label() for g, p in choices["plans"].items()}
    return {
        "cutoff": chosen["fit_cutoff"],
        "fit_model_version": chosen["fit_model_version"],
        "users": figures.get("users", 0),
        "methods": figures.get("methods", {}),
        "groups": {g: {"users": v["users"], "chosen": v["chosen"], **({"methods": v["methods"]} if "methods" in v else {})}
                   for g, v in _history_order(figures.get("groups", {})).items()},
        "intervals": _history_order(figures.get("intervals", {})),
        "choices": shown,
        "epochs": figures.get("epochs", []),
        **({"note": figures["reason"]} if "reason" in figures else {}),
    }


def validation_rows(as_of: dt.date, version: str, validation: dict | None) -> list[tuple]:
    """``tables.EVAL_METRICS`` rows of the validation week (segment ``validation``): the figures the choices rest on."""
    if not validation:
        return []
    rows = [(as_of, version, method, "validation", metric, float(v))
            for method, values in validation["methods"].items() for metric, v in values.items()]
    return rows + [(as_of, version, "model", "validation", "users", float(validation["users"]))]


def _without_holdout(cfg: Config, spark: SparkSession, as_of: dt.date, version: str, validation: dict | None,
                     report_dir: Path, k: int) -> dict:
    """A refresh whose as-of is past the last purchase: the report gives the validation week only."""
    last = storage.read(spark, cfg, tables.INTERACTIONS).agg(F.max("t_dat")).first()[0]
    log("evaluate", f"no holdout week to evaluate yet: nothing was bought from {as_of} on (the data ends {last}); "
                    f"the report gives the validation week")
    doc = metrics_document(as_of, k, version, {}, {}, validation)
    rows = validation_rows(as_of, version, validation)
    if rows:
        storage.write_partition(spark.createDataFrame(rows, schemas.EVAL_METRICS), cfg, tables.EVAL_METRICS, as_of,
                                metadata={"as_of": as_of.isoformat(), "model_version": version}, model_version=version)
    write_report(report_dir, doc, {}, {}, k)
    return {"users": 0, "holdout": "none yet", "report": str(report_dir), "metrics": doc}


def evaluate(cfg: Config, spark: SparkSession, as_of: dt.date, model_version: str | None = None) -> dict:
    """The ``hmrec evaluate`` stage; metrics also go to the model version's MLflow run."""

    def to_registry(version: str, values: dict[str, float]) -> None:
        """Log ``values`` to the version's MLflow run; a version the registry lacks is only noted."""
        try:
            registry.log_metrics(cfg, version, values)
        except HmrecError as exc:
            # Lists scored from replayed embeddings have no registered version; the
            # table and report files already hold the metrics.
            log("evaluate", f"metrics not logged to MLflow: {exc}")

    return run_evaluation(cfg, spark, as_of, model_version, log_metrics=to_registry)
