"""The learned ranker: LightGBM lambdarank over the candidates, trained on the validation week.

    hmrec rank --as-of YYYY-MM-DD

For as-of D and its fit cutoff v = D - ``split.validation_days``, the rows of
``tables.CANDIDATES`` at v (made from data before v, with the fit model's
retrieval, for the buyers of the week [v, D)) are labelled 1 when the
customer bought the article in that week (``tables.VALIDATION`` at D), else
0. A share ``rank.valid_share`` of the week's buyers, picked by a hash of
their customer_idx, is held out: training stops when their NDCG@12 has not
improved for ``rank.early_stopping`` rounds, and their lists give the
validation figures, the ranker's MAP@12 and Recall@12 beside the blend's for
the same customers (so the scoring method is chosen on the validation week),
with each history group's figures (``groups``) and bootstrap 95% intervals
over those customers, overall and per group (``intervals``).
The others form the training groups: customers with at least one positive,
their negatives sampled down to ``rank.negative_share``. Those rows are
picked in Spark and only they reach the driver, where training runs: rows
are (buyers of one week) x (candidates per customer), a few hundred thousand
at scale 0.1, about 5M at full H&M size with the default sample (with the
held-out buyers' candidates, about 3 GB; ``spark.driver.maxResultSize`` in
the configuration allows 4 GB), which LightGBM fits in a few GB; past that,
lower ``rank.negative_share``.

The same held-out buyers choose which customers get served candidates
(``candidates.active_days``, :func:`choose_active_days`): a customer whose
last purchase is long past gets mostly popular articles from the ranker, so
scoring can give it the popularity list instead, and the candidates stage
need not make, rank and store its rows. Each window of
:data:`ACTIVE_CHOICES` is measured by serving the popularity list to the
held-out buyers outside it; ``auto`` keeps the shortest within
``candidates.active_max_loss`` of every customer's MAP@12. The validation
figures are those of the lists served with the chosen window.

The booster (``booster.txt``) and ``ranker.json`` (features, their gain
importance, training cutoff and rows, the validation figures, the window
chosen and each window's MAP@12) are attached to
the served model version of D under ``ranker/``, with their SHA-256 as tags
of the version (``sha256.ranker/booster.txt``), so the version can be
re-scored from the registry alone (:func:`load_ranker`), with
``feature_importance.png``, the features' shares of the total gain.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, SparkSession, Window
from pyspark.sql import functions as F

from hmrec import artifacts
from hmrec.config import AUTO, Config
from hmrec.errors import HmrecError
from hmrec.etl import segments
from hmrec.etl.split import fit_cutoff
from hmrec.evaluation.metrics import group_intervals, row_metrics
from hmrec.lake import storage, tables
from hmrec.progress import log, stage
from hmrec.rank import sources as S
from hmrec.rank.candidates import candidate_rows, check_features, has_candidates
from hmrec.serve.blend import blend_batch, pad_lists

STAGE = "rank"
RANKER_DIR = "ranker"
BOOSTER_FILE = "booster.txt"
META_FILE = "ranker.json"
IMPORTANCE_FILE = "feature_importance.png"
NDCG_AT = 12


def held_out(customer_idx: np.ndarray, share: float, seed: int) -> np.ndarray:
    """(N,) bool: the customers held out, a fixed share picked by a hash of customer_idx and ``seed``."""
    h = (np.asarray(customer_idx, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(seed * 97 + 13)) % np.uint64(10007)
    return h < np.uint64(round(share * 10007))


def held_out_col(customer_idx: Column, share: float, seed: int) -> Column:
    """:func:`held_out` as a Spark column: the same hash, in 64-bit integers (customer_idx < 2**31 cannot
    overflow them), so the driver and Spark pick the same customers."""
    h = (customer_idx.cast("long") * F.lit(2654435761) + F.lit(seed * 97 + 13)) % F.lit(10007)
    return h < F.lit(round(share * 10007))


def kept_negative_col(customer_idx: Column, article_idx: Column, share: float, seed: int) -> Column:
    """Whether :func:`sample_negatives` keeps a negative row, as a Spark column (the same hash)."""
    if share >= 1.0:
        return F.lit(True)
    key = (customer_idx.cast("long") * F.lit(1000003) + article_idx.cast("long") * F.lit(7919) + F.lit(seed)) % F.lit(9973)
    return key < F.lit(round(share * 9973))


def sample_negatives(frame: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """Every positive row of ``frame`` (``label`` 1) and about ``share`` of the negatives, picked by a hash."""
    if share >= 1.0:
        return frame
    key = (frame["customer_idx"].to_numpy(np.uint64) * np.uint64(1000003)
           + frame["article_idx"].to_numpy(np.uint64) * np.uint64(7919) + np.uint64(seed)) % np.uint64(9973)
    keep = (frame["label"].to_numpy() > 0) | (key < np.uint64(round(share * 9973)))
    return frame[keep]


def training_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of customers with at least one positive, sorted by customer (the query groups of lambdarank)."""
    positive = frame.groupby("customer_idx")["label"].transform("max") > 0
    return frame[positive].sort_values(["customer_idx", "article_idx"], kind="stable").reset_index(drop=True)


