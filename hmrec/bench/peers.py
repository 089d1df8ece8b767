"""``python -m hmrec.bench all``: hmrec's refresh against Spark ALS, popularity and repurchase on one split.

hmrec runs as ``hmrec run`` does (its choices made on the validation week);
each further index kind re-indexes and re-scores the same model. ALS (implicit,
rank ``train.embedding_dim``) learns from the same training window, its
unscorable customers get hmrec's fallback, and every method is judged by
hmrec's evaluation code on the same holdout week, K = ``score.k``.
"""
from __future__ import annotations

import shutil

from pyspark.sql import functions as F

from hmrec import pipeline
from hmrec.bench.als import als_top_k, train_als
from hmrec.bench.common import AS_OF, bench_cfg, data_dir, markdown, report, timed
from hmrec.evaluation.baselines import baseline_lists, customer_segments
from hmrec.evaluation.evaluate import METHODS, compute_metrics, gather_holdout, lists_by_customer
from hmrec.lake import storage, tables
from hmrec.lake.spark import get_spark
from hmrec.model.registry import latest_version
from hmrec.serve.blend import fill_list
from hmrec.serve.index import build_index
from hmrec.serve.score import score


def bench_all(scale: float, seed: int, overrides: list[str], kinds: tuple[str, ...] = ("flat", "hnsw")) -> None:
    """hmrec (with each index kind in ``kinds``) against Spark ALS, popularity and repurchase on one split."""
    rows: list[dict] = []
    cfg = bench_cfg(scale, [f"index.kind={kinds[0]}", *overrides])
    shutil.rmtree(cfg.lakehouse, ignore_errors=True)
    k = cfg.score.k
    data = data_dir(cfg, scale, seed, rows)
    spark = get_spark(cfg)
    with timed(rows, f"hmrec run ({kinds[0]}), ingest to evaluation"):
        results = pipeline.run(cfg, spark, data_dir=data, as_of=AS_OF)
    for name, summary in results.items():
        if isinstance(summary, dict) and "seconds" in summary:
            rows.append({"stage": f"  {name}", "seconds": summary["seconds"]})
    version = latest_version(cfg, AS_OF)
    frame, _, popularity, catalogue = gather_holdout(cfg, spark, AS_OF, k, version)
    holdout_ids = F.broadcast(spark.createDataFrame(frame[["customer_id"]]))
    lists = {f"hmrec_{kinds[0]}": dict(zip(frame["customer_id"], frame["model"]))}
    for kind in kinds[1:]:
        kcfg = bench_cfg(scale, [f"index.kind={kind}", *overrides])
        with timed(rows, f"hmrec index+score ({kind})"):
            build_index(kcfg, spark, as_of=AS_OF, model_version=version)
            score(kcfg, spark, as_of=AS_OF, model_version=version)
        recs = storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, AS_OF)
        served = lists_by_customer(recs.join(holdout_ids, "customer_id"), "rank", "article_id", "model").toPandas()
        lists[f"hmrec_{kind}"] = dict(zip(served["customer_id"], served["model"]))

    with timed(rows, "als train (implicit, rank = embedding_dim)"):
        model = train_als(cfg, spark, AS_OF)
    out = f"{cfg.lakehouse}/bench/als_recommendations"
    with timed(rows, "als recommendForAllUsers") as row:
        als_top_k(model, k).write.mode("overwrite").parquet(out)
        row["n"] = spark.read.parquet(out).select("customer_idx").distinct().count()
    ids = storage.read(spark, cfg, tables.CUSTOMER_INDEX)
    arts = storage.read(spark, cfg, tables.ARTICLE_INDEX)
    als_rows = spark.read.parquet(out).join(ids, "customer_idx").join(holdout_ids, "customer_id").join(arts, "article_idx")
    als = lists_by_customer(als_rows, "rank", "article_id", "als").toPandas()
    als_lists = dict(zip(als["customer_id"], als["als"]))

    frame["segment"] = customer_segments(frame["last_purchase"], AS_OF, cfg.evaluate.lapsed_days)
    frame = baseline_lists(frame, popularity, k)
    for name, by_customer in lists.items():
        frame[name] = [list(by_customer.get(c, [])) for c in frame["customer_id"]]
    # Customers ALS cannot score (none in its training window) get hmrec's fallback: their age
    # segment's popularity list, then the global one.
    frame["als"] = [fill_list(als_lists.get(c), seg, k) for c, seg in zip(frame["customer_id"], frame["popularity_segment"])]
    methods = list(lists) + ["als"] + [m for m in METHODS if m != "model"]
    results = compute_metrics(frame, methods, k, catalogue)["all"]
    quality = [{"method": m, **{key: round(v, 5) for key, v in results[m].items()}} for m in methods]
    print("\n" + markdown([{"stage": q["method"], **{x: y for x, y in q.items() if x != "method"}} for q in quality]))
    report("all", scale, rows, {"quality": quality, "model_version": version})
