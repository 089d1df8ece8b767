"""Scoring with ``score.method: ranker``: the ranker's K best candidates of every customer, in one Delta commit.

When the candidates stage scored the candidates with this version's booster
(``ranker_score`` and ``ranker_rank``, the commit's ``ranker_sha256`` the
booster's), only each customer's K best rows are read. Otherwise the booster
of the served model version (:func:`hmrec.rank.ranker.load_ranker`) travels
to Spark's Python workers in a broadcast, as text, is rebuilt once per
worker, and scores every candidate. Either way the rows are partitioned by
customer and sorted within partitions, so a worker sees each customer's
candidates together (a customer cut by an Arrow batch boundary is carried to
the next batch); each customer's K best are kept and the list completed from
the popularity list (the age segment's, or the global one, as the cold
customers' plan says) to exactly K distinct articles. Customers with features but no candidates (no purchase before the
as-of) get that popularity list alone, customers without features the global
list. ``source`` names the generator that proposed each article (``model``
for the two-tower retrieval, then ``repurchase``, ``colour``, ``popular``,
``trending``); ``score`` is the ranker's for ranked rows and the popularity
count for filled ones. The checks before publishing are those of
:mod:`hmrec.serve.score`.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.etl import segments
from hmrec.lake import schemas, storage, tables
from hmrec.progress import log, stage
from hmrec.rank import sources as S
from hmrec.rank.candidates import candidate_rows, check_features, has_candidates, ranked_by, rerun_command
from hmrec.rank.compiled import compile_booster
from hmrec.rank.ranker import (booster_features, fallback_rows, filled_lists, popular_lists, predict, ranker_sha256,
                               top_lists)
from hmrec.serve.blend import fill_lists
from hmrec.serve.embedders import worker_cached
from hmrec.serve.score import check_coverage, check_lists, publish


@dataclass
class RankContext:
    """What a worker needs to rank a batch; broadcast once per job."""

    booster_text: str
    key: str  # cache key of the rebuilt booster in a worker
    k: int
    article_ids: np.ndarray  # (max article_idx + 1,) article_id strings
    segment_names: list[str]
    fill_idx: np.ndarray  # (S, T)
    fill_score: np.ndarray  # (S, T)
    fallback: str  # segment | global
    model_version: str
    as_of: dt.date
    verify: bool = True
    stored: bool = False  # rank by the rows' ranker_score instead of the booster
    compiled: bool = True  # rank.compile

    def booster(self) -> object:
        return ShippedBooster(self.booster_text, self.key, self.compiled).booster()


def _frame(ctx: RankContext, customer_ids: np.ndarray, idx: np.ndarray, score: np.ndarray, src: np.ndarray) -> pd.DataFrame:
    n, k = idx.shape
    return pd.DataFrame({
        "customer_id": np.repeat(customer_ids, k),
        "article_id": ctx.article_ids[idx.ravel()],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        "score": score.ravel().astype(np.float64),
        "source": src.ravel(),
        "model_version": ctx.model_version,
        "as_of": ctx.as_of,
    })


def rank_frame(cands: pd.DataFrame, ctx: RankContext) -> pd.DataFrame:
    """``tables.RECOMMENDATIONS`` rows (exactly K per customer) for whole customers' ``tables.CANDIDATES`` rows."""
    pred = cands["ranker_score"].to_numpy(np.float64) if ctx.stored else predict(ctx.booster(), cands)
    customers, idx, score, src = top_lists(cands, pred, ctx.k)
    info = cands.drop_duplicates("customer_idx").set_index("customer_idx")
    seg = info.loc[customers, "segment"].fillna(segments.UNKNOWN_SEGMENT)
    rows = fallback_rows(ctx, seg, ctx.fallback)
    out_idx, out_score, out_src = filled_lists(idx, score, src, ctx.fill_idx[rows], ctx.fill_score[rows], ctx.k)
    if (out_idx < 0).any():
        raise HmrecError(f"could not fill {ctx.k} distinct articles for customer_idx {customers[(out_idx < 0).any(axis=1)][:3]}:"
                         f" the popularity lists are too short; rerun `hmrec popularity` or lower score.k")
    frame = _frame(ctx, info.loc[customers, "customer_id"].to_numpy(dtype=object), out_idx, out_score, out_src)
    if ctx.verify:
        check_lists(frame, info.loc[customers, "customer_id"].to_numpy(dtype=object), ctx.k)
    return frame