def _group_sizes(frame: pd.DataFrame) -> np.ndarray:
    return frame.groupby("customer_idx", sort=False).size().to_numpy()


@dataclass
class Trained:
    booster: object  # lightgbm.Booster
    best_iteration: int
    train_rows: int
    train_groups: int
    seconds: float
    importance: dict[str, float]
    # the booster's feature columns, in its order (train_ranker's ``features``)
    features: list[str] = field(default_factory=lambda: list(S.FEATURES))


def train_ranker(train: pd.DataFrame, valid: pd.DataFrame, cfg: Config,
                 features: Sequence[str] = S.FEATURES) -> Trained:
    """Fit lambdarank on the columns ``features`` of ``train`` (rows with ``label``), early-stopped on
    NDCG@12 of ``valid``."""
    import lightgbm as lgb  # the driver's stage only; workers need it just to predict

    train, valid = training_groups(train), training_groups(valid)
    if train.empty:
        raise HmrecError("no training customer has a purchase of the validation week among its candidates: "
                         "raise candidates.retrieval_n or check that the fit cutoff's tables hold data")
    rc = cfg.rank
    params = {"objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [NDCG_AT], "learning_rate": rc.learning_rate,
              "num_leaves": rc.num_leaves, "min_child_samples": rc.min_child_samples, "num_threads": rc.threads,
              "seed": rc.seed, "deterministic": True, "force_row_wise": True, "verbose": -1,
              "lambdarank_truncation_level": 20}
    features = list(features)
    missing = S.missing_features(train, features)
    if missing:
        raise HmrecError(f"the ranker's training rows lack feature columns {missing}: they were written before "
                         f"these features existed; rerun `hmrec candidates --as-of D --role fit` for the as-of D")
    t0 = time.perf_counter()
    dtrain = lgb.Dataset(train[features].to_numpy(np.float64), train["label"].to_numpy(), group=_group_sizes(train),
                         feature_name=features, free_raw_data=True)
    sets, callbacks = [], []
    if not valid.empty:
        sets = [lgb.Dataset(valid[features].to_numpy(np.float64), valid["label"].to_numpy(), group=_group_sizes(valid),
                            reference=dtrain)]
        callbacks = [lgb.early_stopping(rc.early_stopping, verbose=False)]
    booster = lgb.train(params, dtrain, num_boost_round=rc.max_rounds, valid_sets=sets, callbacks=callbacks)
    best = int(booster.best_iteration or booster.current_iteration())
    gains = booster.feature_importance("gain", iteration=best)
    return Trained(booster, best, len(train), int(train["customer_idx"].nunique()), round(time.perf_counter() - t0, 2),
                   {f: round(float(g), 3) for f, g in sorted(zip(features, gains), key=lambda x: -x[1])}, features)


def booster_features(booster: object) -> list[str]:
    """The feature columns ``booster`` (a LightGBM booster) was trained on, in its order: LightGBM keeps
    their names in the model, so a booster trained on an older feature list scores with that list."""
    return list(booster.feature_name())


def predict(booster: object, frame: pd.DataFrame) -> np.ndarray:
    """The ranker's score of every row of ``frame`` (``tables.CANDIDATES`` rows), read from the columns the
    booster was trained on (:func:`booster_features`), whatever else ``frame`` holds."""
    if frame.empty:
        return np.zeros(0)
    features = booster_features(booster)
    missing = S.missing_features(frame, features)
    if missing:
        where = ""
        if {"as_of", "role"} <= set(frame.columns):
            as_of, role = frame["as_of"].iloc[0], frame["role"].iloc[0]
            where = f" (as_of {as_of}, role {role})"
        raise HmrecError(f"candidate rows{where} lack the feature columns {missing[:5]} that the ranker reads: "
                         f"they were written before these features existed; rerun `hmrec candidates --as-of D` "
                         f"for their as-of D (`--role fit` and the as-of they fit for fit rows)")
    return np.asarray(booster.predict(feature_matrix(frame, features), num_threads=1), dtype=np.float64)


