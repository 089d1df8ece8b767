"""Batch scoring: exactly K distinct articles for every customer, in one Delta commit.

The work happens in Spark's Python workers (``mapInPandas`` over
``tables.USER_FEATURES``): a batch of ``score.batch_size`` customers is
embedded, searched in FAISS for ``index.candidates`` neighbours, blended with
the customer's recent purchases and filled with the popular items of their age
segment, all with array operations on the whole batch (:mod:`hmrec.serve.blend`).
The embedder, the serialised index and the lookup arrays travel in one
broadcast and are rebuilt once per Python worker (cached by model version).

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
``tables.USER_FEATURES`` (the last ``features.last_n`` bought, latest first)
with ``score.repurchase_days: 0``, the default; with a day count they are the
distinct articles bought in that many days before the as-of date (from
``tables.TRAIN``, latest first).
``score.filter_bought`` drops from the model's candidates everything in
``last_articles`` and the recent purchases (the full history is not at hand
per batch).
"""
from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import faiss
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.etl import segments
from hmrec.etl.features import purchase_lists
from hmrec.etl.split import window
from hmrec.lake import schemas, storage, tables
from hmrec.progress import log, stage
from hmrec.serve.blend import SOURCES, blend_batch, compact_left, drop_repeats, fill_lists, pad_lists
from hmrec.serve.embedders import Embedder, ModelEmbedder, check_embeddings
from hmrec.serve.index import ShippedIndex, index_dim, load_index, read_item_embeddings, search
from hmrec.serve.plans import ListPlan, Plans, is_auto, plans_from_json, unchosen
from hmrec.lake.choices import read_choices

RECENT_COLUMN = "recent_articles"


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
    repurchase_slots: int  # the widest plan's recent purchases: the width of the arrays
    repurchase_column: str  # recent_articles (dated, from the training rows) or last_articles
    filter_bought: bool
    batch_size: int
    item_pos: np.ndarray  # (max article_idx + 1,) row in item_vectors, -1 = not indexed
    item_vectors: np.ndarray | None  # (N, D), only for scoring recent purchases
    article_ids: np.ndarray  # (max article_idx + 1,) article_id strings
    segment_names: list[str]
    fill_idx: np.ndarray  # (S, T)
    fill_score: np.ndarray  # (S, T)
    model_version: str
    as_of: dt.date
    plans: tuple[ListPlan, ...] = ()  # by history group code (cold, lapsed, active)
    lapsed_days: int = 90
    threads: int = 1
    verify: bool = True  # check each scored batch before it goes to the writer (check_lists)


def _in_catalogue(idx: np.ndarray, item_pos: np.ndarray) -> np.ndarray:
    inside = (idx >= 0) & (idx < len(item_pos))
    out = np.zeros(idx.shape, dtype=bool)
    out[inside] = item_pos[idx[inside]] >= 0
    return out


@dataclass
class BatchInputs:
    """What any plan's lists are assembled from, for one batch of customers."""

    group: np.ndarray  # (B,) history group code
    eligible: np.ndarray  # (B,) enough history for the model (score.min_history)
    cand_idx: np.ndarray  # (B, C) model neighbours, best first, -1 = none
    cand_score: np.ndarray  # (B, C)
    rep_idx: np.ndarray  # (B, R) recent purchases, latest first, -1 = none
    rep_score: np.ndarray  # (B, R) the model's score of each
    exclude: np.ndarray | None  # (B, X) articles the model's candidates may not repeat
    segment_row: np.ndarray  # (B,) row of the customer's age segment in ctx.fill_idx


