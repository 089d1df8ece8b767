"""The two-stage list: each candidate source and feature on hand-made frames, leakage, the ranker, the lists."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from hmrec.rank import sources as S
from hmrec.rank.ranker import filled_lists, held_out, list_figures, predict, sample_negatives, top_lists, train_ranker
from tests.conftest import make_cfg

A, A2, B, C = 10, 11, 20, 30  # article_idx; A and A2 share product_code 100


def _items() -> S.ItemTable:
    stats = pd.DataFrame({
        "article_idx": [A, A2, B, C],
        "product_code": [100, 100, 200, 300],
        "product_type": [1, 1, 2, 1],
        "colour": [5, 6, 5, 7],
        "index_group": [1, 1, 1, 2],
        "sales_1d": [1.0, 0.0, 2.0, 0.0],
        "sales_7d": [3.0, 2.0, 4.0, 0.0],
        "sales_28d": [5.0, 9.0, 4.0, 1.0],
        "trend": [1.0, 0.5, 2.0, 0.0],
        "trending_score": [1.0, 0.5, 3.0, 0.0],
        "price_mean": [0.02, 0.02, 0.04, 0.01],
        "days_since_first_sale": [30.0, 40.0, 10.0, 100.0],
    })
    return S.item_table(stats)


def _users() -> pd.DataFrame:
    # customer 1 bought A twice (1 and 15 days before the cutoff) and B once (3 days before);
    # customer 2 bought C once; a purchase on the cutoff day (days 0) must be ignored
    return pd.DataFrame({
        "customer_idx": [1, 2],
        "customer_id": ["c1", "c2"],
        "segment": ["age_25_34", "age_unknown"],
        "age": [30, None],
        "hist_items": [[A, B, A, C], [C]],
        "hist_days": [[1, 3, 15, 0], [8]],
        "hist_price": [[0.02, 0.04, 0.01, 0.5], [0.01]],
    })


def test_history_drops_purchases_on_or_after_the_cutoff():
    hist = S.history_frame(_users())
    assert (hist["days"] >= 1).all()
    assert hist[hist["customer_idx"] == 1]["article_idx"].tolist() == [A, B, A]  # C of days 0 is gone


def test_repurchase_source_scores_a_decayed_count():
    rep = S.repurchase_source(S.history_frame(_users()), n=10)
    one = rep[rep["customer_idx"] == 1].set_index("article_idx")
    assert one.loc[A, "score"] == pytest.approx(0.5 ** (1 / 14) + 0.5 ** (15 / 14))
    assert one.loc[B, "score"] == pytest.approx(0.5 ** (3 / 14))
    assert one.loc[A, "rank"] == 1 and one.loc[B, "rank"] == 2
    assert C not in one.index  # bought on the cutoff day only
    assert S.repurchase_source(S.history_frame(_users()), n=1).groupby("customer_idx").size().max() == 1


def test_colour_source_proposes_the_other_articles_of_a_bought_product():
    hist = S.history_frame(_users())
    rep = S.repurchase_source(hist, n=10)
    col = S.colour_source(rep, hist, _items(), n=5)
    one = col[col["customer_idx"] == 1]
    assert one["article_idx"].tolist() == [A2]  # A itself was bought; B's product has no other article
    assert one["score"].iloc[0] == pytest.approx(rep.set_index(["customer_idx", "article_idx"]).loc[(1, A), "score"] * 10.0)
    assert col[col["customer_idx"] == 2].empty


def test_list_source_gives_the_segments_list_and_else_the_global_one():
    lists = {"global": (np.array([C, B]), np.array([9.0, 8.0])), "age_25_34": (np.array([A2, A, B]), np.array([3.0, 2.0, 1.0]))}
    out = S.list_source(_users(), lists, "segment", 2, "global")
    assert out[out["customer_idx"] == 1]["article_idx"].tolist() == [A2, A]
    assert out[out["customer_idx"] == 2]["article_idx"].tolist() == [C, B]
    assert out[out["customer_idx"] == 2]["rank"].tolist() == [1, 2]


def test_retrieval_source_keeps_neighbours_in_order_and_drops_empty_slots():
    out = S.retrieval_source(np.array([1, 2]), np.array([[0.9, 0.5, 0.1], [0.8, 0.0, 0.0]]),
                             np.array([[B, A, C], [C, -1, -1]]))
    assert out[out["customer_idx"] == 1]["article_idx"].tolist() == [B, A, C]
    assert out[out["customer_idx"] == 2]["article_idx"].tolist() == [C]


def test_union_carries_every_sources_score_and_rank_and_nan_where_absent():
    hist = S.history_frame(_users())
    rep = S.repurchase_source(hist, n=10)
    ret = S.retrieval_source(np.array([1]), np.array([[0.9, 0.5]]), np.array([[A, C]]))
    wide = S.union_sources({"retrieval": ret, "repurchase": rep}).set_index(["customer_idx", "article_idx"])
    assert wide.loc[(1, A), "retrieval_rank"] == 1 and wide.loc[(1, A), "repurchase_rank"] == 1
    assert np.isnan(wide.loc[(1, C), "repurchase_rank"]) and wide.loc[(1, C), "retrieval_rank"] == 2
    assert np.isnan(wide.loc[(1, B), "retrieval_score"])
    assert np.isnan(wide.loc[(1, A), "colour_rank"])  # a source that proposed nothing


def test_features_have_their_known_values():
    users = _users()
    hist = S.history_frame(users)
    cands = S.union_sources({"retrieval": S.retrieval_source(np.array([1]), np.array([[0.9, 0.5, 0.2]]),
                                                             np.array([[A, A2, C]]))})
    f = S.add_features(cands, hist, users, _items()).set_index("article_idx")
    assert f.loc[A, "times_bought"] == 2 and f.loc[A, "days_since_bought"] == 1
    assert f.loc[A2, "times_bought"] == 0 and np.isnan(f.loc[A2, "days_since_bought"])
    assert f.loc[A2, "same_product_bought"] == 2  # two purchases of product 100 (A twice)
    assert f.loc[C, "same_product_bought"] == 0  # the purchase of C on the cutoff day does not count
    assert f.loc[A, "share_product_type"] == pytest.approx(2 / 3)  # A, A of type 1; B of type 2
    assert f.loc[C, "share_product_type"] == pytest.approx(2 / 3)
    assert f.loc[A2, "share_colour"] == 0 and f.loc[A, "share_colour"] == pytest.approx(1.0)  # colour 5: A, A, B
    assert f.loc[C, "share_index_group"] == 0
    assert f.loc[A, "user_n_purchases"] == 3 and f.loc[A, "user_days_since_last"] == 1
    assert f.loc[A, "user_mean_price"] == pytest.approx((0.02 + 0.04 + 0.01) / 3)
    assert f.loc[A, "user_age"] == 30
    assert f.loc[A2, "item_sales_28d"] == 9 and f.loc[A2, "price_vs_user"] == pytest.approx(0.02 / (0.07 / 3))
    assert f.loc[A, "n_sources"] == 1
    assert list(f.reset_index()[list(S.FEATURES)].columns) == list(S.FEATURES)


def test_item_stats_and_histories_read_only_rows_before_the_cutoff(spark):
    from hmrec.rank.candidates import item_stats, user_histories

    cutoff = dt.date(2020, 9, 9)
    day = lambda n: cutoff - dt.timedelta(days=n)  # noqa: E731
    rows = [(day(1), 1, A, 0.02), (day(5), 1, A, 0.02), (day(20), 2, A, 0.03), (day(2), 2, B, 0.04)]
    later = [(cutoff, 1, A, 0.5), (day(-3), 2, B, 0.5), (day(-1), 1, C, 0.5)]  # the label week and after
    schema = "t_dat date, customer_idx int, article_idx int, price double"
    before = spark.createDataFrame(rows, schema)
    both = spark.createDataFrame(rows + later, schema)
    a = item_stats(before, cutoff).toPandas().sort_values("article_idx").reset_index(drop=True)
    b = item_stats(both, cutoff).toPandas().sort_values("article_idx").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    got = a.set_index("article_idx")
    assert got.loc[A, "sales_1d"] == 1 and got.loc[A, "sales_7d"] == 2 and got.loc[A, "sales_28d"] == 3
    assert got.loc[A, "trend"] == pytest.approx(2 / (1 / 3 + 1))
    assert got.loc[A, "days_since_first_sale"] == 20 and C not in got.index
    h = user_histories(both, cutoff, 0).toPandas().set_index("customer_idx")
    assert list(h.loc[1, "hist_items"]) == [A, A] and list(h.loc[1, "hist_days"]) == [1, 5]
    assert list(h.loc[2, "hist_items"]) == [B, A]
    assert user_histories(both, cutoff, 3).toPandas().set_index("customer_idx").loc[2, "hist_items"].tolist() == [B]


def _toy(n_customers: int, seed: int) -> pd.DataFrame:
    """20 candidates per customer, noise features; the 2 with the highest times_bought are the positives."""
    rng = np.random.default_rng(seed)
    rows = n_customers * 20
    f = pd.DataFrame(rng.normal(size=(rows, len(S.FEATURES))), columns=list(S.FEATURES))
    f["customer_idx"] = np.repeat(np.arange(n_customers), 20)
    f["article_idx"] = np.tile(np.arange(20), n_customers)
    f["times_bought"] = np.concatenate([rng.permutation(20) for _ in range(n_customers)]).astype(float)
    top2 = f.groupby("customer_idx")["times_bought"].rank(ascending=False) <= 2
    f["label"] = top2.astype(int)
    return f


def test_the_ranker_puts_the_planted_positives_first(tmp_path):
    cfg = make_cfg(tmp_path / "lake", "rank.threads=1", "rank.max_rounds=60", "rank.min_child_samples=5")
    trained = train_ranker(_toy(150, 1), _toy(40, 2), cfg)
    test = _toy(30, 3)
    customers, idx, _, _ = top_lists(test, predict(trained.booster, test), 2)
    truth = test[test["label"] == 1].groupby("customer_idx")["article_idx"].apply(set)
    hits = [set(row) == truth[c] for c, row in zip(customers, idx)]
    assert np.mean(hits) >= 0.9
    assert next(iter(trained.importance)) == "times_bought"


def test_spark_ranks_each_customer_on_all_its_candidates_across_arrow_batches(spark, tmp_path):
    from hmrec.rank.serve import ranked_top

    cfg = make_cfg(tmp_path / "lake", "rank.threads=1", "rank.max_rounds=60", "rank.min_child_samples=5")
    trained = train_ranker(_toy(150, 1), _toy(40, 2), cfg)
    test = _toy(30, 3)
    test["customer_id"] = "c" + test["customer_idx"].astype(str)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")  # every customer's 20 rows span batches
    try:
        top = ranked_top(spark, spark.createDataFrame(test.sample(frac=1.0, random_state=0)), trained.booster, 3)
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    customers, idx, _, _ = top_lists(test, predict(trained.booster, test), 3)
    expected = {f"c{c}": row.tolist() for c, row in zip(customers, idx)}
    got = top.sort_values(["customer_id", "rank"]).groupby("customer_id")["article_idx"].apply(list).to_dict()
    assert got == expected and (top["candidates"] == 20).all()
    # the planted positives (the two highest times_bought) lead most lists
    truth = test[test["label"] == 1].groupby("customer_id")["article_idx"].apply(set)
    assert np.mean([set(got[c][:2]) == truth[c] for c in truth.index]) >= 0.9


def test_lists_are_exactly_k_distinct_and_filled_for_customers_without_candidates():
    k = 4
    frame = pd.DataFrame({"customer_idx": [1, 1, 1, 2], "article_idx": [A, B, C, A]})
    for s in S.SOURCES:
        frame[f"{s}_rank"] = np.nan
    frame["repurchase_rank"] = [1.0, np.nan, np.nan, 1.0]
    frame["retrieval_rank"] = [np.nan, 1.0, 2.0, np.nan]
    customers, idx, score, src = top_lists(frame, np.array([0.1, 0.9, 0.5, 0.3]), k)
    assert customers.tolist() == [1, 2] and idx[0, :3].tolist() == [B, C, A] and idx[1, 1] == -1
    # customer 3 has no candidate at all
    idx = np.vstack([idx, np.full((1, k), -1)])
    score = np.vstack([score, np.zeros((1, k))])
    src = np.vstack([src, np.full((1, k), "", dtype=object)])
    fill = np.tile(np.array([[A, 40, 41, 42, 43, 44, 45, 46]]), (3, 1))
    out, out_score, out_src = filled_lists(idx, score, src, fill, np.ones(fill.shape), k)
    assert out.shape == (3, k) and (out >= 0).all()
    assert all(len(set(r)) == k for r in out.tolist())
    assert out[0].tolist() == [B, C, A, 40] and out_src[0].tolist() == ["model", "model", "repurchase", "popular"]
    assert out[1].tolist() == [A, 40, 41, 42] and out_src[1, 0] == "repurchase"
    assert out[2].tolist() == [A, 40, 41, 42] and set(out_src[2]) == {"popular"}
    assert out_score[0, 0] == pytest.approx(0.9)


def test_held_out_share_and_negative_sample_are_fixed_by_the_seed():
    ids = np.arange(20000)
    mask = held_out(ids, 0.2, 7)
    assert 0.18 < mask.mean() < 0.22 and (mask == held_out(ids, 0.2, 7)).all()
    frame = pd.DataFrame({"customer_idx": np.repeat(np.arange(100), 50), "article_idx": np.tile(np.arange(50), 100)})
    frame["label"] = (frame["article_idx"] == 0).astype(int)
    kept = sample_negatives(frame, 0.3, 7)
    assert (kept["label"] == 1).sum() == 100  # every positive stays
    assert 0.25 < (kept["label"] == 0).sum() / (frame["label"] == 0).sum() < 0.35


def test_spark_picks_the_same_held_out_customers_and_negatives_as_the_driver(spark):
    from pyspark.sql import functions as F

    from hmrec.rank.ranker import held_out_col, kept_negative_col

    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"customer_idx": rng.integers(0, 2**31 - 1, 3000), "article_idx": rng.integers(0, 110_000, 3000)})
    frame["label"] = 0
    got = (spark.createDataFrame(frame)
           .select("customer_idx", "article_idx", held_out_col(F.col("customer_idx"), 0.2, 7).alias("held"),
                   kept_negative_col(F.col("customer_idx"), F.col("article_idx"), 0.3, 7).alias("kept"))
           .toPandas().sort_values(["customer_idx", "article_idx"]).reset_index(drop=True))
    frame = frame.sort_values(["customer_idx", "article_idx"]).reset_index(drop=True)
    assert (got["held"].to_numpy() == held_out(frame["customer_idx"].to_numpy(), 0.2, 7)).all()
    kept = sample_negatives(frame, 0.3, 7).index
    assert got.index[got["kept"]].equals(kept)
    assert 0.1 < got["held"].mean() < 0.3


def test_the_importance_figure_shows_the_largest_gains_first_as_shares():
    from hmrec.rank.ranker import importance_figure

    fig = importance_figure({"a": 1.0, "b": 6.0, "c": 3.0}, top=2)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    widths = [bar.get_width() for bar in ax.patches]
    assert labels == ["c", "b"]  # barh draws bottom-up: the largest gain is the top bar
    assert widths == pytest.approx([0.3, 0.6])


def test_held_out_figures_per_history_group_and_their_intervals():
    # four buyers: two cold ones (codes 0) whom the ranker's list gets right, two active ones (2) it misses
    actual = np.array([[1, -1], [2, -1], [3, 4], [5, -1]])
    ranker = np.array([[1, 9], [2, 9], [9, 8], [9, 8]])
    blend = np.array([[9, 1], [9, 8], [3, 4], [9, 5]])
    out = list_figures({"ranker": ranker, "blend": blend}, actual, np.array([0, 0, 2, 2]), 2)
    assert out["groups"] == {
        "cold": {"users": 2, "ranker": {"map@2": 1.0, "recall@2": 1.0}, "blend": {"map@2": 0.25, "recall@2": 0.5}},
        "active": {"users": 2, "ranker": {"map@2": 0.0, "recall@2": 0.0}, "blend": {"map@2": 0.75, "recall@2": 1.0}}}
    assert list(out["intervals"]) == ["all", "cold", "active"]  # no lapsed buyer
    assert out["intervals"]["cold"]["ranker"] == {"map@2": [1.0, 1.0], "recall@2": [1.0, 1.0]}
    low, high = out["intervals"]["all"]["ranker"]["map@2"]
    assert 0.0 <= low < 0.5 < high <= 1.0  # the mean of 1, 1, 0, 0