def feature_matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The columns ``features`` of ``frame`` as one row-major float64 array (rows, features), the layout
    LightGBM and the compiled trees read. Filled a column at a time: ``frame[features].to_numpy()`` copies
    twice (the columns gathered into one block, then that block transposed into rows)."""
    out = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        out[:, j] = frame[name].to_numpy(np.float64)
    return out


def top_lists(frame: pd.DataFrame, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per customer of ``frame`` its ``k`` best candidates by ``pred``: (customer_idx (C,), article_idx (C, k),
    score (C, k), source name (C, k)); -1 / 0 / '' where a customer has fewer than k candidates."""
    if frame.empty:
        return (np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k)), np.zeros((0, k), dtype=object))
    f = pd.DataFrame({"c": frame["customer_idx"].to_numpy(np.int64), "a": frame["article_idx"].to_numpy(np.int64),
                      "p": pred, "s": S.primary_source(frame)})
    f = f.sort_values(["c", "p", "a"], ascending=[True, False, True], kind="stable")
    f["r"] = f.groupby("c").cumcount()
    f = f[f["r"] < k]
    customers, row = np.unique(f["c"].to_numpy(), return_inverse=True)
    idx = np.full((len(customers), k), -1, dtype=np.int64)
    score = np.zeros((len(customers), k))
    src = np.full((len(customers), k), "", dtype=object)
    col = f["r"].to_numpy()
    idx[row, col] = f["a"].to_numpy()
    score[row, col] = f["p"].to_numpy()
    src[row, col] = f["s"].to_numpy()
    return customers, idx, score, src


