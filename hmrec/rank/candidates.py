"""The candidates stage: every customer's candidates from several sources, with the ranker's features.

    hmrec candidates --as-of YYYY-MM-DD [--role fit]

At a cutoff c, for every customer with a purchase before c (``role serve``,
the served model's FAISS index), or only for the buyers of the validation
week that starts at c (``role fit``: c is the fit cutoff of as-of c + 7, the
fit model's index; these rows and that week's purchases train the ranker),
the sources of :mod:`hmrec.rank.sources` are unioned and their features
added, one batch of ``candidates.batch_size`` customers at a time in Spark's
Python workers (``mapInPandas``); the lookups (item statistics, popularity
and trending lists, the co-purchase pairs of :func:`copurchase_pairs`, the
index) travel in one broadcast. Everything is
computed from ``tables.TRAIN`` at c, so from rows before c only.

With ``role fit`` the stage also reports, on the validation week, each
source's recall (share of a buyer's purchases among its candidates, averaged
over buyers) and the union's, the ceiling a ranker cannot pass.

With ``role serve``, when the served model version already carries its ranker
(``hmrec rank`` runs before this stage in a refresh), every candidate is
scored by it in the same pass, while its customer's rows are together:
``ranker_score`` and ``ranker_rank`` (1 = the best of its customer), and the
commit records the booster's SHA-256. Scoring then reads only each
customer's ``score.k`` best rows instead of every candidate
(:mod:`hmrec.rank.serve`). Without a ranker the two columns are null and
scoring ranks the candidates itself.

Rows ranked as they are made keep only :data:`RANKED_COLUMNS` (the keys,
each source's score and rank, ``n_sources``, the ranker's score and place)
unless ``candidates.serve_features`` is true: nothing reads their other
features once they are placed, and leaving them out halves the columns
handed from Python to the JVM and written. They are written null, and the
commit records which features were written, so scoring them with another
ranker asks for them to be made again (:func:`check_features`).

Also with ``role serve``, only the customers whose last purchase was at
most ``candidates.active_days`` days before c get candidates (0: every
customer with a purchase; ``auto``, the default: the window the rank stage
chose on the validation week and recorded with the ranker, see
:func:`hmrec.rank.ranker.choose_active_days`). The others get the
popularity list from scoring, as customers without a purchase do. The
fit cutoff's candidates are every validation-week buyer's, so that the
rank stage can measure what each window would cost.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Iterator

import faiss
import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from pyspark.sql.window import Window

from hmrec.config import AUTO, Config
from hmrec.errors import HmrecError
from hmrec.etl import segments
from hmrec.etl.popularity import GLOBAL
from hmrec.etl.split import fit_cutoff, window
from hmrec.lake import schemas, storage, tables
from hmrec.progress import log, stage
from hmrec.rank import sources as S
from hmrec.serve.embedders import Embedder, check_embeddings
from hmrec.serve.index import ShippedIndex, index_dim, search

STAGE = "candidates"
# The columns a served row ranked as it is made keeps without candidates.serve_features: what scoring, the
# evaluation and each source's recall read. The other features are written null.
RANKED_COLUMNS = ("as_of", "role", "customer_id", "customer_idx", "segment", "article_idx", *S.SOURCE_COLUMNS,
                  "n_sources", "ranker_score", "ranker_rank")
RANKED_SCHEMA = StructType([f for f in schemas.CANDIDATES.fields if f.name in RANKED_COLUMNS])
# The co-purchase pairs (copurchase_pairs): the articles kept per article, the fewest customers who bought
# both, and the latest distinct articles per customer that pair up (bounds the pairs of heavy buyers).
COPURCHASE_NEIGHBOURS = 24
COPURCHASE_MIN_BUYERS = 2
COPURCHASE_PER_CUSTOMER = 30


# ---- the lookups, as Spark transforms --------------------------------------------------


def item_stats(train: DataFrame, cutoff: dt.date, ages: DataFrame) -> DataFrame:
    """One row per article sold before ``cutoff``: sales in the last 1, 7 and 28 days, trend, trending
    score, mean price and its spread, its buyers' mean age and days since the first sale
    (:data:`hmrec.rank.sources.ITEM_COLUMNS` but the article's attributes).

    ``price_std`` is the sample standard deviation of the article's sale prices before the cutoff, 0 for
    an article sold once (as ``price_std`` of ``tables.ITEM_FEATURES``); ``buyer_age_mean`` is the mean
    ``age`` in ``ages`` (customer_idx, age: ``tables.USER_FEATURES`` at the cutoff) over those sales, a
    buyer counted once per purchase, customers without an age left out, null when none has one.
    """
    rows = window(train, cutoff).withColumn("days", F.datediff(F.lit(cutoff), F.col("t_dat")))
    known = ages.where(F.col("age").isNotNull()).select("customer_idx", F.col("age").cast("double").alias("_age"))
    # one row per customer: a broadcast join, so the sales are not shuffled
    rows = rows.join(F.broadcast(known), "customer_idx", "left")
    d = F.col("days")
    agg = rows.groupBy("article_idx").agg(
        F.sum(F.when(d <= 1, 1).otherwise(0)).alias("sales_1d"),
        F.sum(F.when(d <= 7, 1).otherwise(0)).alias("sales_7d"),
        F.sum(F.when(d <= 28, 1).otherwise(0)).alias("sales_28d"),
        F.sum(F.when(d <= 7, 1.0 / d).otherwise(0.0)).alias("decayed_7d"),
        F.avg("price").alias("price_mean"),
        F.stddev_samp("price").alias("price_std"),  # null for one sale
        F.avg("_age").alias("buyer_age_mean"),
        F.max("days").alias("days_since_first_sale"),
    )
    before = F.col("sales_28d") - F.col("sales_7d")  # the three weeks before the last one
    trend = F.col("sales_7d") / (before / 3.0 + 1.0)
    return agg.select(
        "article_idx",
        *[F.col(c).cast("double") for c in ("sales_1d", "sales_7d", "sales_28d")],
        trend.alias("trend"),
        (F.col("decayed_7d") * trend).alias("trending_score"),
        F.col("price_mean").cast("double"),
        F.coalesce(F.col("price_std").cast("double"), F.lit(0.0)).alias("price_std"),
        F.col("buyer_age_mean").cast("double"),
        F.col("days_since_first_sale").cast("double"),
    )


def item_attributes(item_features: DataFrame, articles: DataFrame, article_index: DataFrame) -> DataFrame:
    """(article_idx, product_code, product_type, colour, index_group) of every article of ``item_features``."""
    codes = articles.select("article_id", "product_code").dropDuplicates(["article_id"])
    return (
        item_features.select(
            "article_idx",
            F.col("product_type_no_code").alias("product_type"),
            F.col("colour_group_code_code").alias("colour"),
            F.col("index_group_no_code").alias("index_group"),
        )
        .join(article_index.join(codes, "article_id").select("article_idx", "product_code"), "article_idx", "left")
    )


def copurchase_pairs(train: DataFrame, cutoff: dt.date, days: int, neighbours: int = COPURCHASE_NEIGHBOURS,
                     min_buyers: int = COPURCHASE_MIN_BUYERS, per_customer: int = COPURCHASE_PER_CUSTOMER) -> DataFrame:
    """(article_idx, other_idx, weight): for each article sold in the ``days`` days before ``cutoff``, the
    ``neighbours`` articles its buyers there bought most often in those days, weight = the share of its
    buyers who bought the other too (at least ``min_buyers`` customers bought both), best first, ties to the
    lower other_idx.

    A customer counts once per article, with its ``per_customer`` latest distinct articles of the window
    (ties to the lower article_idx), so that a few heavy buyers' pairs (their count squared) neither
    dominate nor blow up the join.
    """
    rows = window(train, cutoff, days).groupBy("customer_idx", "article_idx").agg(F.max("t_dat").alias("_last"))
    latest = Window.partitionBy("customer_idx").orderBy(F.col("_last").desc(), F.col("article_idx"))
    rows = rows.withColumn("_n", F.row_number().over(latest)).where(F.col("_n") <= per_customer)
    rows = rows.select("customer_idx", "article_idx")
    buyers = rows.groupBy("article_idx").agg(F.count(F.lit(1)).alias("_buyers"))
    pairs = (
        rows.join(rows.withColumnRenamed("article_idx", "other_idx"), "customer_idx")
        .where(F.col("article_idx") != F.col("other_idx"))
        .groupBy("article_idx", "other_idx").agg(F.count(F.lit(1)).alias("_both"))
        .where(F.col("_both") >= min_buyers)
        .join(buyers, "article_idx")
        .withColumn("weight", F.col("_both").cast("double") / F.col("_buyers"))
    )
    best = Window.partitionBy("article_idx").orderBy(F.col("weight").desc(), F.col("other_idx"))
    return pairs.withColumn("_r", F.row_number().over(best)).where(F.col("_r") <= neighbours).select(
        "article_idx", "other_idx", "weight")


def user_histories(train: DataFrame, cutoff: dt.date, days: int) -> DataFrame:
    """(customer_idx, hist_items, hist_days, hist_price): each customer's purchases before ``cutoff`` (the
    last ``days`` days of them when > 0), latest first; ``hist_days`` counts days before the cutoff."""
    rows = window(train, cutoff, days).withColumn("days", F.datediff(F.lit(cutoff), F.col("t_dat")))
    ordered = F.sort_array(F.collect_list(F.struct("days", "article_idx", "price")))
    return rows.groupBy("customer_idx").agg(ordered.alias("_h")).select(
        "customer_idx",
        F.transform("_h", lambda s: s["article_idx"]).alias("hist_items"),
        F.transform("_h", lambda s: s["days"]).alias("hist_days"),
        F.transform("_h", lambda s: s["price"]).alias("hist_price"),
    )


# ---- the per-batch generator (runs in Spark's Python workers) ---------------------------------


@dataclass
class CandidateContext:
    """Everything a worker needs to make a batch's candidates; broadcast once per job."""

    embedder: Embedder | None  # None: no retrieval source
    index: ShippedIndex | None
    dim: int
    items: S.ItemTable
    popular: dict[str, tuple[np.ndarray, np.ndarray]]  # segment -> (article_idx, score), best first
    trending: tuple[np.ndarray, np.ndarray]
    copurchase: S.Related  # article_idx -> the articles its buyers also bought (copurchase_pairs)
    retrieval_n: int
    repurchase_n: int
    colour_n: int
    popular_n: int
    trending_n: int
    copurchase_n: int
    batch_size: int
    as_of: dt.date
    role: str = "serve"
    threads: int = 1
    ranker: object | None = None  # a hmrec.rank.serve.ShippedBooster: score and place every candidate
    schema: StructType = schemas.CANDIDATES  # the columns a batch's frame has: RANKED_SCHEMA or every one