def batch_inputs(pdf: pd.DataFrame, ctx: ScoringContext, model_groups: np.ndarray | None = None) -> BatchInputs:
    """Embed, search and gather the recent purchases of one batch of ``tables.USER_FEATURES`` rows.

    ``model_groups`` (one flag per history group) says whose rows need the
    model's candidates (None: every row with enough history); the others keep
    -1 candidates. The batch
    also carries ``segment`` (age segment label) and, when
    ``ctx.repurchase_column`` says so, ``recent_articles``.
    """
    n = len(pdf)
    c = ctx.n_candidates
    r = ctx.repurchase_slots
    cand_idx = np.full((n, c), -1, dtype=np.int64)
    cand_score = np.zeros((n, c), dtype=np.float32)
    rep_idx = np.full((n, r), -1, dtype=np.int64)
    rep_score = np.zeros((n, r), dtype=np.float32)
    exclude = None

    n_purchases = pdf["n_purchases"].to_numpy(dtype=np.int64, na_value=0)
    days = segments.days_since_last(pdf["days_since_last_log"].to_numpy(dtype=np.float64, na_value=np.nan))
    group = segments.history_groups(n_purchases, days, ctx.lapsed_days)
    eligible = n_purchases >= max(ctx.min_history, 1)
    wanted = model_groups[group] if model_groups is not None else True
    model_rows = np.flatnonzero(eligible & wanted)
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
    labels = pdf["segment"] if "segment" in pdf.columns else pd.Series([None] * n)
    segment_row = np.fromiter((seg_row.get(s, 0) for s in labels), dtype=np.int64, count=n)
    return BatchInputs(group, eligible, cand_idx, cand_score, rep_idx, rep_score, exclude, segment_row)