def whole_customers(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Batches of candidates sorted by customer, regrouped so that each customer's rows come together: the
    last customer of a batch waits for the next one."""
    carry = None
    for pdf in batches:
        if carry is not None:
            pdf = pd.concat([carry, pdf], ignore_index=True)
        if pdf.empty:
            continue
        last = pdf["customer_idx"].iloc[-1]
        tail = (pdf["customer_idx"] == last).to_numpy()
        carry = pdf[tail]
        if (~tail).any():
            yield pdf[~tail]
    if carry is not None and len(carry):
        yield carry


def rank_batches(batches: Iterable[pd.DataFrame], ctx: RankContext) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` body over candidates sorted by customer: each customer is ranked on all of its
    candidates."""
    for pdf in whole_customers(batches):
        yield rank_frame(pdf, ctx)


@dataclass
class ShippedBooster:
    """A booster as text, for a broadcast; rebuilt once per worker."""

    text: str
    key: str
    compiled: bool = True  # score with the trees compiled by lleaves (hmrec.rank.compiled), else LightGBM's predict

    def booster(self) -> object:
        import lightgbm as lgb

        if self.compiled:
            return worker_cached(f"{self.key}:compiled", lambda: compile_booster(self.text))
        return worker_cached(self.key, lambda: lgb.Booster(model_str=self.text))


TOP_SCHEMA = "customer_id string, article_idx int, rank int, candidates int"


def top_batches(batches: Iterable[pd.DataFrame], shipped: ShippedBooster, k: int) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` body that keeps only each customer's ``k`` best candidates by the ranker
    (``TOP_SCHEMA``: fewer rows for a customer with fewer candidates, nothing filled; ``candidates`` is
    the customer's number of candidates)."""
    for pdf in whole_customers(batches):
        customers, idx, _, _ = top_lists(pdf, predict(shipped.booster(), pdf), k)
        keep = (idx >= 0).ravel()
        ids = pdf.drop_duplicates("customer_idx").set_index("customer_idx")["customer_id"]
        sizes = pdf.groupby("customer_idx").size()
        yield pd.DataFrame({"customer_id": np.repeat(ids.loc[customers].to_numpy(dtype=object), k)[keep],
                            "article_idx": idx.ravel()[keep].astype(np.int32),
                            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(customers))[keep],
                            "candidates": np.repeat(sizes.loc[customers].to_numpy(np.int32), k)[keep]})


def ranked_top(spark: SparkSession, cands, booster: object, k: int, compiled: bool = True) -> pd.DataFrame:
    """Each customer's ``k`` best rows of the ``tables.CANDIDATES`` frame ``cands``, ranked on Spark's
    workers (with the compiled trees unless not ``compiled``): only these rows (``TOP_SCHEMA``) reach the driver."""
    text = booster.model_to_string()
    shipped = spark.sparkContext.broadcast(ShippedBooster(text, f"ranker-top:{hash(text)}", compiled))
    try:
        parallelism = spark.sparkContext.defaultParallelism
        ordered = cands.repartition(parallelism, "customer_idx").sortWithinPartitions("customer_idx", "article_idx")
        return ordered.mapInPandas(lambda it: top_batches(it, shipped.value, k), schema=TOP_SCHEMA).toPandas()
    finally:
        shipped.unpersist()


def fallback_batches(batches: Iterable[pd.DataFrame], ctx: RankContext) -> Iterator[pd.DataFrame]:
    """The popularity list of customers with features but no candidates (customer_id, segment)."""
    for pdf in batches:
        if pdf.empty:
            continue
        idx, score = popular_lists(ctx, pdf["segment"], ctx.fallback, ctx.k)
        frame = _frame(ctx, pdf["customer_id"].to_numpy(dtype=object), idx, score, np.full(idx.shape, "popular", dtype=object))
        if ctx.verify:
            check_lists(frame, pdf["customer_id"].to_numpy(dtype=object), ctx.k, "a popular batch")
        yield frame


def counted(frames: Iterator[pd.DataFrame], counters: dict) -> Iterator[pd.DataFrame]:
    """``frames`` as they go to the writer, each one's rows added to ``counters`` (an accumulator per source)."""
    for frame in frames:
        for source, n in frame["source"].value_counts().items():
            counters[source].add(int(n))
        yield frame


def rank_context(cfg: Config, spark: SparkSession, as_of: dt.date, version: str, booster: object,
                 fallback: str) -> RankContext:
    """The lookups of ``as_of`` on the driver: the catalogue of the version's item embeddings and the popularity lists."""
    from hmrec.serve.index import read_item_embeddings

    items, _ = read_item_embeddings(spark, cfg, as_of, version, need_vectors=False)
    idx = items["article_idx"].to_numpy(np.int64)
    article_ids = np.empty(int(idx.max()) + 1, dtype=object)
    article_ids[idx] = items["article_id"].to_numpy(dtype=object)
    popularity = storage.read_as_of(spark, cfg, tables.POPULARITY, as_of).select("segment", "rank", "article_idx", "score").toPandas()
    names, f_idx, f_score = fill_lists(popularity, idx, cfg.score.k)
    text = booster.model_to_string()
    return RankContext(text, f"ranker:{version}:{hash(text)}", cfg.score.k, article_ids, names, f_idx, f_score,
                       fallback, str(version), as_of, compiled=cfg.rank.compile)


def stored_ranks(spark: SparkSession, cfg: Config, as_of: dt.date, version: str, stage: str = "score") -> bool:
    """Whether the served candidates at ``as_of`` hold the scores of model version ``version``'s booster;
    when not, a line of ``stage`` (scoring, the evaluation) says why every candidate is scored there instead."""
    stored, digest = ranked_by(spark, cfg, as_of, "serve"), ranker_sha256(cfg, version)
    if stored is not None and stored == digest:
        return True
    why = ("were written before this version's ranker was trained" if stored is None
           else "hold the scores of another ranker")
    log(stage, f"the candidates at {as_of} {why}: the ranker scores all of them here; "
                 f"`{rerun_command(cfg, as_of, 'serve')}` after `hmrec rank` would score them as they are made")
    return False


def score_ranked(cfg: Config, spark: SparkSession, as_of: dt.date, version: str, fallback: str = "segment") -> dict:
    """Score every customer of ``tables.CUSTOMERS`` with the ranker of ``version`` and replace
    ``tables.RECOMMENDATIONS`` in one commit; returns the stage summary."""
    from hmrec.rank.ranker import load_ranker

    with stage("score") as summary:
        summary["method"], summary["model_version"] = "ranker", str(version)
        booster, meta = load_ranker(cfg, version)
        if not has_candidates(spark, cfg, as_of, "serve"):
            raise HmrecError(f"{tables.CANDIDATES} has no rows for as_of {as_of}: run `hmrec candidates --as-of {as_of}`")
        ctx = rank_context(cfg, spark, as_of, version, booster, fallback)
        ctx.stored = stored_ranks(spark, cfg, as_of, str(version))
        summary["ranked_in_candidates"] = ctx.stored
        rows = candidate_rows(spark, cfg, as_of, "serve")
        if ctx.stored:
            # every customer's K best, as the candidates stage placed them: the other rows stay on disk
            keep = ["customer_idx", "customer_id", "segment", "article_idx", "ranker_score",
                    *[f"{s}_rank" for s in S.SOURCES]]
            rows = rows.where(F.col("ranker_rank") <= ctx.k).select(*keep)
        else:
            check_features(spark, cfg, as_of, "serve", booster_features(booster))
        parallelism = spark.sparkContext.defaultParallelism
        cands = rows.repartition(parallelism, "customer_idx").sortWithinPartitions("customer_idx", "article_idx")
        features_df = storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of)
        have = candidate_rows(spark, cfg, as_of, "serve")
        # a ranked customer has exactly one row of place 1: no distinct over every candidate
        have = (have.where(F.col("ranker_rank") == 1) if ctx.stored else have).select("customer_idx").distinct()
        bare = (features_df.join(have, "customer_idx", "left_anti")
                .select("customer_id", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets).alias("segment")))
        customers = storage.read(spark, cfg, tables.CUSTOMERS).select("customer_id").dropDuplicates()
        unknown = customers.join(features_df.select("customer_id"), "customer_id", "left_anti")
        top = pd.DataFrame({"article_id": ctx.article_ids[ctx.fill_idx[0, : ctx.k]],
                            "rank": np.arange(1, ctx.k + 1, dtype=np.int32), "score": ctx.fill_score[0, : ctx.k]})
        top_df = spark.createDataFrame(top, "article_id string, rank int, score double")
        glob = unknown.crossJoin(F.broadcast(top_df)).select(
            "customer_id", "article_id", "rank", "score", F.lit("popular").alias("source"),
            F.lit(str(version)).alias("model_version"), F.lit(as_of).alias("as_of"))
        shipped = spark.sparkContext.broadcast(ctx)
        # Counted as the rows stream by, so the summary needs no second pass over the table.
        counters = {name: spark.sparkContext.accumulator(0) for name in sorted(set(S.SERVED_NAME.values()))}
        try:
            ranked = cands.mapInPandas(lambda it: counted(rank_batches(it, shipped.value), counters),
                                       schema=schemas.RECOMMENDATIONS)
            popular = bare.mapInPandas(lambda it: counted(fallback_batches(it, shipped.value), counters),
                                       schema=schemas.RECOMMENDATIONS)
            out = ranked.unionByName(popular).unionByName(glob).select(
                [F.col(f.name).cast(f.dataType) for f in schemas.RECOMMENDATIONS.fields])
            summary.update(check_coverage(features_df, customers, as_of))
            t0 = time.perf_counter()
            rows, published = publish(out, cfg, as_of, version, method="ranker")
            write_s = time.perf_counter() - t0
        finally:
            shipped.unpersist()
        summary["customers"] = rows // cfg.score.k
        summary["rows"] = rows
        counts = {source: acc.value for source, acc in counters.items()}
        counts["popular"] += rows - sum(counts.values())  # customers without features: the global list, outside mapInPandas
        summary.update({f"rows_{source}": n for source, n in sorted(counts.items(), key=lambda c: -c[1]) if n})
        summary["customers_per_s"] = round(summary["customers"] / max(write_s, 1e-9))
        summary["ranker_trained_at"] = meta.get("fit_cutoff")
        summary["version"] = published  # the Delta version published
        log("score", f"ranker of model version {version} (trained at {meta.get('fit_cutoff')}), fallback {fallback}")
    return dict(summary)
