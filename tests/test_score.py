"""Batch scoring: array blending with hand-made cases, and the Spark job on a planted lakehouse.

The planted world: 40 articles in 4 groups (group = article_idx % 4), each
article a unit vector on its group's axis, tilted a little so that within a
group a lower article_idx scores higher; a customer of group g is the unit
vector of axis g. So a customer's model list is known: g, g+4, g+8, ...
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from hmrec.lake import schemas, storage
from hmrec.errors import HmrecError
from hmrec.config import ConfigError
from hmrec.bench.serving import search_throughput
from hmrec.lake import tables
from hmrec.serve.blend import (
    MODEL,
    POPULAR,
    REPURCHASE,
    blend_batch,
    compact_left,
    drop_repeats,
    fill_lists,
    pad_lists,
    rows_isin,
)
from hmrec.serve.index import ShippedIndex, make_index, recall_vs_exact, search
from hmrec.serve.plans import ListPlan
from tests import planted
from tests.planted import GROUPS, N_ITEMS, aid, cid, item_vectors, planted_embedder
from hmrec.serve.score import ScoringContext, recent_purchases, score_customers, score_frame

AS_OF = dt.date(2020, 9, 16)
K = 4


def group_list(g: int, n: int = K, skip: tuple[int, ...] = ()) -> list[int]:
    return planted.group_list(g, n, skip)


# ---- pure array helpers ----------------------------------------------------------------


def test_pad_lists_pads_and_cuts():
    out = pad_lists([[3, 4, 5], None, [], [7]], 2)
    assert out.tolist() == [[3, 4], [-1, -1], [-1, -1], [7, -1]]
    assert pad_lists([[1], None, [2, 3, 4]]).tolist() == [[1, -1, -1], [-1, -1, -1], [2, 3, 4]]


def test_rows_isin_drop_repeats_and_compact_left():
    a = np.array([[1, 2, 3], [4, -1, 4]])
    b = np.array([[3, -1], [4, 9]])
    assert rows_isin(a, b).tolist() == [[False, False, True], [True, False, True]]
    assert drop_repeats(np.array([[5, 6, 5, 6, 7]])).tolist() == [[5, 6, -1, -1, 7]]
    keep = np.array([[False, True, True], [True, False, False]])
    idx, sc = compact_left(np.array([[10, 11, 12], [20, 21, 22]]), keep, 4, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert idx.tolist() == [[11, 12, -1, -1], [20, -1, -1, -1]]
    assert sc.tolist() == [[2.0, 3.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]]


def test_blend_reserves_repurchase_slots_sorts_by_score_and_fills_with_popular():
    cand = np.array([[10, 11, 12, 13, 14], [10, 11, 12, 13, 14], [-1, -1, -1, -1, -1]])
    cand_s = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]] * 2 + [[0.0] * 5])
    # Row 0: recent purchase 12 is also a candidate (kept once, as repurchase); 30 scores low.
    # Row 1: nothing bought recently; 11 and 13 were bought and are excluded.
    # Row 2: no model candidates at all: all popular.
    rep = np.array([[12, 30], [-1, -1], [-1, -1]])
    rep_s = np.array([[0.7, 0.1], [0.0, 0.0], [0.0, 0.0]])
    exclude = np.array([[-1], [11], [-1]])
    exclude = np.concatenate([exclude, np.array([[-1], [13], [-1]])], axis=1)
    fill = np.array([[10, 40, 41, 42, 43, 44, 45, 46]] * 3)
    fill_s = np.arange(8, 0, -1, dtype=float)[None].repeat(3, axis=0)

    idx, score, src = blend_batch(cand, cand_s, rep, rep_s, fill, fill_s, k=4, exclude=exclude)

    assert idx.tolist() == [[10, 11, 12, 30], [10, 12, 14, 40], [10, 40, 41, 42]]
    assert src.tolist() == [
        [MODEL, MODEL, REPURCHASE, REPURCHASE],
        [MODEL, MODEL, MODEL, POPULAR],
        [POPULAR] * 4,
    ]
    np.testing.assert_allclose(score[0], [0.9, 0.8, 0.7, 0.1])
    np.testing.assert_allclose(score[1], [0.9, 0.7, 0.5, 7.0])
    np.testing.assert_allclose(score[2], [8.0, 7.0, 6.0, 5.0])


def test_blend_repurchase_first_keeps_purchase_order_then_candidates_by_score():
    cand = np.array([[10, 11, 12, 13], [10, 11, 12, 13]])
    cand_s = np.array([[0.9, 0.8, 0.7, 0.6]] * 2)
    # Row 0: purchases in recency order 30 (low score) then 12 (also a candidate, kept once, as repurchase).
    # Row 1: one slot unused (-1), so three candidates follow the one purchase.
    rep = np.array([[30, 12], [31, -1]])
    rep_s = np.array([[0.1, 0.7], [0.2, 0.0]])
    fill = np.array([[40, 41, 42, 43, 44, 45, 46, 47]] * 2)
    fill_s = np.arange(8, 0, -1, dtype=float)[None].repeat(2, axis=0)

    idx, score, src = blend_batch(cand, cand_s, rep, rep_s, fill, fill_s, k=4, repurchase_first=True)

    assert idx.tolist() == [[30, 12, 10, 11], [31, 10, 11, 12]]
    assert src.tolist() == [[REPURCHASE, REPURCHASE, MODEL, MODEL], [REPURCHASE, MODEL, MODEL, MODEL]]
    np.testing.assert_allclose(score, [[0.1, 0.7, 0.9, 0.8], [0.2, 0.9, 0.8, 0.7]])
    # ranked by score instead, the same items interleave
    by_score, _, _ = blend_batch(cand, cand_s, rep, rep_s, fill, fill_s, k=4)
    assert by_score.tolist() == [[10, 11, 12, 30], [10, 11, 12, 31]]


def test_fill_lists_segment_then_global_then_catalogue():
    pop = pd.DataFrame(
        {
            "segment": ["global"] * 3 + ["age_25_34"] * 2,
            "rank": [1, 2, 3, 1, 2],
            "article_idx": [7, 8, 99, 8, 5],  # 99 is not in the catalogue
            "score": [30.0, 20.0, 10.0, 4.0, 3.0],
        }
    )
    names, idx, score = fill_lists(pop, np.arange(10), k=3)
    assert names == ["global", "age_25_34"]
    assert idx.tolist() == [[7, 8, 0, 1, 2, 3], [8, 5, 7, 0, 1, 2]]
    assert score.tolist() == [[30.0, 20.0, 0, 0, 0, 0], [4.0, 3.0, 30.0, 0, 0, 0]]
    with pytest.raises(HmrecError, match="fewer than score.k=12"):
        fill_lists(pop, np.arange(10), k=12)
    with pytest.raises(HmrecError, match="hmrec popularity"):
        fill_lists(pop[pop.segment != "global"], np.arange(10), k=3)


# ---- one batch, no Spark -----------------------------------------------------------------


def _context(cfg, embedder, repurchase_first: bool = False, plans: tuple | None = None, **overrides) -> ScoringContext:
    """A scoring context over the planted items; lapsed and active customers get the model's lists."""
    model = ListPlan("model", slots=overrides.get("repurchase_slots", 2), order="recency" if repurchase_first else "model")
    vectors = item_vectors()
    index = make_index("flat", vectors, cfg.index, ids=np.arange(N_ITEMS))
    pop = pd.DataFrame({"segment": ["global"] * 6, "rank": range(1, 7), "article_idx": [39, 38, 37, 36, 35, 34],
                        "score": [60.0, 50, 40, 30, 20, 10]})
    names, f_idx, f_score = fill_lists(pop, np.arange(N_ITEMS), K)
    fields = dict(
        embedder=embedder, index=ShippedIndex.of(index, embedder.version), dim=GROUPS, k=K, n_candidates=10,
        min_history=1, repurchase_slots=2, repurchase_column="last_articles", filter_bought=False,
        batch_size=8, plans=plans or (ListPlan("popular"), model, model),
        item_pos=np.arange(N_ITEMS), item_vectors=vectors, article_ids=np.array([aid(i) for i in range(N_ITEMS)], dtype=object),
        segment_names=names, fill_idx=f_idx, fill_score=f_score, model_version=embedder.version, as_of=AS_OF,
    )
    fields.update(overrides)
    return ScoringContext(**fields)