def assemble(inp: BatchInputs, ctx: ScoringContext, plans: tuple[ListPlan, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's K items under the plan of its history group: (article_idx, score, source code), (B, K) each."""
    use_model = np.array([p.source == "model" for p in plans])[inp.group] & inp.eligible  # (B,)
    use_history = np.array([p.source != "popular" for p in plans])[inp.group] & inp.eligible  # (B,)
    slots = np.array([p.slots for p in plans])[inp.group]  # (B,)
    first = np.array([p.order == "recency" or p.source == "repurchase" for p in plans])[inp.group]  # (B,)
    global_fill = np.array([p.fallback == "global" for p in plans])[inp.group]  # (B,)
    cand_idx = np.where(use_model[:, None], inp.cand_idx, -1)
    keep = use_history[:, None] & (np.arange(inp.rep_idx.shape[1])[None, :] < slots[:, None])
    rep_idx = np.where(keep, inp.rep_idx, -1)
    rep_score = np.where(keep, inp.rep_score, 0.0)
    fill_row = np.where(global_fill, 0, inp.segment_row)
    return blend_batch(
        cand_idx, inp.cand_score, rep_idx, rep_score, ctx.fill_idx[fill_row], ctx.fill_score[fill_row], ctx.k,
        inp.exclude, repurchase_first=first,
    )


def score_frame(pdf: pd.DataFrame, ctx: ScoringContext) -> pd.DataFrame:
    """``tables.RECOMMENDATIONS`` rows (K per customer) for one batch of ``tables.USER_FEATURES`` rows."""
    n = len(pdf)
    k = ctx.k
    inp = batch_inputs(pdf, ctx, model_groups=np.array([p.source != "popular" for p in ctx.plans]))
    out_idx, out_score, out_src = assemble(inp, ctx, ctx.plans)
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
            batch = pdf.iloc[start : start + ctx.batch_size]
            frame = score_frame(batch, ctx)
            if ctx.verify:
                check_lists(frame, batch["customer_id"].to_numpy(dtype=object), ctx.k)
            if counters is not None:
                for source, n in frame["source"].value_counts().items():
                    counters[source].add(int(n))
            yield frame


# ---- the checks before publishing -------------------------------------------------------
#
# What is published is the union of two parts: the scored lists of the customers of
# tables.USER_FEATURES (one batch of customers at a time in the workers) and the global
# popular list for the customers of tables.CUSTOMERS without features. So every customer of
# tables.CUSTOMERS has exactly K distinct articles ranked 1..K when (1) the features hold each
# customer once and only customers of tables.CUSTOMERS (check_coverage, on the driver, before
# scoring), (2) the popular list is K distinct articles (check_lists on the driver) and (3)
# each scored batch is K distinct articles ranked 1..K for each of its customers, in order
# (check_lists in the worker, on every batch as it goes to the writer). A failure in a worker
# fails the write's Spark job, so Delta never commits: the served table stays as it was, and
# the worker's message reaches the user as one line (worker_error).

REFUSED = f"refused to publish {tables.RECOMMENDATIONS}"
EXAMPLES = 3  # offending customer_ids named in a refusal
_WORKER_ERROR = re.compile(r"HmrecError: ([^\n]+)")  # as a Python worker's failure reaches the driver


def check_lists(frame: pd.DataFrame, customer_ids: np.ndarray, k: int, what: str = "a scored batch") -> None:
    """Refuse ``frame`` (``tables.RECOMMENDATIONS`` rows) unless it is, for each of ``customer_ids`` in
    order, ``k`` rows of distinct non-null article_ids ranked 1..k; the message names ``what`` and the
    first offender."""
    n = len(customer_ids)
    if len(frame) != n * k:
        raise HmrecError(f"{REFUSED}: {what} of {n} customers holds {len(frame)} rows, not {n * k} "
                         f"({k} each); the served table is unchanged")
    if n == 0:
        return
    customers = frame["customer_id"].to_numpy(dtype=object).reshape(n, k)
    articles = frame["article_id"].to_numpy(dtype=object).reshape(n, k)
    ranks = frame["rank"].to_numpy().reshape(n, k)
    missing = pd.isna(articles)
    names = np.where(missing, "", articles).astype(str)
    names.sort(axis=1)
    bad = (customers != np.asarray(customer_ids, dtype=object)[:, None]).any(axis=1)
    bad |= (ranks != np.arange(1, k + 1)).any(axis=1) | missing.any(axis=1)
    bad |= (names[:, 1:] == names[:, :-1]).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        i = rows[0]
        raise HmrecError(
            f"{REFUSED}: {len(rows)} customers of {what} do not have exactly {k} distinct articles ranked "
            f"1..{k} (e.g. customer_id {customer_ids[i]}: articles {list(articles[i])}, ranks {ranks[i].tolist()}); "
            f"the served table is unchanged"
        )


def check_coverage(users: DataFrame, customers: DataFrame, as_of: dt.date) -> dict[str, int]:
    """Refuse to score unless ``users`` (``tables.USER_FEATURES`` rows) holds each customer once, all of
    ``customers`` (the distinct customer_ids of ``tables.CUSTOMERS``); one aggregate pass.

    Returns {"scored": customers with features, "fallback": customers without}.
    """
    per = users.groupBy("customer_id").agg(F.count(F.lit(1)).alias("n"))
    both = per.join(customers.select("customer_id").withColumn("_known", F.lit(True)), "customer_id", "full_outer")
    twice = F.col("n") > 1
    unknown = F.col("n").isNotNull() & F.col("_known").isNull()

    def examples(cond):
        return F.slice(F.sort_array(F.collect_list(F.when(cond, F.coalesce(F.col("customer_id"), F.lit("null"))))), 1, EXAMPLES)

    row = both.agg(
        F.count(F.when(F.col("n").isNotNull() & F.col("_known").isNotNull(), 1)).alias("scored"),
        F.count(F.when(F.col("n").isNull(), 1)).alias("fallback"),
        F.count(F.when(twice, 1)).alias("twice"), examples(twice).alias("twice_ids"),
        F.count(F.when(unknown, 1)).alias("unknown"), examples(unknown).alias("unknown_ids"),
    ).first()
    problems = []
    if row["twice"]:
        problems.append(f"{row['twice']:,} customers appear more than once in {tables.USER_FEATURES} for as_of "
                        f"{as_of} (e.g. {row['twice_ids']})")
    if row["unknown"]:
        problems.append(f"{row['unknown']:,} customers of {tables.USER_FEATURES} for as_of {as_of} are not in "
                        f"{tables.CUSTOMERS} (e.g. {row['unknown_ids']})")
    if problems:
        raise HmrecError(f"{REFUSED}: " + "; ".join(problems) + f"; the served table is unchanged. Rebuild the "
                         f"features with `hmrec features --as-of {as_of}`, then rerun `hmrec score`")
    return {"scored": int(row["scored"]), "fallback": int(row["fallback"])}


def worker_error(exc: BaseException) -> str | None:
    """The message of an HmrecError a worker raised (a refusal of :func:`check_lists`, a list the popular
    items could not fill), found in the Spark error that failed the job; None for any other failure."""
    found = _WORKER_ERROR.search(str(exc))
    return found.group(1).strip() if found else None


def publish(out: DataFrame, cfg: Config, as_of: dt.date, version: str, **metadata: object) -> tuple[int, int | None]:
    """Replace ``tables.RECOMMENDATIONS`` with ``out`` in one commit; returns (rows written, the table's
    Delta version after it).

    A worker's refusal (:func:`check_lists`) fails the write's Spark job, so no
    commit is made; it reaches the caller as one :class:`HmrecError` line.
    """
    try:
        return storage.commit(out, cfg, tables.RECOMMENDATIONS, mode="overwrite",
                             metadata={"as_of": as_of.isoformat(), "model_version": str(version), "k": cfg.score.k,
                                       **metadata})
    except Exception as exc:
        message = worker_error(exc)
        if message is None:
            raise
        raise HmrecError(message) from None


# ---- Spark plumbing -----------------------------------------------------------------------


def recent_purchases(train: DataFrame, as_of: dt.date, days: int, keep: int) -> DataFrame:
    """(customer_idx, recent_articles): distinct articles bought in the ``days`` (> 0) before ``as_of``, most recent first.

    Ties on the day go to the article bought more often in the window; at most ``keep`` per customer.
    """
    recent = purchase_lists(window(train, as_of, days), "customer_idx", "article_idx", keep)
    return recent.select("customer_idx", F.col("history").alias(RECENT_COLUMN))


def _task_cpus(spark: SparkSession) -> int:
    return int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))


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
    spark: SparkSession,
    as_of: dt.date,
    embedder: Embedder,
    index: faiss.Index,
    repurchase_column: str,
    plans: Plans | None = None,
) -> ScoringContext:
    """Gather the lookup arrays (catalogue, popularity fallbacks, item vectors) on the driver.

    ``plans`` (each history group's :class:`ListPlan`; default: the pinned
    settings, see :func:`hmrec.serve.plans.unchosen`) decide each group's lists.
    """
    version = str(embedder.version)
    plans = plans or unchosen(cfg)
    by_code = tuple(plans[g] for g in segments.HISTORY_GROUPS)
    slots = max(min(p.slots, cfg.score.k) for p in by_code)
    items, vectors = read_item_embeddings(spark, cfg, as_of, version, need_vectors=slots > 0, dim=index_dim(index))
    if len(items) != index.ntotal:
        raise HmrecError(
            f"the index holds {index.ntotal} items but {tables.ITEM_EMBEDDINGS} has {len(items)} for model version "
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
        batch_size=cfg.score.batch_size,
        item_pos=item_pos,
        item_vectors=vectors,
        article_ids=article_ids,
        segment_names=names,
        fill_idx=f_idx,
        fill_score=f_score,
        model_version=version,
        as_of=as_of,
        plans=by_code,
        lapsed_days=cfg.evaluate.lapsed_days,
        threads=_task_cpus(spark),
    )