def list_places(customer_idx: np.ndarray, article_idx: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Each row's place (1 = best) in its customer's list by ``score``, highest first, ties to the lower
    article_idx: the order :func:`hmrec.rank.ranker.top_lists` ranks in."""
    order = np.lexsort((article_idx, -np.asarray(score, dtype=np.float64), customer_idx))
    c = np.asarray(customer_idx)[order]
    pos = np.arange(len(c))
    first = np.maximum.accumulate(np.where(np.r_[True, c[1:] != c[:-1]], pos, 0)) if len(c) else pos
    places = np.empty(len(c), dtype=np.int32)
    places[order] = pos - first + 1
    return places


def batch_candidates(users: pd.DataFrame, ctx: CandidateContext) -> pd.DataFrame:
    """The candidates and features of one batch of customers (``tables.USER_FEATURES`` rows with
    ``segment`` and the ``hist_*`` arrays of :func:`user_histories`), as ``tables.CANDIDATES`` rows."""
    hist = S.history_frame(users)
    frames: dict[str, pd.DataFrame] = {}
    if ctx.embedder is not None and ctx.retrieval_n > 0 and len(users):
        emb = check_embeddings(ctx.embedder.embed_users(users), users["customer_id"], "customer_id", dim=ctx.dim)
        scores, ids = search(ctx.index.get(), emb, ctx.retrieval_n)
        frames["retrieval"] = S.retrieval_source(users["customer_idx"].to_numpy(), scores, ids)
    frames["repurchase"] = S.repurchase_source(hist, ctx.repurchase_n)
    frames["colour"] = S.colour_source(frames["repurchase"], hist, ctx.items, ctx.colour_n)
    frames["popular"] = S.list_source(users, ctx.popular, "segment", ctx.popular_n, GLOBAL)
    frames["trending"] = S.list_source(users, {GLOBAL: ctx.trending}, None, ctx.trending_n, GLOBAL)
    frames["copurchase"] = S.copurchase_source(frames["repurchase"], hist, ctx.copurchase, ctx.copurchase_n)
    cands = S.add_features(S.union_sources(frames), hist, users, ctx.items)
    customer = cands["customer_idx"].to_numpy(np.int64)
    # each row's customer_id and segment, looked up by customer_idx (every candidate's customer is in the batch)
    info = users[["customer_idx", "customer_id", "segment"]].drop_duplicates("customer_idx")
    by_idx = np.argsort(info["customer_idx"].to_numpy(np.int64), kind="stable")
    at = by_idx[np.searchsorted(info["customer_idx"].to_numpy(np.int64)[by_idx], customer)] if len(cands) else by_idx[:0]
    columns = {"as_of": np.full(len(cands), ctx.as_of, dtype=object), "role": np.full(len(cands), ctx.role, dtype=object),
               "customer_id": info["customer_id"].to_numpy(dtype=object)[at],
               "segment": info["segment"].to_numpy(dtype=object)[at]}
    if ctx.ranker is not None and len(cands):
        from hmrec.rank.ranker import predict  # that module imports this one

        score = predict(ctx.ranker.booster(), cands)
        columns["ranker_score"] = score
        columns["ranker_rank"] = list_places(customer, cands["article_idx"].to_numpy(np.int64), score)
    else:
        columns["ranker_score"] = np.full(len(cands), np.nan)
        columns["ranker_rank"] = pd.array([pd.NA] * len(cands), dtype="Int32")
    # the columns in the table's order, not copied (a merge and a column selection would each copy them all)
    return pd.DataFrame({f.name: columns[f.name] if f.name in columns else cands[f.name].to_numpy()
                         for f in ctx.schema.fields}, copy=False)


def candidate_batches(batches: Iterable[pd.DataFrame], ctx: CandidateContext) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` body: slices arriving Arrow batches to ``ctx.batch_size`` customers."""
    faiss.omp_set_num_threads(max(1, ctx.threads))
    for pdf in batches:
        for start in range(0, len(pdf), ctx.batch_size):
            yield batch_candidates(pdf.iloc[start : start + ctx.batch_size], ctx)


# ---- the stage ------------------------------------------------------------------------------


def _lists(popularity: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for seg, g in popularity.sort_values(["segment", "rank"]).groupby("segment"):
        out[str(seg)] = (g["article_idx"].to_numpy(np.int64), g["score"].to_numpy(np.float64))
    if GLOBAL not in out:
        raise HmrecError(f"{tables.POPULARITY} has no '{GLOBAL}' list at this cutoff: run `hmrec popularity`")
    return out


def write_candidates(rows: DataFrame, cfg: Config, cutoff: dt.date, role: str, model_version: str,
                     ranker_sha256: str | None = None) -> int:
    """Replace the ``tables.CANDIDATES`` rows of ``cutoff`` and ``role`` with ``rows`` in one commit that
    records the feature columns written (:func:`written_features`) and the SHA-256 of the booster that
    filled ``ranker_score`` and ``ranker_rank`` (None: nothing ranked them); returns the rows written.

    ``rows`` with only some of the feature columns (:data:`RANKED_SCHEMA`) get the others as null, and
    the commit records the features they had.

    A table written before the latest features were added takes the new columns (Delta's schema
    evolution) and keeps its other rows, which read them as null: :func:`check_features` tells a booster
    that needs them to rewrite those rows."""
    features = [c for c in S.FEATURES if c in rows.columns]
    # every column of the table, in its order; the features rows lack are nulls made on the JVM side
    rows = rows.select(*[F.col(f.name) if f.name in rows.columns else F.lit(None).cast(f.dataType).alias(f.name)
                         for f in schemas.CANDIDATES.fields])
    return storage.write_partition(rows, cfg, tables.CANDIDATES, cutoff,
                                   metadata={"as_of": cutoff.isoformat(), "role": role, "model_version": model_version,
                                             "features": features, "ranker_sha256": ranker_sha256},
                                   merge_schema=True, role=role)


def candidate_rows(spark: SparkSession, cfg: Config, cutoff: dt.date, role: str) -> DataFrame:
    """The rows of ``tables.CANDIDATES`` made at ``cutoff`` for ``role`` (serve or fit)."""
    return storage.read_as_of(spark, cfg, tables.CANDIDATES, cutoff).where(F.col("role") == F.lit(role))


def written_features(spark: SparkSession, cfg: Config, cutoff: dt.date, role: str) -> list[str]:
    """The feature columns the rows of ``tables.CANDIDATES`` at ``cutoff`` for ``role`` were written with,
    as the commit that wrote them recorded; :data:`hmrec.rank.sources.FIRST_FEATURES` for rows written
    before commits recorded them."""
    meta = storage.commit_metadata(spark, cfg, tables.CANDIDATES, as_of=cutoff.isoformat(), role=role) or {}
    return list(meta.get("features") or S.FIRST_FEATURES)


def ranked_by(spark: SparkSession, cfg: Config, cutoff: dt.date, role: str) -> str | None:
    """The SHA-256 of the booster whose scores the candidates at ``cutoff`` for ``role`` hold, as the
    commit that wrote them recorded; None when nothing ranked them."""
    meta = storage.commit_metadata(spark, cfg, tables.CANDIDATES, as_of=cutoff.isoformat(), role=role) or {}
    return meta.get("ranker_sha256")


def rerun_command(cfg: Config, cutoff: dt.date, role: str) -> str:
    """The command that rewrites the candidates of ``cutoff`` for ``role``."""
    if role == "fit":
        return f"hmrec candidates --as-of {cutoff + dt.timedelta(days=cfg.split.validation_days)} --role fit"
    return f"hmrec candidates --as-of {cutoff}"


def check_features(spark: SparkSession, cfg: Config, cutoff: dt.date, role: str, features: Iterable[str]) -> None:
    """Raise :class:`HmrecError` unless the candidates at ``cutoff`` for ``role`` hold every column of
    ``features`` (a booster's): the table's columns and those their writing commit recorded, so rows
    written before a feature existed are caught without reading them."""
    rows = candidate_rows(spark, cfg, cutoff, role)
    written = set(rows.columns) & set(written_features(spark, cfg, cutoff, role))
    missing = [c for c in features if c not in written]
    if missing:
        placed = ("; rows the ranker placed as they were made keep only their places unless "
                  "candidates.serve_features is true" if role == "serve" and ranked_by(spark, cfg, cutoff, role) else "")
        raise HmrecError(f"{tables.CANDIDATES} rows at {cutoff} (role {role}) were written without the feature "
                         f"columns {missing} that the ranker reads{placed}: rerun `{rerun_command(cfg, cutoff, role)}`")


def has_candidates(spark: SparkSession, cfg: Config, cutoff: dt.date, role: str) -> bool:
    """Whether ``tables.CANDIDATES`` holds rows of ``role`` at ``cutoff``."""
    return storage.exists(spark, cfg, tables.CANDIDATES) and candidate_rows(spark, cfg, cutoff, role).limit(1).count() > 0


def build_context(cfg: Config, spark: SparkSession, cutoff: dt.date, embedder: Embedder | None,
                  index: faiss.Index | None, role: str = "serve") -> CandidateContext:
    """Gather the lookups of ``cutoff`` on the driver (small: one row per article or list entry)."""
    train = storage.read_as_of(spark, cfg, tables.TRAIN, cutoff)
    ages = storage.read_as_of(spark, cfg, tables.USER_FEATURES, cutoff).select("customer_idx", "age")
    attrs = item_attributes(storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, cutoff),
                            storage.read(spark, cfg, tables.ARTICLES), storage.read(spark, cfg, tables.ARTICLE_INDEX))
    stats = attrs.join(item_stats(train, cutoff, ages), "article_idx", "left").toPandas()
    items = S.item_table(stats)
    pop = storage.read_as_of(spark, cfg, tables.POPULARITY, cutoff).select("segment", "rank", "article_idx", "score")
    trend = stats[stats["trending_score"] > 0].sort_values(["trending_score", "article_idx"], ascending=[False, True])
    trend = trend.head(max(cfg.candidates.trending_n, 1))
    if cfg.candidates.copurchase_n > 0:
        days = cfg.candidates.copurchase_days
        pairs = copurchase_pairs(train, cutoff, days).toPandas()
        copurchase = S.Related.of(pairs["article_idx"], pairs["other_idx"], pairs["weight"])
        log(STAGE, f"co-purchase pairs of the {days} days before {cutoff}: {len(pairs):,} "
                   f"of {pairs['article_idx'].nunique():,} articles")
    else:
        copurchase = S.Related.empty()
    return CandidateContext(
        embedder=embedder,
        index=ShippedIndex.of(index, str(getattr(embedder, "version", "index"))) if index is not None else None,
        dim=index_dim(index) if index is not None else 0,
        items=items,
        popular=_lists(pop.toPandas()),
        trending=(trend["article_idx"].to_numpy(np.int64), trend["trending_score"].to_numpy(np.float64)),
        copurchase=copurchase,
        retrieval_n=min(cfg.candidates.retrieval_n, index.ntotal) if index is not None else 0,
        repurchase_n=cfg.candidates.repurchase_n,
        colour_n=cfg.candidates.colour_n,
        popular_n=cfg.candidates.popular_n,
        trending_n=cfg.candidates.trending_n,
        copurchase_n=cfg.candidates.copurchase_n,
        batch_size=cfg.candidates.batch_size,
        as_of=cutoff,
        role=role,
        threads=int(spark.sparkContext.getConf().get("spark.task.cpus", "1")),
    )


def label_sets(spark: SparkSession, cfg: Config, labels_as_of: dt.date) -> DataFrame:
    """(customer_idx, article_idx): the distinct purchases of the validation week of ``labels_as_of``."""
    rows = storage.read_as_of(spark, cfg, tables.VALIDATION, labels_as_of)
    return rows.where(F.col("customer_idx").isNotNull() & F.col("article_idx").isNotNull()).select(
        "customer_idx", "article_idx").distinct()


def candidate_recall(cands: DataFrame, labels: DataFrame) -> dict[str, float]:
    """Each source's recall and the union's on ``labels`` (customer_idx, article_idx): per buyer the share
    of its purchases among the source's candidates, averaged over every buyer (those without candidates count 0)."""
    hits = labels.join(cands, ["customer_idx", "article_idx"], "left")
    flags = {s: F.col(f"{s}_rank").isNotNull().cast("double") for s in S.SOURCES}
    flags["union"] = F.col("n_sources").isNotNull().cast("double")  # every candidate row has n_sources >= 1
    per = hits.groupBy("customer_idx").agg(*[F.avg(e).alias(name) for name, e in flags.items()])
    row = per.agg(*[F.avg(name).alias(name) for name in flags], F.count(F.lit(1)).alias("buyers")).first()
    return {f"recall_{k}": round(float(row[k] or 0.0), 5) for k in flags} | {"buyers": int(row["buyers"])}


def served_ranker(cfg: Config, version: str) -> tuple[object | None, str | None, dict | None]:
    """The ranker of model version ``version`` for the workers (a ShippedBooster), its booster's
    SHA-256 and its ``ranker.json``; (None, None, None), with a line saying so, when the version has none yet."""
    from hmrec.rank import ranker
    from hmrec.rank.serve import ShippedBooster

    digest = ranker.ranker_sha256(cfg, version)
    if digest is None:
        log(STAGE, f"model version {version} has no ranker yet: the candidates are written unranked and "
                   f"`hmrec score` ranks them all (run `hmrec rank` before this stage to rank them here)")
        return None, None, None
    booster, meta = ranker.load_ranker(cfg, version)
    return ShippedBooster(booster.model_to_string(), f"ranker:{version}:{digest}", cfg.rank.compile), digest, meta


def within(days: int) -> Column:
    """Whether a ``tables.USER_FEATURES`` row's last purchase was at most ``days`` days before its cutoff
    (0: always), as :func:`hmrec.etl.segments.days_since_last` counts them."""
    if days <= 0:
        return F.lit(True)
    return F.rint(F.expm1(F.col("days_since_last_log"))) <= days


def active_users(users: DataFrame, days: int) -> DataFrame:
    """The rows of ``users`` (``tables.USER_FEATURES``) :func:`within` ``days`` (0: every row)."""
    return users if days <= 0 else users.where(within(days))


def candidates(cfg: Config, spark: SparkSession, as_of: dt.date, role: str = "serve") -> dict:
    """The ``hmrec candidates`` stage at ``as_of`` (see the module notes); writes ``tables.CANDIDATES``.

    ``role fit`` makes the candidates of the fit cutoff of ``as_of``, i.e. at
    ``as_of - split.validation_days``, for that week's buyers.
    """
    from hmrec.model import registry  # mlflow and torch: only the driver stage needs them
    from hmrec.serve.embedders import ModelEmbedder
    from hmrec.serve.index import load_index

    cutoff = fit_cutoff(cfg, as_of) if role == "fit" else as_of
    with stage(STAGE) as summary:
        summary["cutoff"], summary["role"] = cutoff.isoformat(), role
        loaded = registry.load_model(cfg, as_of=cutoff, role=role)
        embedder = ModelEmbedder.from_loaded(loaded, threads=int(spark.sparkContext.getConf().get("spark.task.cpus", "1")))
        index, _ = load_index(cfg, str(loaded.version), cutoff)
        summary["model_version"] = str(loaded.version)
        ctx = build_context(cfg, spark, cutoff, embedder, index, role)
        digest, active = None, 0
        users = (
            storage.read_as_of(spark, cfg, tables.USER_FEATURES, cutoff)
            .where(F.col("n_purchases") >= 1)
            .withColumn("segment", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets))
        )
        if role == "serve":
            from hmrec.rank.ranker import active_days_of  # that module imports this one

            ctx.ranker, digest, meta = served_ranker(cfg, str(loaded.version))
            active = active_days_of(cfg, meta)
            if active:
                # one pass over the features for both counts
                row = users.agg(F.count(F.lit(1)).alias("buyers"), F.sum(within(active).cast("long")).alias("inside")).first()
                buyers, lapsed = int(row["buyers"]), int(row["buyers"]) - int(row["inside"] or 0)
                users = active_users(users, active)
                summary["customers_lapsed"] = lapsed
                how = "candidates.active_days" if cfg.candidates.active_days != AUTO else \
                    "chosen on the validation week by `hmrec rank`"
                log(STAGE, f"candidates for the customers who bought within {active} days before {cutoff} ({how}); "
                           f"the {lapsed:,} of {buyers:,} who did not get the popularity list from `hmrec score`")
        summary["ranked"] = digest is not None
        summary["active_days"] = active
        if digest is not None and not cfg.candidates.serve_features:
            ctx.schema = RANKED_SCHEMA
        summary["features_kept"] = ctx.schema is schemas.CANDIDATES
        labels = None
        if role == "fit":
            labels = label_sets(spark, cfg, as_of)
            users = users.join(F.broadcast(labels.select("customer_idx").distinct()), "customer_idx")
        train = storage.read_as_of(spark, cfg, tables.TRAIN, cutoff)
        users = users.join(user_histories(train, cutoff, cfg.candidates.history_days), "customer_idx", "left")
        parallelism = spark.sparkContext.defaultParallelism
        users = users.repartition(max(parallelism, 1))
        shipped = spark.sparkContext.broadcast(ctx)
        try:
            out = users.mapInPandas(lambda it: candidate_batches(it, shipped.value), schema=ctx.schema)
            rows = write_candidates(out, cfg, cutoff, role, str(loaded.version), digest)
        finally:
            shipped.unpersist()
        written = candidate_rows(spark, cfg, cutoff, role)
        customers = written.select("customer_idx").distinct().count()
        summary["rows"], summary["customers"] = rows, customers
        summary["per_customer"] = round(rows / max(customers, 1), 1)
        if labels is not None:
            summary.update(candidate_recall(written, labels))
            log(STAGE, "recall on the validation week: " + ", ".join(
                f"{k.removeprefix('recall_')} {v:.3f}" for k, v in summary.items() if k.startswith("recall_")))
    return dict(summary)