def _batch(rows: list[tuple[int, int, list[int]]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [cid(i) for i, _, _ in rows],
            "customer_idx": [i for i, _, _ in rows],
            "n_purchases": [n for _, n, _ in rows],
            # bought 5 days before the as-of (active), or never
            "days_since_last_log": [np.log1p(5.0 if n else 3650.0) for _, n, _ in rows],
            "last_articles": [np.array(last, dtype=np.int32) for _, _, last in rows],
            "segment": ["age_unknown"] * len(rows),
        }
    )


def test_score_frame_planted_lists(cfg):
    ctx = _context(cfg, planted_embedder(8))
    # customer 1 (group 1) bought article 2 (group 2) twice and 6: two repurchase slots.
    pdf = _batch([(1, 3, [2, 2, 6]), (2, 0, []), (3, 5, [])])
    out = score_frame(pdf, ctx)
    assert len(out) == 3 * K
    by = {c: g.sort_values("rank") for c, g in out.groupby("customer_id")}
    one = by[cid(1)]
    assert one["article_id"].tolist() == [aid(i) for i in [1, 5, 2, 6]]
    assert one["source"].tolist() == ["model", "model", "repurchase", "repurchase"]
    assert by[cid(2)]["article_id"].tolist() == [aid(i) for i in [39, 38, 37, 36]]
    assert set(by[cid(2)]["source"]) == {"popular"}
    assert by[cid(3)]["article_id"].tolist() == [aid(i) for i in group_list(3)]
    assert (out["model_version"] == "v1").all() and (out["as_of"] == AS_OF).all()
    assert out.groupby("customer_id")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()