def served_plans(spark: SparkSession, cfg: Config, as_of: dt.date) -> tuple[Plans, str]:
    """Each history group's plan at ``as_of``, and where it comes from.

    Pinned settings apply as they are; ``auto`` ones follow the choice
    recorded for the as-of on its validation week, or :data:`hmrec.serve.plans.UNCHOSEN`
    when none was made.
    """
    if not is_auto(cfg):
        return unchosen(cfg), "pinned by the settings"
    chosen = read_choices(spark, cfg, as_of)
    if chosen is None or "plans" not in chosen["choices"]:
        return unchosen(cfg), f"nothing chosen for {as_of}: the defaults"
    return plans_from_json(chosen["choices"]["plans"]), f"chosen on the validation week from {chosen['fit_cutoff']}"


def scoring_users(cfg: Config, spark: SparkSession, as_of: dt.date, plans: Plans) -> tuple[DataFrame, DataFrame, str]:
    """(``tables.USER_FEATURES`` at ``as_of``, the same rows with ``segment`` and, when
    ``score.repurchase_days`` > 0, ``recent_articles``, the column recent purchases are read from)."""
    features_df = storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of)
    users = features_df.withColumn("segment", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets))
    rep_col = "last_articles"
    if cfg.score.repurchase and cfg.score.repurchase_days > 0 and storage.exists(spark, cfg, tables.TRAIN):
        train = storage.read_as_of(spark, cfg, tables.TRAIN, as_of)
        widest = max(p.slots for p in plans.values())
        recent = recent_purchases(train, as_of, cfg.score.repurchase_days, max(cfg.features.last_n, widest))
        # Small (customers active in the window × a few ints): broadcast, so user_features is not shuffled.
        users = users.join(F.broadcast(recent), "customer_idx", "left")
        rep_col = RECENT_COLUMN
    return features_df, users, rep_col


