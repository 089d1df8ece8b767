"""Batch scoring: exactly K distinct articles for every customer, in one Delta commit.

The work happens in Spark's Python workers (``mapInPandas`` over
gold/user_features): a batch of ``score.batch_size`` customers is embedded,
searched in FAISS for ``index.candidates`` neighbours, blended with the
customer's recent purchases and filled with the popular items of their age
segment, all with array operations on the whole batch. The embedder, the
serialised index and the lookup arrays travel in one broadcast and are rebuilt
once per Python worker (cached by model version).

Sources, in the ``source`` column:

- ``model``: a FAISS neighbour of the customer's embedding;
- ``repurchase``: one of the customer's recent purchases (at most
  ``score.repurchase_slots``). With ``score.repurchase_order: recency`` (the
  default) they lead the list, latest first, and the model's items follow;
  with ``model`` they are ranked among the model's items by model score.
  Either way their ``score`` is the model's score of the pair;
- ``popular``: the segment's popularity list, then the global list, then the
  rest of the catalogue — for customers with fewer than ``score.min_history``
  purchases (never-bought customers always), and to fill any list the model
  leaves short. Their ``score`` is the purchase count of the popularity
  window (0 for catalogue filler): scores compare only within one source.

Recent purchases are the distinct articles of ``last_articles`` in
gold/user_features (the last ``features.last_n`` bought, latest first) with
``score.repurchase_days: 0``, the default; with a day count they are the
distinct articles bought in that many days before the as-of date (from
gold/train, latest first).
``score.filter_bought`` drops from the model's candidates everything in
``last_articles`` and the recent purchases (the full history is not at hand
per batch).
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np
import pandas as pd

from hmrec.config import Config, IndexConfig
from hmrec.errors import HmrecError
from hmrec.serve.index import (
    Embedder,
    ModelEmbedder,
    ShippedIndex,
    check_embeddings,
    index_dim,
    load_index,
    make_index,
    recall_vs_exact,
    search,
)
from hmrec.progress import log, stage
from hmrec.lake import tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SOURCES = np.array(["model", "repurchase", "popular"], dtype=object)
REPURCHASE_ORDERS = ("recency", "model")
MODEL, REPURCHASE, POPULAR = 0, 1, 2
GLOBAL = "global"
RECENT_COLUMN = "recent_articles"

# ---- pure array helpers (one row per customer, -1 = empty slot) ------------------------


def pad_lists(values: Sequence[Any], width: int | None = None) -> np.ndarray:
    """Ragged lists of ints (None = empty) as a (B, width) int64 matrix padded with -1.

    ``width`` None: as wide as the longest list.
    """
    n = len(values)
    lengths = np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int64, count=n)
    if width is None:
        width = int(lengths.max()) if n else 0
    out = np.full((n, max(width, 0)), -1, dtype=np.int64)
    if n == 0 or width <= 0:
        return out
    total = int(lengths.sum())
    if total == 0:
        return out
    flat = np.concatenate([np.asarray(v, dtype=np.int64) for v in values if v is not None and len(v)])
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = cols < width
    out[rows[keep], cols[keep]] = flat[keep]
    return out


def rows_isin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, X) bool: a[i, j] occurs in row i of b; -1 never matches."""
    if a.shape[1] == 0 or b.shape[1] == 0:
        return np.zeros(a.shape, dtype=bool)
    return (a[:, :, None] == b[:, None, :]).any(axis=2) & (a >= 0)


def drop_repeats(a: np.ndarray) -> np.ndarray:
    """Copy of ``a`` with every later repeat within a row set to -1."""
    if a.shape[1] < 2:
        return a.copy()
    same = a[:, :, None] == a[:, None, :]  # (B, X, X): same[i, j, l] = a[i, j] == a[i, l]
    earlier = np.tril(np.ones((a.shape[1], a.shape[1]), dtype=bool), k=-1)  # l < j
    repeat = (same & earlier).any(axis=2)
    return np.where(repeat, -1, a)


