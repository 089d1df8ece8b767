"""``python -m hmrec.bench rankers``: LightGBM and XGBoost ranking the same candidates of one validation week.

    python -m hmrec.bench rankers --scale 0.1 --as-of 2020-09-16 --set paths.lakehouse=bench/out/lake-bt-scale0.1

Reads the rows the rank stage trains on at ``--as-of`` (the fit cutoff's
candidates, labelled with the validation week's purchases, split by customer
into training rows and held-out buyers: :func:`hmrec.rank.ranker.week_frames`),
so the lakehouse must already hold ``hmrec candidates --as-of D --role fit``.
Each library is trained on the same training rows with the same learning
rate, leaves, rounds and early stopping on the held-out buyers' NDCG@12, on
``rank.threads`` threads (``lightgbm-first``: LightGBM on the features before
:data:`hmrec.rank.sources.ADDED_FEATURES`), and its lists of those buyers' candidates (no
popularity fill, so only the ranking differs) are judged on their purchases
of the validation week: MAP@12 and Recall@12. The holdout week is never read.

XGBoost is not a dependency of hmrec (the served ranker is LightGBM's): this
benchmark needs ``pip install 'xgboost>=3.2,<3.3'`` (the ``bench`` extra).
"""
from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd

from hmrec.bench.common import bench_cfg, report
from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.evaluation.metrics import row_metrics
from hmrec.lake.spark import get_spark
from hmrec.rank import sources as S
from hmrec.rank.ranker import (NDCG_AT, WeekFrames, booster_features, held_out, training_groups, top_lists, train_ranker,
                               week_frames)
from hmrec.serve.blend import pad_lists


def held_out_figures(week: WeekFrames, pred: np.ndarray, cfg: Config) -> dict[str, float]:
    """MAP@K and Recall@K of the held-out buyers (the rank stage's share, every one of them) with their
    candidates ranked by ``pred`` (one score per row of ``week.valid``); a buyer without candidates counts
    with an empty list."""
    k = cfg.score.k
    buyers = week.actual[held_out(week.actual["customer_idx"].to_numpy(), cfg.rank.valid_share, cfg.rank.seed)]
    customers, idx, _, _ = top_lists(week.valid, pred, k)
    at = pd.Series(np.arange(len(customers)), index=customers)
    pos = buyers["customer_idx"].map(at).to_numpy()
    lists = np.full((len(buyers), k), -1, dtype=np.int64)
    have = ~pd.isna(pos)
    lists[have] = idx[pos[have].astype(np.int64)]
    m = row_metrics(lists, pad_lists(buyers["actual"].tolist()), k)
    return {f"map@{k}": round(float(m[f"map@{k}"].mean()), 5), f"recall@{k}": round(float(m[f"recall@{k}"].mean()), 5),
            "buyers": int(len(buyers))}


def _xgboost(objective: str, week: WeekFrames, cfg: Config) -> tuple[object, int, float]:
    """XGBoost with ``objective`` on the week's training rows, early-stopped like LightGBM:
    (booster, best round, seconds)."""
    try:
        import xgboost as xgb
    except ImportError:
        raise HmrecError("this benchmark compares against XGBoost: pip install 'xgboost>=3.2,<3.3' "
                         "(pip install -e '.[bench]')") from None
    rc = cfg.rank
    features = list(S.FEATURES)
    train, valid = training_groups(week.train), training_groups(week.valid)
    t0 = time.perf_counter()
    dtrain = xgb.DMatrix(train[features].to_numpy(np.float64), label=train["label"].to_numpy(),
                         qid=train["customer_idx"].to_numpy(), feature_names=features)
    dvalid = xgb.DMatrix(valid[features].to_numpy(np.float64), label=valid["label"].to_numpy(),
                         qid=valid["customer_idx"].to_numpy(), feature_names=features)
    params = {"objective": objective, "eval_metric": f"ndcg@{NDCG_AT}", "eta": rc.learning_rate,
              "tree_method": "hist", "grow_policy": "lossguide", "max_leaves": rc.num_leaves, "max_depth": 0,
              "min_child_weight": 1.0, "nthread": rc.threads, "seed": rc.seed,
              "lambdarank_pair_method": "topk", "lambdarank_num_pair_per_sample": 20}
    booster = xgb.train(params, dtrain, num_boost_round=rc.max_rounds, evals=[(dvalid, "valid")],
                        early_stopping_rounds=rc.early_stopping, verbose_eval=False)
    return booster, int(booster.best_iteration) + 1, round(time.perf_counter() - t0, 2)


def bench_rankers(scale: float, overrides: list[str], as_of: dt.date, libraries: list[str]) -> None:
    """Train every library of ``libraries`` on the rows of ``as_of``'s validation week and print each one's
    training time, rounds and held-out MAP@12 / Recall@12."""
    cfg = bench_cfg(scale, overrides)
    spark = get_spark(cfg)
    week = week_frames(cfg, spark, as_of)
    if week is None:
        raise HmrecError(f"gold/validation has no purchase for {as_of} in {cfg.lakehouse}: run "
                         f"`hmrec run --as-of {as_of}` there first")
    rows: list[dict] = []
    for library in libraries:
        if library in ("lightgbm", "lightgbm-first"):
            # lightgbm-first: the same ranker on the features the candidates had before
            # hmrec.rank.sources.ADDED_FEATURES, so their worth is measured on the same rows
            features = S.FIRST_FEATURES if library == "lightgbm-first" else S.FEATURES
            trained = train_ranker(week.train, week.valid, cfg, features=features)
            booster, rounds, seconds = trained.booster, trained.best_iteration, trained.seconds
            pred = np.asarray(booster.predict(week.valid[booster_features(booster)].to_numpy(np.float64),
                                              num_iteration=rounds))
            name = f"lightgbm lambdarank, {len(features)} features"
        elif library.startswith("xgboost"):
            objective = {"xgboost": "rank:ndcg", "xgboost-ndcg": "rank:ndcg", "xgboost-map": "rank:map"}.get(library)
            if objective is None:
                raise HmrecError(f"--libraries {library}: give lightgbm, lightgbm-first, xgboost-ndcg or xgboost-map")
            import xgboost as xgb

            booster, rounds, seconds = _xgboost(objective, week, cfg)
            pred = booster.predict(xgb.DMatrix(week.valid[list(S.FEATURES)].to_numpy(np.float64),
                                               feature_names=list(S.FEATURES)), iteration_range=(0, rounds))
            name = f"xgboost {objective}"
        else:
            raise HmrecError(f"--libraries {library}: give lightgbm, lightgbm-first, xgboost-ndcg or xgboost-map")
        figures = held_out_figures(week, np.asarray(pred, dtype=np.float64), cfg)
        row = {"stage": name, "n": int(len(week.train)), "seconds": seconds, "rounds": rounds, **figures}
        print(f"[bench] {row}", flush=True)
        rows.append(row)
    report("rankers", scale, rows, {"as_of": as_of.isoformat(), "lakehouse": str(cfg.lakehouse),
                                    "threads": cfg.rank.threads, "overrides": overrides,
                                    "judged_on": "held-out buyers of the validation week before the as-of"})