def filled_lists(idx: np.ndarray, score: np.ndarray, src: np.ndarray, fill_idx: np.ndarray, fill_score: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranked lists (B, k) completed from each row's popularity list ``fill_*`` (B, T) to exactly k distinct
    articles; the filled slots' source is ``popular``."""
    b = idx.shape[0]
    if idx.shape[1] < k:  # fewer columns than K (no candidates at all): pad with empty slots
        pad = ((0, 0), (0, k - idx.shape[1]))
        idx, score, src = np.pad(idx, pad, constant_values=-1), np.pad(score, pad), np.pad(src, pad, constant_values="")
    order_score = np.where(idx >= 0, -np.arange(idx.shape[1])[None, :].astype(np.float64), 0.0)  # keep the ranked order
    out_idx, _, out_src_code = blend_batch(idx, order_score, np.full((b, 0), -1, np.int64), np.zeros((b, 0)),
                                           fill_idx, fill_score, k)
    # blend_batch keeps the ranked candidates first, in their order; map each back to its score and source
    pos = np.argmax(out_idx[:, :, None] == idx[:, None, :], axis=2)
    from_rank = out_src_code == 0
    rows = np.arange(b)[:, None]
    out_score = np.where(from_rank, score[rows, pos], 0.0)
    fill_pos = np.argmax(out_idx[:, :, None] == fill_idx[:, None, :], axis=2)
    out_score = np.where(from_rank, out_score, fill_score[rows, fill_pos])
    out_src = np.where(from_rank, src[rows, pos], "popular")
    return out_idx, out_score, out_src


# ---- the registry ---------------------------------------------------------------------------


def importance_figure(importance: dict[str, float], top: int = 25):
    """A horizontal bar chart of the ``top`` features by gain importance (largest on top), as a matplotlib
    Figure; the gains are shown as shares of their total, so versions compare on one scale."""
    from matplotlib.figure import Figure

    items = sorted(importance.items(), key=lambda kv: -kv[1])[:top]
    total = sum(importance.values()) or 1.0
    names = [name for name, _ in items][::-1]
    shares = [gain / total for _, gain in items][::-1]
    fig = Figure(figsize=(7, 0.3 * len(items) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, shares, color="#4c72b0")
    ax.set_xlabel("share of the booster's total gain")
    ax.set_title(f"ranker feature importance (top {len(items)} of {len(importance)})")
    fig.tight_layout()
    return fig


def save_ranker(cfg: Config, version: str, trained: Trained, meta: dict) -> dict[str, str]:
    """Attach the booster and ``ranker.json`` to model version ``version`` with their SHA-256 as its tags."""
    from hmrec.model import registry

    c = registry.client(cfg)
    mv = c.get_model_version(cfg.paths.registered_model, version)
    with tempfile.TemporaryDirectory(prefix="hmrec-ranker-") as tmp:
        trained.booster.save_model(os.path.join(tmp, BOOSTER_FILE), num_iteration=trained.best_iteration)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True, default=str)
        importance_figure(trained.importance).savefig(os.path.join(tmp, IMPORTANCE_FILE), dpi=100)
        sums = {registry.CHECKSUM_TAG.format(f"{RANKER_DIR}/{n}"): artifacts.sha256_file(os.path.join(tmp, n))
                for n in (BOOSTER_FILE, META_FILE)}
        c.log_artifacts(mv.run_id, tmp, RANKER_DIR)
    for key, value in sums.items():
        c.set_model_version_tag(cfg.paths.registered_model, version, key, value)
    return sums


def load_ranker(cfg: Config, version: str) -> tuple[object, dict]:
    """The booster and ``ranker.json`` of model version ``version``, checked against their recorded SHA-256."""
    import lightgbm as lgb
    from mlflow.artifacts import download_artifacts

    from hmrec.model import registry

    c = registry.client(cfg)
    mv = c.get_model_version(cfg.paths.registered_model, str(version))
    tags = mv.tags or {}
    fix = f"rerun `hmrec rank --as-of {tags.get(registry.AS_OF_TAG, 'YYYY-MM-DD')}`"
    if registry.CHECKSUM_TAG.format(f"{RANKER_DIR}/{BOOSTER_FILE}") not in tags:
        raise HmrecError(f"model version {version} has no ranker: {fix}")
    run = c.get_run(mv.run_id)
    local = download_artifacts(artifact_uri=f"{run.info.artifact_uri}/{RANKER_DIR}", tracking_uri=cfg.mlflow_uri,
                               dst_path=tempfile.mkdtemp(prefix=f"hmrec-ranker-v{version}-"))
    paths = {n: os.path.join(local, n) for n in (BOOSTER_FILE, META_FILE)}
    for name, path in paths.items():
        artifacts.verify(path, tags.get(registry.CHECKSUM_TAG.format(f"{RANKER_DIR}/{name}")),
                         f"the ranker's {name} of model version {version}", fix)
    with open(paths[META_FILE]) as f:
        meta = json.load(f)
    try:
        booster = lgb.Booster(model_file=paths[BOOSTER_FILE])
    except Exception as exc:  # a damaged file: whatever LightGBM's parser raises
        raise artifacts.unreadable(paths[BOOSTER_FILE], f"the ranker of model version {version}", fix, exc) from None
    # A booster scores with its own feature list (an older one with fewer features), as long as every one
    # is a column hmrec still writes.
    features = booster_features(booster)
    if meta.get("features") != features:
        raise HmrecError(f"the ranker of model version {version}: {META_FILE} lists features {meta.get('features')}, "
                         f"its {BOOSTER_FILE} {features}: {fix}")
    unknown = [c for c in features if c not in S.FEATURES]
    if unknown:
        raise HmrecError(f"the ranker of model version {version} reads features {unknown} that "
                         f"{tables.CANDIDATES} no longer has: {fix}")
    return booster, meta


def has_ranker(cfg: Config, version: str | None) -> bool:
    """Whether model version ``version`` carries a ranker."""
    return ranker_sha256(cfg, version) is not None


def ranker_sha256(cfg: Config, version: str | None) -> str | None:
    """The SHA-256 of model version ``version``'s booster (its registry tag), None without a ranker."""
    from hmrec.model import registry

    from mlflow.exceptions import MlflowException

    if version is None:
        return None
    try:
        mv = registry.client(cfg).get_model_version(cfg.paths.registered_model, str(version))
    except MlflowException:  # not a registered version (lists scored from replayed embeddings)
        return None
    return (mv.tags or {}).get(registry.CHECKSUM_TAG.format(f"{RANKER_DIR}/{BOOSTER_FILE}"))


# ---- the validation figures --------------------------------------------------------------


def _means(predicted: np.ndarray, actual: np.ndarray, k: int) -> dict[str, float]:
    m = row_metrics(predicted, actual, k)
    return {f"map@{k}": round(float(m[f"map@{k}"].mean()), 6), f"recall@{k}": round(float(m[f"recall@{k}"].mean()), 6),
            "users": int(len(predicted))}


def list_figures(lists: dict[str, np.ndarray], actual: np.ndarray, group: np.ndarray, k: int) -> dict:
    """Each history group's customers and MAP@K and Recall@K of each (B, k) list of ``lists`` against
    ``actual`` (B, A) (``groups``), and bootstrap 95% intervals over customers of those figures, overall and
    per group (``intervals``: {"all" and each group present: {list: {metric: [low, high]}}}); ``group`` (B,)
    holds the customers' history group codes (:data:`hmrec.etl.segments.HISTORY_GROUPS`)."""
    metrics = [f"map@{k}", f"recall@{k}"]
    values = {}
    for name, predicted in lists.items():
        m = row_metrics(predicted, actual, k)
        values[name] = {metric: m[metric] for metric in metrics}
    masks = segments.history_masks(group)
    groups = {name: {"users": int(mask.sum()),
                     **{lst: {metric: round(float(v[metric][mask].mean()), 6) for metric in metrics}
                        for lst, v in values.items()}}
              for name, mask in masks[1:]}
    return {"groups": groups, "intervals": group_intervals(values, masks, metrics)}


def blend_on(cfg: Config, spark: SparkSession, as_of: dt.date, users: pd.DataFrame):
    """The blend's lists at the fit cutoff of ``as_of`` for ``users`` (``tables.USER_FEATURES`` rows at it
    with ``segment``), exactly as scoring would make them with the plans of ``as_of``; and the scoring context."""
    from hmrec.model import registry
    from hmrec.serve.score import blend_for, served_plans

    cutoff = fit_cutoff(cfg, as_of)
    plans, _ = served_plans(spark, cfg, as_of)
    lists, ctx = blend_for(cfg, spark, cutoff, registry.load_model(cfg, as_of=cutoff, role="fit"), plans, users)
    return lists, ctx, plans


def fallback_rows(ctx, segment: pd.Series, fallback: str) -> np.ndarray:
    """Each customer's row in ``ctx.fill_idx`` (a scoring context): its age segment's, or global (row 0)."""
    if fallback == "global":
        return np.zeros(len(segment), dtype=np.int64)
    seg_row = {name: i for i, name in enumerate(ctx.segment_names)}
    return np.fromiter((seg_row.get(s, 0) for s in segment), dtype=np.int64, count=len(segment))


@dataclass
class WeekFrames:
    """The ranker's rows for one as-of: every buyer of the validation week with its purchases (``actual``),
    the training rows (negatives sampled) and the held-out buyers' candidate rows (``valid``)."""
    actual: pd.DataFrame
    train: pd.DataFrame
    valid: pd.DataFrame


def week_frames(cfg: Config, spark: SparkSession, as_of: dt.date) -> WeekFrames | None:
    """The fit cutoff's candidates of ``as_of`` labelled with the validation week's purchases and split by
    customer into training and held-out rows; None when the validation week has no purchase."""
    cutoff = fit_cutoff(cfg, as_of)
    rc = cfg.rank
    labels = storage.read_as_of(spark, cfg, tables.VALIDATION, as_of).where(
        F.col("customer_idx").isNotNull() & F.col("article_idx").isNotNull())
    actual = labels.groupBy("customer_idx").agg(F.collect_set("article_idx").alias("actual")).toPandas()
    if actual.empty:
        return None
    if not has_candidates(spark, cfg, cutoff, "fit"):
        raise HmrecError(f"{tables.CANDIDATES} has no rows at the fit cutoff {cutoff}: run "
                         f"`hmrec candidates --as-of {as_of} --role fit` first")
    check_features(spark, cfg, cutoff, "fit", S.FEATURES)
    positives = labels.select("customer_idx", "article_idx").distinct().withColumn("label", F.lit(1))
    # Selected in Spark, so that only the rows the ranker uses reach the driver (about half of them at
    # full size): every held-out buyer's candidates; of the others, the customers with a positive among
    # their candidates (the training groups), their positives and the sampled negatives.
    c, a = F.col("customer_idx"), F.col("article_idx")
    cands = (candidate_rows(spark, cfg, cutoff, "fit")
             .join(positives, ["customer_idx", "article_idx"], "left").fillna({"label": 0})
             .withColumn("_held", held_out_col(c, rc.valid_share, rc.seed))
             .withColumn("_group_pos", F.max("label").over(Window.partitionBy("customer_idx"))))
    kept = cands.where(F.col("_held") | ((F.col("_group_pos") > 0)
                                         & ((F.col("label") > 0) | kept_negative_col(c, a, rc.negative_share, rc.seed))))
    rows = kept.drop("_group_pos").toPandas()
    held = rows.pop("_held").to_numpy(bool)
    train, valid = rows[~held].reset_index(drop=True), rows[held].reset_index(drop=True)
    # the candidates-fit stage already printed the week's candidate rows; these are the rows kept
    log(STAGE, f"{len(rows):,} candidate rows of {rows['customer_idx'].nunique():,} buyers at {cutoff} kept: "
               f"training on {len(train):,} rows, {len(valid):,} held out")
    return WeekFrames(actual, train, valid)


# ---- the stage ------------------------------------------------------------------------------


def rank(cfg: Config, spark: SparkSession, as_of: dt.date) -> dict:
    """The ``hmrec rank`` stage (see the module notes): train, measure on the held-out buyers, register."""
    from hmrec.model import registry

    k = cfg.score.k
    cutoff = fit_cutoff(cfg, as_of)
    rc = cfg.rank
    with stage(STAGE) as summary:
        summary["as_of"], summary["fit_cutoff"] = as_of.isoformat(), cutoff.isoformat()
        version = registry.latest_version(cfg, as_of, role="serve")
        if version is None:
            raise HmrecError(f"no served model version for {as_of} to attach the ranker to: run `hmrec train --as-of {as_of}`")
        week = week_frames(cfg, spark, as_of)
        if week is None:
            log(STAGE, f"{tables.VALIDATION} has no purchase for {as_of}: no week to train a ranker on, the blend "
                       f"is served")
            summary.update(model_version=version, skipped="no validation week")
            return dict(summary)
        actual, train, valid = week.actual, week.train, week.valid
        trained = train_ranker(train, valid, cfg)
        summary.update(train_rows=trained.train_rows, train_groups=trained.train_groups,
                       best_iteration=trained.best_iteration, train_s=trained.seconds)

        # the validation figures: every held-out buyer of the week, the ranker's list against the blend's
        actual = actual[held_out(actual["customer_idx"].to_numpy(), rc.valid_share, rc.seed)]
        actual = actual.sort_values("customer_idx").reset_index(drop=True)
        figures: dict = {"users": int(len(actual))}
        active: dict = {"chosen": active_days_of(cfg, None), "why": "no held-out buyer to choose on"}
        if len(actual):
            ids = F.broadcast(spark.createDataFrame(actual[["customer_idx"]]))
            users = (storage.read_as_of(spark, cfg, tables.USER_FEATURES, cutoff).join(ids, "customer_idx")
                     .withColumn("segment", segments.age_segment(F.col("age_bucket"), cfg.features.age_buckets))
                     .toPandas().sort_values("customer_idx").reset_index(drop=True))
            users = actual[["customer_idx"]].merge(users, on="customer_idx", how="left")
            blend, ctx, plans = blend_on(cfg, spark, as_of, users)
            truth = pad_lists(actual["actual"].tolist())
            ranked = ranked_for(users, valid, trained.booster, ctx, plans["cold"].fallback, k)
            days = segments.days_since_last(users["days_since_last_log"].to_numpy(dtype=np.float64, na_value=np.nan))
            days = np.where(users["n_purchases"].to_numpy(dtype=np.float64, na_value=0) > 0, days, np.nan)
            fallback, _ = popular_lists(ctx, users["segment"], plans["cold"].fallback, k)
            chosen, maps, why = choose_active_days(ranked, fallback, days, truth, k, cfg.candidates.active_days,
                                                   cfg.candidates.active_max_loss)
            active = {"chosen": chosen, "why": why, f"map@{k}": {str(w): round(m, 6) for w, m in maps.items()},
                      "share_of_buyers": round(float(np.mean(days <= chosen)) if chosen else 1.0, 6)}
            ranked = active_lists(ranked, fallback, days, chosen)  # the figures are those of the served lists
            who = f"customers who bought within {chosen} days" if chosen else "every customer with a purchase"
            log(STAGE, f"served candidates for {who} ({why}); held-out MAP@{k} with candidates for buyers within "
                       + ", ".join(f"{w} days {m:.4f}" for w, m in maps.items() if w) + f", for all {maps[0]:.4f}")
            figures["ranker"] = _means(ranked, truth, k)
            figures["blend"] = _means(blend, truth, k)
            # the global popularity list at the fit cutoff (the scoring context's row 0), so the gate can
            # judge the ranker's lift over popularity on the same buyers
            popular = np.tile(ctx.fill_idx[0, :k], (len(actual), 1))
            figures["popularity"] = _means(popular, truth, k)
            group = segments.history_groups(users["n_purchases"].to_numpy(dtype=np.float64, na_value=0), days,
                                            cfg.evaluate.lapsed_days)
            figures.update(list_figures({"ranker": ranked, "blend": blend, "popularity": popular}, truth, group, k))
            log(STAGE, f"held-out buyers of the validation week ({len(actual):,}): ranker map@{k} "
                       f"{figures['ranker'][f'map@{k}']:.4f} recall@{k} {figures['ranker'][f'recall@{k}']:.4f}; "
                       f"blend map@{k} {figures['blend'][f'map@{k}']:.4f} recall@{k} {figures['blend'][f'recall@{k}']:.4f}")
        meta = {"features": trained.features, "library": "lightgbm", "objective": "lambdarank",
                "fit_cutoff": cutoff.isoformat(), "as_of": as_of.isoformat(), "label_week": [cutoff.isoformat(),
                (as_of - dt.timedelta(days=1)).isoformat()], "train_rows": trained.train_rows,
                "train_groups": trained.train_groups, "best_iteration": trained.best_iteration,
                "importance_gain": trained.importance, "validation": figures, "active_days": active,
                "settings": {f"rank.{key}": getattr(rc, key) for key in rc.__dataclass_fields__}}
        save_ranker(cfg, version, trained, meta)
        mv = registry.client(cfg).get_model_version(cfg.paths.registered_model, version)
        registry.log_run_metrics(cfg, mv.run_id, {
            **{f"validation.{m}.{name}": v for m in ("ranker", "blend", "popularity")
               for name, v in figures.get(m, {}).items()},
            "ranker.train_rows": trained.train_rows, "ranker.best_iteration": trained.best_iteration,
            "ranker.train_s": trained.seconds, "ranker.active_days": active["chosen"]})
        summary["model_version"] = version
        summary["active_days"] = active["chosen"]
        for m in ("ranker", "blend"):
            if m in figures:
                summary[f"{m}_map@{k}"] = figures[m][f"map@{k}"]
                summary[f"{m}_recall@{k}"] = figures[m][f"recall@{k}"]
        summary["top_features"] = ",".join(list(trained.importance)[:5])
    return dict(summary, validation=figures)


def ranked_for(users: pd.DataFrame, cands: pd.DataFrame, booster: object, ctx, fallback: str, k: int) -> np.ndarray:
    """(B, k) article_idx: each row of ``users`` its ranked candidates of ``cands``, filled from its
    popularity list in ``ctx`` (a scoring context); customers without candidates get the list alone."""
    customers, idx, score, src = top_lists(cands, predict(booster, cands), k)
    at = pd.Series(np.arange(len(customers)), index=customers)
    pos = users["customer_idx"].map(at).to_numpy()
    have = ~pd.isna(pos)
    full = np.full((len(users), k), -1, dtype=np.int64)
    full_score = np.zeros((len(users), k))
    full_src = np.full((len(users), k), "", dtype=object)
    p = pos[have].astype(np.int64)
    full[have], full_score[have], full_src[have] = idx[p], score[p], src[p]
    rows = fallback_rows(ctx, users["segment"].fillna(segments.UNKNOWN_SEGMENT), fallback)
    out, _, _ = filled_lists(full, full_score, full_src, ctx.fill_idx[rows], ctx.fill_score[rows], k)
    return out


def popular_lists(ctx, segment: pd.Series, fallback: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, k) article_idx and scores: the popularity list scoring gives a customer without candidates,
    for customers of age ``segment`` (B,), from ``ctx`` (a scoring context)."""
    rows = fallback_rows(ctx, segment.fillna(segments.UNKNOWN_SEGMENT), fallback)
    b = len(segment)
    idx, score, _ = filled_lists(np.full((b, 0), -1, np.int64), np.zeros((b, 0)), np.zeros((b, 0), dtype=object),
                                 ctx.fill_idx[rows], ctx.fill_score[rows], k)
    return idx, score


# ---- which customers get served candidates -------------------------------------------------

# The windows candidates.active_days: auto chooses from, shortest first; 0 (every customer with a
# purchase) is always measured and always allowed.
ACTIVE_CHOICES = (28, 56, 91, 182, 365, 0)


def active_lists(ranked: np.ndarray, fallback: np.ndarray, days: np.ndarray, window: int) -> np.ndarray:
    """The (B, k) lists served when only customers whose last purchase was at most ``window`` days
    before the cutoff get candidates (0: every customer): ``ranked`` for them, ``fallback`` (the
    popularity list scoring gives a customer without candidates) for the others. ``days`` (B,) counts
    days since each customer's last purchase (NaN: none, so no candidates either way)."""
    if window == 0:
        return ranked
    lapsed = ~(np.asarray(days, dtype=np.float64) <= window)
    return np.where(lapsed[:, None], fallback, ranked)


def choose_active_days(ranked: np.ndarray, fallback: np.ndarray, days: np.ndarray, truth: np.ndarray, k: int,
                       setting: int | str, max_loss: float) -> tuple[int, dict[int, float], str]:
    """``candidates.active_days`` for the served candidates, with the held-out MAP@K of each window
    measured (window -> MAP@K) and why it was chosen. ``auto``: the shortest of :data:`ACTIVE_CHOICES`
    whose MAP@K is at least (1 - ``max_loss``) times the MAP@K with candidates for every customer
    (fewer customers' candidates to make, rank and store, for at most that share of the held-out MAP@K);
    a number is kept as it is, and measured."""
    windows = ACTIVE_CHOICES if setting == AUTO else tuple(dict.fromkeys((int(setting), 0)))
    maps = {w: float(row_metrics(active_lists(ranked, fallback, days, w), truth, k)[f"map@{k}"].mean())
            if len(ranked) else 0.0 for w in windows}
    if setting != AUTO:
        return int(setting), maps, "set"
    floor = maps[0] * (1.0 - max_loss)
    chosen = next(w for w in ACTIVE_CHOICES if maps[w] >= floor)
    return chosen, maps, f"the shortest window within {max_loss:g} of every customer's MAP@{k} {maps[0]:.4f}"


def active_days_of(cfg: Config, meta: dict | None) -> int:
    """The window the served candidates use: ``candidates.active_days`` when it is a number, else the
    rank stage's choice in the ranker's ``meta``; 0 (every customer) when there is neither."""
    setting = cfg.candidates.active_days
    if setting != AUTO:
        return int(setting)
    return int((meta or {}).get("active_days", {}).get("chosen", 0))


def validation_maps(cfg: Config, version: str) -> dict[str, float] | None:
    """The rank stage's MAP@K of the ranker, the blend and global popularity on the validation week's
    held-out buyers, as it logged them on the version's MLflow run (``popularity`` is absent for versions
    ranked before it was measured), with ``users``; None when the ranker and blend were not measured."""
    from hmrec.model import registry

    c = registry.client(cfg)
    metrics = c.get_run(c.get_model_version(cfg.paths.registered_model, str(version)).run_id).data.metrics
    k = cfg.score.k
    out = {m: metrics.get(registry.metric_key(f"validation.{m}.map@{k}")) for m in ("ranker", "blend", "popularity")}
    if out["ranker"] is None or out["blend"] is None:
        return None
    users = metrics.get(registry.metric_key("validation.ranker.users"))
    return {**{m: float(v) for m, v in out.items() if v is not None}, **({"users": int(users)} if users else {})}


def served_list(cfg: Config, version: str) -> tuple[str, dict[str, float] | None]:
    """Which list scoring serves for model version ``version`` under ``score.method: ranker``, with the
    :func:`validation_maps` behind the choice: ``no ranker`` (the version has none: the blend), ``blend``
    (the ranker was worse on the validation week) or ``ranker``."""
    if not has_ranker(cfg, version):
        return "no ranker", None
    maps = validation_maps(cfg, version)
    return ("ranker" if serves_ranker(maps) else "blend"), maps


def serves_ranker(maps: dict[str, float] | None) -> bool:
    """Whether scoring serves the ranker's lists, given its :func:`validation_maps`: when they were not
    measured, or when its MAP@K on the held-out buyers is at least the blend's (a choice made on the
    validation week, as the blend's recipes are)."""
    return maps is None or maps["ranker"] >= maps["blend"]