def compact_left(a: np.ndarray, keep: np.ndarray, width: int, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kept entries of each row moved to the front in their order, cut to ``width``; the rest -1 (0 for ``more``)."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    kept = np.take_along_axis(keep, order, axis=1)
    out = [np.where(kept, np.take_along_axis(a, order, axis=1), -1)]
    out += [np.where(kept, np.take_along_axis(m, order, axis=1), 0) for m in more]
    if out[0].shape[1] < width:
        pad = width - out[0].shape[1]
        out = [np.pad(o, ((0, 0), (0, pad)), constant_values=-1 if i == 0 else 0) for i, o in enumerate(out)]
    return tuple(out)


def blend_batch(
    cand_idx: np.ndarray,
    cand_score: np.ndarray,
    rep_idx: np.ndarray,
    rep_score: np.ndarray,
    fill_idx: np.ndarray,
    fill_score: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    repurchase_first: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's final K items: (article_idx (B, K), score (B, K), source code (B, K)).

    ``cand_*`` are model candidates best first (-1 = none), ``rep_*`` the
    reserved recent purchases (distinct, at most K), ``fill_*`` the row's
    popularity list (distinct, long enough to fill K after removing what was
    chosen). Model candidates equal to a repurchase or in ``exclude`` are
    dropped; the reserved purchases and the best remaining candidates, K in
    all, are sorted by score; popular items fill what is left in list order.
    With ``repurchase_first`` the reserved purchases lead instead, in their
    given order (most recent first), and the candidates follow by score.
    """
    b = cand_idx.shape[0]
    rep_ok = rep_idx >= 0
    cand_ok = (cand_idx >= 0) & ~rows_isin(cand_idx, rep_idx)
    if exclude is not None:
        cand_ok &= ~rows_isin(cand_idx, exclude)
    quota = k - rep_ok.sum(axis=1)  # (B,)
    cand_ok &= np.cumsum(cand_ok, axis=1) <= quota[:, None]

    idx = np.concatenate([rep_idx, cand_idx], axis=1)
    score = np.concatenate([rep_score, cand_score], axis=1).astype(np.float64)
    src = np.concatenate([np.full(rep_idx.shape, REPURCHASE), np.full(cand_idx.shape, MODEL)], axis=1)
    ok = np.concatenate([rep_ok, cand_ok], axis=1)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        score = np.pad(score, ((0, 0), (0, pad)))
        src = np.pad(src, ((0, 0), (0, pad)), constant_values=MODEL)
        ok = np.pad(ok, ((0, 0), (0, pad)), constant_values=False)
    key = np.where(ok, -score, np.inf)
    if repurchase_first:
        # -inf for every kept repurchase: the stable sort keeps them first, in their given order
        key[:, : rep_idx.shape[1]] = np.where(rep_ok, -np.inf, np.inf)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    sel_idx = np.take_along_axis(idx, order, axis=1)
    sel_score = np.take_along_axis(score, order, axis=1)
    sel_src = np.take_along_axis(src, order, axis=1)
    sel_ok = np.take_along_axis(ok, order, axis=1)
    n_sel = sel_ok.sum(axis=1)  # kept items sit first: the sort put every dropped one last

    fill_ok = (fill_idx >= 0) & ~rows_isin(fill_idx, np.where(sel_ok, sel_idx, -1))
    f_idx, f_score = compact_left(fill_idx, fill_ok, k, fill_score.astype(np.float64))

    col = np.arange(k)[None, :]
    from_fill = col >= n_sel[:, None]
    fcol = np.clip(col - n_sel[:, None], 0, k - 1)
    rows = np.arange(b)[:, None]
    out_idx = np.where(from_fill, f_idx[rows, fcol], sel_idx)
    out_score = np.where(from_fill, f_score[rows, fcol], sel_score)
    out_src = np.where(from_fill, POPULAR, sel_src)
    return out_idx, out_score, out_src


def fill_lists(popularity: pd.DataFrame, catalogue_idx: np.ndarray, k: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-segment fallback lists: (segment names, article_idx (S, T), score (S, T)); row 0 is 'global'.

    A segment's list is its popularity ranking, then the global ranking, then
    the rest of the catalogue in article_idx order, all distinct and in the
    catalogue, T = min(2K, catalogue size) long: with at most K items already
    chosen, at least K - chosen remain to fill with.
    """
    catalogue_idx = np.unique(np.asarray(catalogue_idx, dtype=np.int64))
    if len(catalogue_idx) < k:
        raise HmrecError(
            f"the catalogue has {len(catalogue_idx)} articles, fewer than score.k={k}: "
            f"lower score.k or index more articles (gold/item_embeddings)"
        )
    width = min(2 * k, len(catalogue_idx))
    pop = popularity[popularity["article_idx"].isin(catalogue_idx)].sort_values(["segment", "rank"], kind="stable")
    by_segment = {seg: grp for seg, grp in pop.groupby("segment", sort=True)}
    if GLOBAL not in by_segment:
        raise HmrecError(
            "gold/popularity has no 'global' list (of articles in the catalogue) for this as-of; "
            "run `hmrec popularity` for it"
        )
    names = [GLOBAL] + [s for s in by_segment if s != GLOBAL]
    glob = by_segment[GLOBAL]
    rest = catalogue_idx[:width * 3]  # enough filler even if every one of them is already listed
    idx = np.full((len(names), width), -1, dtype=np.int64)
    score = np.zeros((len(names), width), dtype=np.float64)
    for i, name in enumerate(names):
        grp = by_segment[name]
        ids = np.concatenate([grp["article_idx"].to_numpy(np.int64), glob["article_idx"].to_numpy(np.int64), rest])
        scores = np.concatenate([grp["score"].to_numpy(np.float64), glob["score"].to_numpy(np.float64), np.zeros(len(rest))])
        _, first = np.unique(ids, return_index=True)
        first = np.sort(first)[:width]
        idx[i, : len(first)] = ids[first]
        score[i, : len(first)] = scores[first]
    return names, idx, score


# ---- the per-batch scorer (runs in Spark's Python workers) --------------------------------


@dataclass
class ScoringContext:
    """Everything a worker needs to score a batch; broadcast once per job."""

    embedder: Embedder
    index: ShippedIndex
    dim: int
    k: int
    n_candidates: int
    min_history: int
    repurchase_slots: int  # 0: no repurchase
    repurchase_column: str  # recent_articles (dated, from gold/train) or last_articles
    filter_bought: bool
    repurchase_first: bool
    batch_size: int
    item_pos: np.ndarray  # (max article_idx + 1,) row in item_vectors, -1 = not indexed
    item_vectors: np.ndarray | None  # (N, D), only for scoring recent purchases
    article_ids: np.ndarray  # (max article_idx + 1,) article_id strings
    segment_names: list[str]
    fill_idx: np.ndarray  # (S, T)
    fill_score: np.ndarray  # (S, T)
    model_version: str
    as_of: dt.date
    threads: int = 1


def _in_catalogue(idx: np.ndarray, item_pos: np.ndarray) -> np.ndarray:
    inside = (idx >= 0) & (idx < len(item_pos))
    out = np.zeros(idx.shape, dtype=bool)
    out[inside] = item_pos[idx[inside]] >= 0
    return out


def score_frame(pdf: pd.DataFrame, ctx: ScoringContext) -> pd.DataFrame:
    """RECOMMENDATIONS rows (K per customer) for one batch of gold/user_features rows.

    The batch also carries ``segment`` (age segment label) and, when
    ``ctx.repurchase_column`` says so, ``recent_articles``.
    """
    n = len(pdf)
    k = ctx.k
    c = ctx.n_candidates
    r = ctx.repurchase_slots
    cand_idx = np.full((n, c), -1, dtype=np.int64)
    cand_score = np.zeros((n, c), dtype=np.float32)
    rep_idx = np.full((n, r), -1, dtype=np.int64)
    rep_score = np.zeros((n, r), dtype=np.float32)
    exclude = None

    n_purchases = pdf["n_purchases"].to_numpy(dtype=np.int64, na_value=0)
    model_rows = np.flatnonzero(n_purchases >= max(ctx.min_history, 1))
    if len(model_rows):
        sub = pdf.iloc[model_rows]
        users = check_embeddings(ctx.embedder.embed_users(sub), sub["customer_id"], "customer_id", dim=ctx.dim)  # (Bm, D)
        scores, ids = search(ctx.index.get(), users, c)
        cand_idx[model_rows, : ids.shape[1]] = ids
        cand_score[model_rows, : ids.shape[1]] = scores
        if r > 0:
            recent = drop_repeats(pad_lists(sub[ctx.repurchase_column].tolist(), max(r * 3, 12)))
            picked, = compact_left(recent, _in_catalogue(recent, ctx.item_pos), r)
            ok = picked >= 0
            vecs = ctx.item_vectors[ctx.item_pos[np.where(ok, picked, 0)]]  # (Bm, R, D)
            rep_idx[model_rows] = picked
            rep_score[model_rows] = np.where(ok, np.einsum("bd,brd->br", users, vecs), 0.0)
        if ctx.filter_bought:
            bought = [pad_lists(sub["last_articles"].tolist())]
            if RECENT_COLUMN in sub.columns:
                bought.append(pad_lists(sub[RECENT_COLUMN].tolist()))
            exclude = np.full((n, sum(x.shape[1] for x in bought)), -1, dtype=np.int64)
            exclude[model_rows] = np.concatenate(bought, axis=1)

    seg_row = {name: i for i, name in enumerate(ctx.segment_names)}
    segments = pdf["segment"] if "segment" in pdf.columns else pd.Series([None] * n)
    fill_row = np.fromiter((seg_row.get(s, 0) for s in segments), dtype=np.int64, count=n)

    out_idx, out_score, out_src = blend_batch(
        cand_idx, cand_score, rep_idx, rep_score, ctx.fill_idx[fill_row], ctx.fill_score[fill_row], k, exclude,
        repurchase_first=ctx.repurchase_first,
    )
    short = (out_idx < 0).any(axis=1)
    if short.any():
        bad = pdf["customer_id"].iloc[np.flatnonzero(short)[:3]].tolist()
        raise HmrecError(
            f"could not fill {k} distinct articles for customer_id {bad}: the popularity lists and catalogue "
            f"are too short; rerun `hmrec popularity` or lower score.k"
        )
    return pd.DataFrame(
        {
            "customer_id": np.repeat(pdf["customer_id"].to_numpy(dtype=object), k),
            "article_id": ctx.article_ids[out_idx.ravel()],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "score": out_score.ravel().astype(np.float64),
            "source": SOURCES[out_src.ravel()],
            "model_version": ctx.model_version,
            "as_of": ctx.as_of,
        }
    )


def score_batches(
    batches: Iterable[pd.DataFrame],
    ctx: ScoringContext,
    on_batch: Callable[[int], None] | None = None,
    counters: dict[str, Any] | None = None,
) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` body: slices arriving Arrow batches to ``ctx.batch_size`` customers and scores each.

    ``on_batch(i)`` is called before the i-th slice (tests inject failures
    with it); ``counters`` maps each source to a Spark accumulator of its rows.
    """
    faiss.omp_set_num_threads(max(1, ctx.threads))
    i = 0
    for pdf in batches:
        for start in range(0, len(pdf), ctx.batch_size):
            if on_batch is not None:
                on_batch(i)
            i += 1
            frame = score_frame(pdf.iloc[start : start + ctx.batch_size], ctx)
            if counters is not None:
                for source, n in frame["source"].value_counts().items():
                    counters[source].add(int(n))
            yield frame


# ---- Spark plumbing -----------------------------------------------------------------------


def recent_purchases(train: "DataFrame", as_of: dt.date, days: int, keep: int) -> "DataFrame":
    """(customer_idx, recent_articles): distinct articles bought in the ``days`` before ``as_of``, most recent first.

    Ties on the day go to the article bought more often in the window.
    """
    from pyspark.sql import functions as F

    start = as_of - dt.timedelta(days=days)
    per_item = (
        train.where((F.col("t_dat") >= F.lit(start)) & (F.col("t_dat") < F.lit(as_of)))
        .groupBy("customer_idx", "article_idx")
        .agg(F.max("t_dat").alias("last"), F.count(F.lit(1)).alias("n"))
    )
    ordered = F.sort_array(F.collect_list(F.struct("last", "n", "article_idx")), asc=False)
    return per_item.groupBy("customer_idx").agg(
        F.transform(F.slice(ordered, 1, keep), lambda s: s["article_idx"]).alias(RECENT_COLUMN)
    )


def _task_cpus(spark: "SparkSession") -> int:
    return int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))


def item_tables(
    spark: "SparkSession", cfg: Config, as_of: dt.date, version: str, need_vectors: bool, dim: int | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(article_id and article_idx of gold/item_embeddings for a model version, its checked (N, D) vectors or None).

    The vectors are read only with ``need_vectors`` and are refused, naming the
    articles, when not finite or not of dimension ``dim`` (when given).
    """
    from pyspark.sql import functions as F

    from hmrec.lake import storage

    cols = ["article_id", "article_idx"] + (["embedding"] if need_vectors else [])
    items = (
        storage.read_as_of(spark, cfg, tables.ITEM_EMBEDDINGS, as_of)
        .where(F.col("model_version") == F.lit(version))
        .select(*cols)
        .toPandas()
    )
    if items.empty:
        raise HmrecError(
            f"gold/item_embeddings has no rows for as_of {as_of} and model version {version}; "
            f"run `hmrec index --as-of {as_of}` first"
        )
    if not need_vectors:
        return items, None
    vectors = check_embeddings(np.stack(items["embedding"].to_numpy()), items["article_id"], "article_id", dim=dim)
    return items.drop(columns="embedding"), vectors


def candidate_count(cfg: Config, repurchase_slots: int, n_items: int) -> int:
    """Neighbours to fetch per customer.

    Filtering bought items can remove any number of neighbours, so then
    ``index.candidates`` are fetched. Otherwise only the reserved repurchases
    can displace a neighbour, and K + slots always leave K: a shallower search
    is much cheaper for HNSW, whose beam widens to the number asked for.
    """
    if cfg.score.filter_bought:
        wanted = max(cfg.index.candidates, cfg.score.k)
    else:
        wanted = cfg.score.k + repurchase_slots
    return min(wanted, n_items)


def build_context(
    cfg: Config,
    spark: "SparkSession",
    as_of: dt.date,
    embedder: Embedder,
    index: faiss.Index,
    repurchase_column: str,
) -> ScoringContext:
    """Gather the lookup arrays (catalogue, popularity fallbacks, item vectors) on the driver."""
    from hmrec.lake import storage

    version = str(embedder.version)
    if cfg.score.repurchase_order not in REPURCHASE_ORDERS:
        raise HmrecError(
            f"config key score.repurchase_order must be one of {', '.join(REPURCHASE_ORDERS)}, "
            f"got {cfg.score.repurchase_order!r}"
        )
    slots = min(cfg.score.repurchase_slots, cfg.score.k) if cfg.score.repurchase else 0
    items, vectors = item_tables(spark, cfg, as_of, version, need_vectors=slots > 0, dim=index_dim(index))
    if len(items) != index.ntotal:
        raise HmrecError(
            f"the index holds {index.ntotal} items but gold/item_embeddings has {len(items)} for model version "
            f"{version}, as_of {as_of}: rebuild both with `hmrec index --as-of {as_of}`"
        )
    idx = items["article_idx"].to_numpy(np.int64)
    size = int(idx.max()) + 1
    item_pos = np.full(size, -1, dtype=np.int64)
    item_pos[idx] = np.arange(len(idx))
    article_ids = np.empty(size, dtype=object)
    article_ids[idx] = items["article_id"].to_numpy(dtype=object)

    popularity = storage.read_as_of(spark, cfg, tables.POPULARITY, as_of).select("segment", "rank", "article_idx", "score").toPandas()
    names, f_idx, f_score = fill_lists(popularity, idx, cfg.score.k)
    return ScoringContext(
        embedder=embedder,
        index=ShippedIndex.of(index, version),
        dim=index_dim(index),
        k=cfg.score.k,
        n_candidates=candidate_count(cfg, slots, index.ntotal),
        min_history=cfg.score.min_history,
        repurchase_slots=slots,
        repurchase_column=repurchase_column,
        filter_bought=cfg.score.filter_bought,
        repurchase_first=cfg.score.repurchase_order == "recency",
        batch_size=cfg.score.batch_size,
        item_pos=item_pos,
        item_vectors=vectors,
        article_ids=article_ids,
        segment_names=names,
        fill_idx=f_idx,
        fill_score=f_score,
        model_version=version,
        as_of=as_of,
        threads=_task_cpus(spark),
    )


def score_customers(
    cfg: Config,
    spark: "SparkSession",
    as_of: dt.date,
    embedder: Embedder,
    index: faiss.Index,
    index_meta: dict | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Score every customer of bronze/customers and replace gold/recommendations in one commit.

    ``on_batch`` runs in the workers before each batch (a test hook for
    failures mid-write). Returns the stage summary.
    """
    from pyspark.sql import functions as F

    from hmrec.etl import segments
    from hmrec.lake import schemas, storage

    version = str(embedder.version)
    with stage("score") as summary:
        summary["model_version"] = version
        features_df = storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of)
        users = features_df.withColumn("segment", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets))
        rep_col = "last_articles"
        if cfg.score.repurchase and cfg.score.repurchase_days > 0 and storage.exists(spark, cfg, tables.TRAIN):
            train = storage.read_as_of(spark, cfg, tables.TRAIN, as_of)
            recent = recent_purchases(train, as_of, cfg.score.repurchase_days, max(cfg.features.last_n, cfg.score.repurchase_slots))
            # Small (customers active in the window × a few ints): broadcast, so user_features is not shuffled.
            users = users.join(F.broadcast(recent), "customer_idx", "left")
            rep_col = RECENT_COLUMN
        ctx = build_context(cfg, spark, as_of, embedder, index, rep_col)
        summary["index_kind"] = (index_meta or {}).get("kind", type(index).__name__)
        summary["candidates"] = ctx.n_candidates

        parallelism = spark.sparkContext.defaultParallelism
        if users.rdd.getNumPartitions() < parallelism:
            users = users.repartition(parallelism)
        # Sorted within each file, so a reader filtering on one customer_id skips most row groups.
        users = users.sortWithinPartitions("customer_id")

        shipped = spark.sparkContext.broadcast(ctx)
        # Counted as the rows stream by, so the summary needs no second pass over the table.
        counters = {str(source): spark.sparkContext.accumulator(0) for source in SOURCES}
        try:
            recs = users.mapInPandas(
                lambda it: score_batches(it, shipped.value, on_batch, counters), schema=schemas.RECOMMENDATIONS
            )

            customers = storage.read(spark, cfg, tables.CUSTOMERS).select("customer_id").dropDuplicates()
            unknown = customers.join(features_df.select("customer_id"), "customer_id", "left_anti")
            top = pd.DataFrame(
                {
                    "article_id": ctx.article_ids[ctx.fill_idx[0, : ctx.k]],
                    "rank": np.arange(1, ctx.k + 1, dtype=np.int32),
                    "score": ctx.fill_score[0, : ctx.k],
                }
            )
            top_df = spark.createDataFrame(top, "article_id string, rank int, score double")
            fallback = unknown.crossJoin(F.broadcast(top_df)).select(
                "customer_id",
                "article_id",
                "rank",
                "score",
                F.lit("popular").alias("source"),
                F.lit(version).alias("model_version"),
                F.lit(as_of).alias("as_of"),
            )
            out = recs.unionByName(fallback).select([F.col(f.name).cast(f.dataType) for f in schemas.RECOMMENDATIONS.fields])
            t0 = time.perf_counter()
            storage.write(
                out,
                cfg,
                tables.RECOMMENDATIONS,
                mode="overwrite",
                metadata={"as_of": as_of.isoformat(), "model_version": version, "k": cfg.score.k},
            )
            write_s = time.perf_counter() - t0
        finally:
            shipped.unpersist()

        counts = {source: acc.value for source, acc in counters.items()}
        rows = storage.last_operation_metrics(spark, cfg, tables.RECOMMENDATIONS).get("numOutputRows", sum(counts.values()))
        # Customers missing from gold/user_features got the global list outside mapInPandas.
        counts["popular"] += rows - sum(counts.values())
        summary["customers"] = rows // cfg.score.k
        summary["rows"] = rows
        summary.update({f"rows_{source}": n for source, n in counts.items()})
        summary["customers_per_s"] = round(summary["customers"] / max(write_s, 1e-9))
        summary["version"] = storage.version(spark, cfg, tables.RECOMMENDATIONS)
    return dict(summary)


def score(cfg: Config, spark: "SparkSession", as_of: dt.date, model_version: str | None = None) -> dict:
    """The ``hmrec score`` stage with the registered model and its saved index."""
    from hmrec.model import registry

    loaded = registry.load_model(cfg, model_version=model_version, as_of=as_of)
    embedder = ModelEmbedder.from_loaded(loaded, threads=_task_cpus(spark))
    index, meta = load_index(cfg, str(loaded.version), as_of)
    log("score", f"model version {loaded.version}, {meta.get('kind')} index of {meta.get('count')} items")
    return score_customers(cfg, spark, as_of, embedder, index, index_meta=meta)


# ---- helpers a benchmark times ------------------------------------------------------------


def embed_throughput(embedder: Embedder, users: pd.DataFrame, batch_size: int) -> dict:
    """Users embedded per second on this process, in batches of ``batch_size``."""
    t0 = time.perf_counter()
    n = 0
    for start in range(0, len(users), batch_size):
        n += len(embedder.embed_users(users.iloc[start : start + batch_size]))
    secs = time.perf_counter() - t0
    return {"users": n, "seconds": round(secs, 3), "users_per_s": round(n / max(secs, 1e-9), 1)}


def search_throughput(
    item_emb: np.ndarray,
    user_emb: np.ndarray,
    kinds: Sequence[str],
    k: int,
    index_cfg: IndexConfig,
    batch_size: int = 4096,
) -> dict:
    """For each index kind: build time, queries per second and Recall@k against exact search."""
    exact = make_index("flat", item_emb, index_cfg)
    exact_ids = np.concatenate([search(exact, user_emb[i : i + batch_size], k)[1] for i in range(0, len(user_emb), batch_size)])
    out = {}
    for kind in kinds:
        t0 = time.perf_counter()
        index = exact if kind == "flat" else make_index(kind, item_emb, index_cfg)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = np.concatenate([search(index, user_emb[i : i + batch_size], k)[1] for i in range(0, len(user_emb), batch_size)])
        secs = time.perf_counter() - t0
        out[kind] = {
            "build_s": round(build, 3),
            "search_s": round(secs, 3),
            "queries_per_s": round(len(user_emb) / max(secs, 1e-9), 1),
            f"recall@{k}": round(recall_vs_exact(ids, exact_ids), 4),
        }
    return out