def blend_for(cfg: Config, spark: SparkSession, cutoff: dt.date, loaded: Any, plans: Plans,
              users: pd.DataFrame) -> tuple[np.ndarray, "ScoringContext"]:
    """(B, ``score.k``) article_idx: the blend scoring makes at ``cutoff`` with the model ``loaded`` (and its
    index) and ``plans``, for ``users`` (``tables.USER_FEATURES`` rows at the cutoff with ``segment``), made
    by scoring's batch code on the driver; and the scoring context. With ``score.repurchase_days`` > 0 the
    recent purchases scoring reads are joined to ``users`` here, as :func:`scoring_users` joins them."""
    index, _ = load_index(cfg, str(loaded.version), cutoff)
    _, scoring, rep_col = scoring_users(cfg, spark, cutoff, plans)
    if rep_col != "last_articles" and len(users):
        ids = F.broadcast(spark.createDataFrame(users[["customer_idx"]].astype({"customer_idx": "int64"})))
        recent = scoring.join(ids, "customer_idx").select("customer_idx", rep_col).toPandas()
        users = users.merge(recent, on="customer_idx", how="left")
    ctx = build_context(cfg, spark, cutoff, ModelEmbedder.from_loaded(loaded), index, rep_col, plans)
    groups = np.array([p.source != "popular" for p in ctx.plans])
    out = [assemble(batch_inputs(users.iloc[start : start + ctx.batch_size], ctx, model_groups=groups), ctx, ctx.plans)[0]
           for start in range(0, len(users), ctx.batch_size)]
    return (np.concatenate(out) if out else np.zeros((0, ctx.k), np.int64)), ctx


def score_customers(
    cfg: Config,
    spark: SparkSession,
    as_of: dt.date,
    embedder: Embedder,
    index: faiss.Index,
    index_meta: dict | None = None,
    on_batch: Callable[[int], None] | None = None,
    plans: Plans | None = None,
    verify: bool = True,
) -> dict:
    """Score every customer of ``tables.CUSTOMERS`` and replace ``tables.RECOMMENDATIONS`` in one commit.

    ``plans`` are the history groups' list plans (default: the pinned
    settings). What is published is checked before the commit (see "the
    checks before publishing" above; ``verify=False`` skips them, for the
    benchmark that measures their cost). ``on_batch`` runs in the workers
    before each batch (a test hook for failures mid-write). Returns the stage
    summary.
    """
    version = str(embedder.version)
    plans = plans or unchosen(cfg)
    with stage("score") as summary:
        summary["model_version"] = version
        summary["plans"] = ", ".join(f"{g}: {plans[g].label()}" for g in segments.HISTORY_GROUPS)
        features_df, users, rep_col = scoring_users(cfg, spark, as_of, plans)
        ctx = build_context(cfg, spark, as_of, embedder, index, rep_col, plans)
        ctx.verify = verify
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
            if verify:
                first = ctx.fill_idx[0, : ctx.k]  # the popular list of customers without features
                popular = np.where(first >= 0, ctx.article_ids[np.maximum(first, 0)], None)
                check_lists(pd.DataFrame({"customer_id": "*", "article_id": popular, "rank": top["rank"]}),
                            np.array(["*"], dtype=object), ctx.k, "the popular list of customers without features")
                summary.update(check_coverage(features_df, customers, as_of))
                summary["check_s"] = round(time.perf_counter() - t0, 2)
            rows, published = publish(out, cfg, as_of, version)
            write_s = time.perf_counter() - t0
        finally:
            shipped.unpersist()

        counts = {source: acc.value for source, acc in counters.items()}
        # Customers missing from the user features got the global list outside mapInPandas.
        counts["popular"] += rows - sum(counts.values())
        summary["customers"] = rows // cfg.score.k
        summary["rows"] = rows
        summary.update({f"rows_{source}": n for source, n in counts.items()})
        summary["customers_per_s"] = round(summary["customers"] / max(write_s, 1e-9))
        summary["version"] = published
    return dict(summary)