def test_each_history_group_follows_its_own_plan(cfg):
    from hmrec.serve.plans import ListPlan as P

    pop = pd.DataFrame({"segment": ["global"] * 6 + ["age_25_34"] * 3, "rank": [*range(1, 7), 1, 2, 3],
                        "article_idx": [39, 38, 37, 36, 35, 34, 11, 12, 13], "score": [60.0, 50, 40, 30, 20, 10, 9, 8, 7]})
    names, f_idx, f_score = fill_lists(pop, np.arange(N_ITEMS), K)
    plans = (P("popular", fallback="segment"), P("popular", fallback="global"), P("model", slots=1, order="recency"))
    ctx = _context(cfg, planted_embedder(8), plans=plans, segment_names=names, fill_idx=f_idx, fill_score=f_score,
                   repurchase_slots=1)
    pdf = _batch([(1, 3, [6, 2]), (2, 4, [3]), (3, 0, [])])
    pdf.loc[1, "days_since_last_log"] = np.log1p(200.0)  # customer 2 lapsed (over 90 days)
    pdf["segment"] = "age_25_34"
    out = score_frame(pdf, ctx)
    by = {c: g.sort_values("rank") for c, g in out.groupby("customer_id")}
    # active: their latest purchase leads, then the model's nearest two of group 1
    assert by[cid(1)]["article_id"].tolist() == [aid(i) for i in [6, 1, 5, 9]]
    assert by[cid(1)]["source"].tolist() == ["repurchase", "model", "model", "model"]
    # lapsed: the global list; cold: their age segment's list, then the global one
    assert by[cid(2)]["article_id"].tolist() == [aid(i) for i in [39, 38, 37, 36]]
    assert by[cid(3)]["article_id"].tolist() == [aid(i) for i in [11, 12, 13, 39]]
    assert set(out[out.customer_id != cid(1)]["source"]) == {"popular"}


def test_unknown_repurchase_order_is_refused_when_the_config_loads(tmp_path):
    from conftest import make_cfg

    with pytest.raises(ConfigError, match="score.repurchase_order must be one of auto, recency, model, got 'newest'"):
        make_cfg(tmp_path / "lake", "score.repurchase_order=newest")


def test_score_frame_recent_purchases_first(cfg):
    ctx = _context(cfg, planted_embedder(8), repurchase_first=True)
    # customer 1 bought 2 (latest, twice) then 6: those two lead, the model's best two follow
    out = score_frame(_batch([(1, 3, [2, 2, 6])]), ctx).sort_values("rank")
    assert out["article_id"].tolist() == [aid(i) for i in [2, 6, 1, 5]]
    assert out["source"].tolist() == ["repurchase", "repurchase", "model", "model"]


def test_score_frame_filter_bought_and_short_model_lists_fill_with_popular(cfg):
    ctx = _context(cfg, planted_embedder(8), repurchase_slots=0, filter_bought=True)
    bought = group_list(3, n=9)  # 9 of group 3's 10 articles: one model item survives
    out = score_frame(_batch([(3, 9, bought), (1, 1, [1])]), ctx)
    three = out[out.customer_id == cid(3)].sort_values("rank")
    # The survivor, 39, is also the most popular article: the fill skips it.
    assert three["article_id"].tolist() == [aid(i) for i in [39, 38, 37, 36]]
    assert three["source"].tolist() == ["model", "popular", "popular", "popular"]
    one = out[out.customer_id == cid(1)].sort_values("rank")
    assert one["article_id"].tolist() == [aid(i) for i in group_list(1, skip=(1,))]


def test_score_frame_refuses_nan_user_embeddings(cfg):
    emb = planted_embedder(8)
    emb.user_vectors[5] = np.nan
    with pytest.raises(HmrecError, match=cid(5)):
        score_frame(_batch([(4, 2, []), (5, 2, [])]), _context(cfg, emb))


def test_search_throughput_reports_every_kind(cfg):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(500, 8)).astype(np.float32)
    users = rng.normal(size=(50, 8)).astype(np.float32)
    # One list probed of the twelve: an approximate search, whose recall is well below 1.
    index_cfg = dataclasses.replace(cfg.index, ivf_nprobe=1)
    out = search_throughput(items, users, ["flat", "ivf"], 5, index_cfg)
    # The exact top 5 by numpy, independent of FAISS: the flat index must find all of it, and
    # each kind's reported recall must be that kind's recall against it.
    truth = np.argsort(-(users @ items.T), axis=1)[:, :5]
    _, flat_ids = search(make_index("flat", items, index_cfg), users, 5)
    _, ivf_ids = search(make_index("ivf", items, index_cfg), users, 5)
    assert out["flat"]["recall@5"] == recall_vs_exact(flat_ids, truth) == 1.0
    assert out["ivf"]["recall@5"] == pytest.approx(recall_vs_exact(ivf_ids, truth), abs=1e-4)
    assert 0.0 < out["ivf"]["recall@5"] <= 1.0
    assert out["ivf"]["queries_per_s"] > 0


# ---- the Spark job -------------------------------------------------------------------------


def user_rows(specs: list[tuple[int, int, int, list[int]]]) -> list[dict]:
    """gold/user_features rows from (customer index, n_purchases, age_bucket, last_articles)."""
    rows = []
    for i, n, bucket, last in specs:
        row = {f.name: None for f in schemas.USER_FEATURES.fields}
        row.update({c: 0 for c in schemas.USER_CATEGORICALS})
        row.update({c: 0.0 for c in schemas.USER_NUMERICS})
        row.update(as_of=AS_OF, customer_id=cid(i), customer_idx=i, n_purchases=n, age=30, age_bucket=bucket,
                   category_shares=[0.0], last_articles=list(last))
        rows.append(row)
    return rows


def write_planted_lakehouse(spark, cfg, n_users: int, users: list[dict], extra_customers: list[int] = (),
                            train: list[tuple[int, int, dt.date]] = ()) -> None:
    """user_features, customers, popularity, item embeddings (+ optional train) for the planted world."""
    storage.write_partition(spark.createDataFrame(users, schemas.USER_FEATURES), cfg, tables.USER_FEATURES, AS_OF)
    customers = [(r["customer_id"], None, None, "ACTIVE", "NONE", 30, "p") for r in users]
    customers += [(cid(i), None, None, "ACTIVE", "NONE", 30, "p") for i in extra_customers]
    storage.write(spark.createDataFrame(customers, schemas.CUSTOMERS), cfg, tables.CUSTOMERS)
    pop = [(AS_OF, "global", r + 1, aid(a), a, float(100 - r)) for r, a in enumerate([39, 38, 37, 36, 35, 34, 33, 32])]
    pop += [(AS_OF, "age_25_34", r + 1, aid(a), a, float(50 - r)) for r, a in enumerate([20, 21, 22, 23, 24])]
    storage.write_partition(spark.createDataFrame(pop, schemas.POPULARITY), cfg, tables.POPULARITY, AS_OF)
    vec = item_vectors()
    emb = [(AS_OF, "v1", aid(i), i, vec[i].tolist()) for i in range(N_ITEMS)]
    storage.write_partition(spark.createDataFrame(emb, schemas.ITEM_EMBEDDINGS), cfg, tables.ITEM_EMBEDDINGS, AS_OF)
    if train:
        rows = [(d, cid(c), aid(a), 0.01, 1, c, a, AS_OF) for c, a, d in train]
        storage.write_partition(spark.createDataFrame(rows, schemas.SPLIT_ROWS), cfg, tables.TRAIN, AS_OF)