def score(cfg: Config, spark: SparkSession, as_of: dt.date, model_version: str | None = None) -> dict:
    """The ``hmrec score`` stage with the registered model and its saved index (``score.method: blend``),
    or its ranker over ``tables.CANDIDATES`` (``ranker``, :mod:`hmrec.rank.serve`); the version becomes the champion
    and gets its MLflow pyfunc flavour, which serves the blend (:mod:`hmrec.serve.pyfunc`)."""
    # Spark workers import this module to unpickle the ScoringContext; the
    # registry (mlflow, torch) is loaded only by the driver stage that needs it.
    from hmrec.model import registry

    loaded = registry.load_model(cfg, model_version=model_version, as_of=as_of)
    if cfg.score.method == "ranker":
        from hmrec.rank.ranker import served_list
        from hmrec.rank.serve import score_ranked  # lightgbm: only with this method

        version = str(loaded.version)
        served, maps = served_list(cfg, version)
        if served == "no ranker":
            log("score", f"model version {version} has no ranker (`hmrec rank --as-of {as_of}` trains one): "
                         f"the blend is served")
        elif served == "blend":
            # a choice made on the validation week, as the blend's recipes are: the better list is served
            log("score", f"the blend is served: on the validation week's held-out buyers the ranker's "
                         f"MAP@{cfg.score.k} {maps['ranker']:.4f} is below the blend's {maps['blend']:.4f}")
        else:
            plans, why = served_plans(spark, cfg, as_of)
            summary = score_ranked(cfg, spark, as_of, version, fallback=plans["cold"].fallback)
            registry.set_alias(cfg, registry.CHAMPION, version)
            index, _ = load_index(cfg, version, as_of)
            summary["pyfunc"] = _log_pyfunc(cfg, spark, as_of, loaded, index, plans, "ranker")
            return summary
    embedder = ModelEmbedder.from_loaded(loaded, threads=_task_cpus(spark))
    index, meta = load_index(cfg, str(loaded.version), as_of)
    plans, why = served_plans(spark, cfg, as_of)
    log("score", f"model version {loaded.version}, {meta.get('kind')} index of {meta.get('count')} items; "
                 f"lists {why}: " + ", ".join(f"{g} {plans[g].label()}" for g in segments.HISTORY_GROUPS))
    summary = score_customers(cfg, spark, as_of, embedder, index, index_meta=meta, plans=plans)
    # the served lists are this version's now: the alias follows them (see hmrec.governance)
    registry.set_alias(cfg, registry.CHAMPION, str(loaded.version))
    summary["pyfunc"] = _log_pyfunc(cfg, spark, as_of, loaded, index, plans, "blend")
    return summary


def _log_pyfunc(cfg: Config, spark: SparkSession, as_of: dt.date, loaded: Any, index: faiss.Index, plans: Plans,
                served: str) -> str:
    """Add the MLflow pyfunc flavour to the scored version (:mod:`hmrec.serve.pyfunc`); returns its model URI."""
    from hmrec.serve.pyfunc import log_pyfunc  # mlflow: only on the driver, as the registry is

    return log_pyfunc(cfg, spark, as_of, loaded, index, plans, served)