def _lists(pdf: pd.DataFrame) -> dict[str, tuple[list[str], list[str]]]:
    out = {}
    for c, g in pdf.sort_values(["customer_id", "rank"]).groupby("customer_id"):
        out[c] = (g["article_id"].tolist(), g["source"].tolist())
    return out


def test_every_customer_gets_exactly_k_with_planted_answers_and_failed_refresh_keeps_old_table(spark, tmp_path):
    from conftest import make_cfg

    cfg = make_cfg(tmp_path / "lake", f"score.k={K}", "index.candidates=10", "score.min_history=2",
                   "score.repurchase_slots=1", "score.repurchase_days=28", "score.repurchase_order=model",
                   "score.batch_size=3")
    n_users = 12
    specs = [(i, 5, 1, []) for i in range(8)]  # model customers, groups 0..3
    specs[1] = (1, 5, 1, [2, 6])  # bought 2 (3 days ago) and 6 (40 days ago): only 2 is recent
    specs += [(8, 1, 2, [9]), (9, 0, 2, []), (10, 0, 0, [])]  # below min_history / never bought
    train = [(1, 2, AS_OF - dt.timedelta(days=3)), (1, 6, AS_OF - dt.timedelta(days=40)), (8, 9, AS_OF - dt.timedelta(days=2))]
    write_planted_lakehouse(spark, cfg, n_users, user_rows(specs), extra_customers=[11], train=train)
    embedder = planted_embedder(n_users)
    index = make_index("flat", item_vectors(), cfg.index, ids=np.arange(N_ITEMS))

    summary = score_customers(cfg, spark, AS_OF, embedder, index)

    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS).toPandas()
    assert summary["customers"] == 12 and summary["rows"] == 12 * K
    assert sorted(recs["customer_id"].unique()) == sorted(cid(i) for i in range(12))
    per = recs.groupby("customer_id")
    assert (per["article_id"].nunique() == K).all()
    assert (per["rank"].apply(sorted).map(lambda r: r == list(range(1, K + 1)))).all()
    lists = _lists(recs)
    for i in [0, 2, 3, 4, 5, 6, 7]:
        assert lists[cid(i)] == ([aid(a) for a in group_list(i % GROUPS)], ["model"] * K)
    # Recent purchase 2 takes the one repurchase slot; it scores 0 for a group-1 customer, so ranked by model
    # score it comes last.
    assert lists[cid(1)] == ([aid(a) for a in [1, 5, 9, 2]], ["model"] * 3 + ["repurchase"])
    age_25_34 = ([aid(a) for a in [20, 21, 22, 23]], ["popular"] * K)
    assert lists[cid(8)] == age_25_34 and lists[cid(9)] == age_25_34
    global_top = ([aid(a) for a in [39, 38, 37, 36]], ["popular"] * K)
    assert lists[cid(10)] == global_top  # age unknown: no segment list
    assert lists[cid(11)] == global_top  # in bronze/customers only
    assert summary["rows_popular"] == 4 * K and summary["rows_repurchase"] == 1
    before = storage.version(spark, cfg, tables.RECOMMENDATIONS)

    def fail_on_second_batch(i: int) -> None:
        if i == 1:
            raise RuntimeError("injected failure in the middle of scoring")

    with pytest.raises(Exception, match="injected failure"):
        score_customers(cfg, spark, AS_OF, embedder, index, on_batch=fail_on_second_batch)

    assert storage.version(spark, cfg, tables.RECOMMENDATIONS) == before
    after = storage.read(spark, cfg, tables.RECOMMENDATIONS).toPandas()
    pd.testing.assert_frame_equal(
        after.sort_values(["customer_id", "rank"]).reset_index(drop=True),
        recs.sort_values(["customer_id", "rank"]).reset_index(drop=True),
    )


def test_recent_purchases_are_distinct_most_recent_first_within_the_window(spark):
    d = AS_OF - dt.timedelta(days=1)
    rows = [(d - dt.timedelta(days=5), 1, 10), (d, 1, 11), (d - dt.timedelta(days=5), 1, 10), (d - dt.timedelta(days=2), 1, 12),
            (d - dt.timedelta(days=60), 1, 13), (AS_OF, 1, 14), (d, 2, 20)]
    train = spark.createDataFrame([(t, cid(c), aid(a), 0.01, 1, c, a, AS_OF) for t, c, a in rows], schemas.SPLIT_ROWS)
    out = {r["customer_idx"]: r["recent_articles"] for r in recent_purchases(train, AS_OF, 28, 12).collect()}
    assert out == {1: [11, 12, 10], 2: [20]}
