"""The two-stage list: each candidate source and feature on hand-made frames, leakage, the ranker, the lists."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from hmrec.errors import HmrecError
from hmrec.rank import sources as S
from hmrec.rank.ranker import (feature_matrix, filled_lists, held_out, list_figures, predict, sample_negatives, top_lists,
                               train_ranker)
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
        "price_std": [0.0, 0.005, 0.01, 0.0],
        "buyer_age_mean": [30.0, np.nan, 22.5, 41.0],
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
    assert f.loc[A2, "item_price_std"] == pytest.approx(0.005) and f.loc[C, "item_buyer_age_mean"] == 41.0
    assert f.loc[C, "age_vs_item_buyers"] == pytest.approx(30 - 41.0)  # customer 1 is 30
    assert np.isnan(f.loc[A2, "age_vs_item_buyers"])  # no buyer of A2 has an age
    assert list(f.reset_index()[list(S.FEATURES)].columns) == list(S.FEATURES)


def test_age_against_the_items_buyers_is_nan_when_either_age_is_unknown():
    users = pd.DataFrame({"customer_idx": [1, 2], "customer_id": ["c1", "c2"], "segment": ["age_45_54", "age_unknown"],
                          "age": [50, None], "hist_items": [[], []], "hist_days": [[], []], "hist_price": [[], []]})
    stats = pd.DataFrame({"article_idx": [A, B], "product_code": [100, 200], "product_type": [1, 2], "colour": [5, 5],
                          "index_group": [1, 1], "sales_1d": [0.0, 0.0], "sales_7d": [1.0, 1.0], "sales_28d": [2.0, 1.0],
                          "trend": [1.0, 1.0], "trending_score": [1.0, 1.0], "price_mean": [15.0, 10.0],
                          "price_std": [np.sqrt(50.0), 0.0], "buyer_age_mean": [30.0, np.nan],
                          "days_since_first_sale": [9.0, 3.0]})
    lists = {"global": (np.array([A, B]), np.array([2.0, 1.0]))}
    cands = S.union_sources({"popular": S.list_source(users, lists, "segment", 2, "global")})
    f = S.add_features(cands, S.history_frame(users), users, S.item_table(stats)).set_index(["customer_idx", "article_idx"])
    assert f.loc[(1, A), "age_vs_item_buyers"] == 20.0  # aged 50 against buyers of mean age 30
    assert np.isnan(f.loc[(1, B), "age_vs_item_buyers"])  # B's buyers have no age
    assert np.isnan(f.loc[(2, A), "age_vs_item_buyers"])  # customer 2 has no age
    assert f.loc[(1, A), "item_price_std"] == pytest.approx(np.sqrt(50.0)) and f.loc[(1, B), "item_price_std"] == 0.0


def _hist_users(rows: dict[int, list[tuple[int, int, float]]], ages: dict[int, float] | None = None) -> pd.DataFrame:
    """Users with the purchases ``rows`` (customer_idx -> [(article_idx, days, price)]), None for none."""
    ids = list(rows)
    return pd.DataFrame({
        "customer_idx": ids, "customer_id": [f"c{i}" for i in ids], "segment": "age_unknown",
        "age": [(ages or {}).get(i) for i in ids],
        "hist_items": [None if rows[i] is None else [r[0] for r in rows[i]] for i in ids],
        "hist_days": [None if rows[i] is None else [r[1] for r in rows[i]] for i in ids],
        "hist_price": [None if rows[i] is None else [r[2] for r in rows[i]] for i in ids],
    })


def _frame(**columns) -> pd.DataFrame:
    """A union_sources frame: the given columns, every other source column NaN."""
    n = len(columns["customer_idx"])
    out = pd.DataFrame({"customer_idx": np.asarray(columns["customer_idx"], dtype=np.int64),
                        "article_idx": np.asarray(columns["article_idx"], dtype=np.int64)})
    for c in S.SOURCE_COLUMNS:
        out[c] = np.asarray(columns.get(c, [np.nan] * n), dtype=np.float64)
    return out


def test_pair_keys_sort_as_the_pairs_and_give_them_back():
    pairs = [(3, -1), (-2, 5), (3, 2**31 - 1), (0, 0), (-2**31, -2**31), (2**31 - 1, 7), (3, 0), (-1, 2**31 - 1)]
    left, right = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    keys = S._pair_keys(left, right)
    assert [pairs[i] for i in np.argsort(keys)] == sorted(pairs)
    back = S._split_keys(keys)
    assert back[0].tolist() == left.tolist() and back[1].tolist() == right.tolist()
    with pytest.raises(HmrecError, match="beyond 32 bits"):
        S._pair_keys(np.array([1]), np.array([2**31]))


def test_union_of_an_empty_source_and_customers_each_in_one_source():
    # customer 2's neighbours C then A, customer 1's B (its second slot empty); customer 3 only in popular
    ret = S.retrieval_source(np.array([2, 1]), np.array([[0.9, 0.5], [0.7, 0.0]]), np.array([[C, A], [B, -1]]))
    pop = pd.DataFrame({"customer_idx": [3, 3], "article_idx": [B, A], "score": [2.0, 1.0], "rank": [1, 2]})
    empty = S.repurchase_source(S.history_frame(_hist_users({1: None})), 10)
    assert empty.empty
    got = S.union_sources({"retrieval": ret, "colour": empty, "popular": pop})
    expected = _frame(customer_idx=[1, 2, 2, 3, 3], article_idx=[B, A, C, A, B],
                      retrieval_score=[0.7, 0.5, 0.9, np.nan, np.nan], retrieval_rank=[1, 2, 1, np.nan, np.nan],
                      popular_score=[np.nan, np.nan, np.nan, 1.0, 2.0], popular_rank=[np.nan, np.nan, np.nan, 2, 1])
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # no source proposed anything: no rows, the same columns
    pd.testing.assert_frame_equal(S.union_sources({}), _frame(customer_idx=[], article_idx=[]), check_exact=True)
    pd.testing.assert_frame_equal(S.union_sources({"colour": empty}), _frame(customer_idx=[], article_idx=[]))


def test_union_keeps_a_pairs_best_rank_when_a_source_gives_it_twice():
    twice = pd.DataFrame({"customer_idx": [1, 1, 1], "article_idx": [A, B, A], "score": [0.4, 0.6, 0.9],
                          "rank": [3, 2, 1]})
    got = S.union_sources({"trending": twice})
    pd.testing.assert_frame_equal(got, _frame(customer_idx=[1, 1], article_idx=[A, B], trending_score=[0.9, 0.6],
                                              trending_rank=[1, 2]), check_exact=True)


def test_colour_source_keeps_a_variants_best_score_and_breaks_ties_by_article():
    A3, A4 = 12, 13  # two more articles of product 100
    stats = pd.DataFrame({"article_idx": [A, A2, A3, A4], "product_code": 100, "product_type": 1, "colour": 5,
                          "index_group": 1, "sales_1d": 0.0, "sales_7d": 0.0, "sales_28d": [5.0, 9.0, 3.0, 3.0],
                          "trend": 0.0, "trending_score": 0.0, "price_mean": 0.01, "price_std": 0.0,
                          "buyer_age_mean": 30.0, "days_since_first_sale": 50.0})
    # customer 1 bought A and A2, customer 2 bought A3
    hist = S.history_frame(_hist_users({1: [(A, 1, 0.01), (A2, 10, 0.01)], 2: [(A3, 3, 0.01)]}))
    rep = S.repurchase_source(hist, 10)
    col = S.colour_source(rep, hist, S.item_table(stats), 5)
    s1, s2 = 0.5 ** (1 / 14), 0.5 ** (3 / 14)  # A's score beats A2's 0.5 ** (10 / 14)
    # A3 and A4 both reached from A with 4 x its score: the lower article_idx first
    assert col["customer_idx"].tolist() == [1, 1, 2, 2, 2]
    assert col["article_idx"].tolist() == [A3, A4, A2, A, A4]
    assert col["rank"].tolist() == [1, 2, 1, 2, 3]
    assert col["score"].tolist() == pytest.approx([4 * s1, 4 * s1, 10 * s2, 6 * s2, 4 * s2], rel=1e-12)
    assert list(col.dtypes) == [np.int64, np.int64, np.float64, np.int64]
    one = S.colour_source(rep, hist, S.item_table(stats), 1)
    assert list(zip(one["customer_idx"], one["article_idx"])) == [(1, A3), (2, A2)]


def test_copurchase_source_proposes_what_a_purchases_buyers_also_bought_never_bought_by_the_customer():
    # A's buyers also bought B (half of them) and C (a quarter); A2's bought C (all of them)
    pairs = S.Related.of([A, A, A2, B], [B, C, C, A], [0.5, 0.25, 1.0, 0.7])
    # customer 1 bought A (1 day ago) and B, customer 2 A2 (15 days ago), customer 3 C (no pairs)
    hist = S.history_frame(_hist_users({1: [(A, 1, 0.01), (B, 30, 0.01)], 2: [(A2, 15, 0.01)], 3: [(C, 2, 0.01)]}))
    rep = S.repurchase_source(hist, 10)
    got = S.copurchase_source(rep, hist, pairs, 5)
    s_a, s_a2 = 0.5 ** (1 / 14), 0.5 ** (15 / 14)
    # customer 1: B and A were bought, so only C, from A (0.25 x A's score); customer 2: C from A2
    assert list(zip(got["customer_idx"], got["article_idx"])) == [(1, C), (2, C)]
    assert got["score"].tolist() == pytest.approx([0.25 * s_a, 1.0 * s_a2], rel=1e-12)
    assert got["rank"].tolist() == [1, 1] and list(got.dtypes) == [np.int64, np.int64, np.float64, np.int64]
    # reached from two purchases, an article keeps its best score; n caps each customer's list
    hist = S.history_frame(_hist_users({1: [(A, 1, 0.01), (A2, 2, 0.01)]}))
    rep = S.repurchase_source(hist, 10)
    got = S.copurchase_source(rep, hist, pairs, 5)
    assert got["article_idx"].tolist() == [C, B]
    assert got["score"].tolist() == pytest.approx([0.5 ** (2 / 14), 0.5 * 0.5 ** (1 / 14)], rel=1e-12)
    assert S.copurchase_source(rep, hist, pairs, 1)["article_idx"].tolist() == [C]
    assert S.copurchase_source(rep, hist, S.Related.empty(), 5).empty
    assert S.copurchase_source(rep, hist, pairs, 0).empty


def test_duplicated_purchases_count_each_time():
    # the same article twice on the same day (two rows of one receipt), then B
    users = _hist_users({1: [(A, 2, 0.02), (A, 2, 0.02), (B, 5, 0.04)]}, ages={1: 40.0})
    hist = S.history_frame(users)
    rep = S.repurchase_source(hist, 10)
    assert rep["article_idx"].tolist() == [A, B]
    assert rep["score"].tolist() == pytest.approx([2 * 0.5 ** (2 / 14), 0.5 ** (5 / 14)], rel=1e-12)
    col = S.colour_source(rep, hist, _items(), 10)
    assert col["article_idx"].tolist() == [A2]  # A itself was bought
    assert col["score"].tolist() == pytest.approx([2 * 0.5 ** (2 / 14) * 10], rel=1e-12)  # A2 sold 9
    f = S.add_features(S.union_sources({"repurchase": rep, "colour": col}), hist, users, _items())
    assert f["article_idx"].tolist() == [A, A2, B]
    f = f.set_index("article_idx")
    assert f["times_bought"].tolist() == [2, 0, 1]
    assert f.loc[A, "days_since_bought"] == 2 and np.isnan(f.loc[A2, "days_since_bought"])
    assert f.loc[B, "days_since_bought"] == 5
    assert f["same_product_bought"].tolist() == [2, 2, 1]
    assert f["share_product_type"].tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3])  # types 1, 1, 2
    assert f["share_colour"].tolist() == pytest.approx([1.0, 0.0, 1.0])  # A and B colour 5, A2 6
    assert (f["user_n_purchases"] == 3).all() and (f["user_days_since_last"] == 2).all()
    assert f["user_mean_price"].tolist() == pytest.approx([0.08 / 3] * 3)
    assert f["n_sources"].tolist() == [1, 1, 1] and (f["user_age"] == 40).all()


def test_articles_unknown_to_the_items_have_no_item_features_and_match_no_purchase():
    U, U2 = 99, 98  # beyond the item table's arrays (its last article is C = 30)
    users = _hist_users({1: [(A, 1, 0.02), (U, 4, 0.03)]})
    hist = S.history_frame(users)
    rep = S.repurchase_source(hist, 10)
    col = S.colour_source(rep, hist, _items(), 10)
    assert col["article_idx"].tolist() == [A2]  # U has no product_code: no variants
    ret = S.retrieval_source(np.array([1]), np.array([[0.9, 0.8, 0.7]]), np.array([[U2, U, A]]))
    f = S.add_features(S.union_sources({"retrieval": ret, "repurchase": rep, "colour": col}), hist, users, _items())
    assert f["article_idx"].tolist() == [A, A2, U2, U]
    f = f.set_index("article_idx")
    for c in S.ITEM_FEATURES + ("price_vs_user", "age_vs_item_buyers"):
        assert f.loc[[U, U2], c].isna().all(), c
    assert f.loc[A2, "item_sales_28d"] == 9 and f.loc[A, "price_vs_user"] == pytest.approx(0.02 / 0.025)
    assert f["times_bought"].tolist() == [1, 0, 0, 1]
    assert np.isnan(f.loc[U2, "days_since_bought"]) and f.loc[U, "days_since_bought"] == 4
    # an unknown product, type, colour or index group is no match, not even for U itself; A2 is A's product
    assert f["same_product_bought"].tolist() == [1, 1, 0, 0]
    for c in ("share_product_type", "share_colour", "share_index_group"):
        assert f.loc[[U2, U], c].tolist() == [0.0, 0.0], c
    assert f.loc[A, "share_colour"] == 0.5 and f.loc[A2, "share_colour"] == 0.0  # A colour 5, A2 6
    assert f["n_sources"].tolist() == [2, 1, 1, 2]


def test_a_null_attribute_in_the_catalogue_matches_no_purchase():
    # A and B have no colour in the catalogue; the customer bought A and C (colour 7)
    stats = pd.DataFrame({"article_idx": [A, B, C], "product_code": [100, 200, 300], "product_type": [1, 1, 2],
                          "colour": [np.nan, np.nan, 7], "index_group": [1, 1, 2]})
    for col in S.ITEM_COLUMNS:
        if col not in stats:
            stats[col] = 0.0
    items = S.item_table(stats)
    users = _hist_users({1: [(A, 2, 0.02), (C, 3, 0.02)]})
    hist = S.history_frame(users)
    ret = S.retrieval_source(np.array([1]), np.array([[0.9, 0.8]]), np.array([[B, C]]))
    f = S.add_features(S.union_sources({"retrieval": ret}), hist, users, items).set_index("article_idx")
    assert f.loc[B, "share_colour"] == 0.0 and f.loc[C, "share_colour"] == 0.5
    assert f.loc[B, "share_product_type"] == 0.5  # the known attribute still counts: A is of type 1


def test_a_batch_without_any_history():
    # no purchases, an empty list, and a purchase on the cutoff day only
    users = _hist_users({1: None, 2: [], 3: [(A, 0, 0.02)]}, ages={1: 50.0, 3: 20.0})
    hist = S.history_frame(users)
    assert hist.empty
    rep = S.repurchase_source(hist, 10)
    col = S.colour_source(rep, hist, _items(), 10)
    assert rep.empty and col.empty
    lists = {"global": (np.array([B, A]), np.array([2.0, 1.0]))}
    cands = S.union_sources({"repurchase": rep, "colour": col, "popular": S.list_source(users, lists, None, 2, "global")})
    f = S.add_features(cands, hist, users, _items())
    assert list(zip(f["customer_idx"], f["article_idx"])) == [(1, A), (1, B), (2, A), (2, B), (3, A), (3, B)]
    assert f["popular_rank"].tolist() == [2, 1, 2, 1, 2, 1]
    for c in ("times_bought", "same_product_bought", "share_product_type", "share_colour", "share_index_group",
              "user_n_purchases"):
        assert (f[c] == 0).all(), c
    for c in ("days_since_bought", "user_days_since_last", "user_mean_price", "price_vs_user"):
        assert f[c].isna().all(), c
    np.testing.assert_array_equal(f["user_age"], [50.0, 50.0, np.nan, np.nan, 20.0, 20.0])
    # A's buyers are 30 on average, B's 22.5
    np.testing.assert_array_equal(f["age_vs_item_buyers"], [20.0, 27.5, np.nan, np.nan, -10.0, -2.5])
    assert (f["n_sources"] == 1).all() and f.loc[f["article_idx"] == B, "item_sales_7d"].tolist() == [4.0] * 3
    assert list(f.columns[:2 + len(S.SOURCE_COLUMNS)]) == ["customer_idx", "article_idx", *S.SOURCE_COLUMNS]
    assert sorted(f.columns[2:]) == sorted(S.FEATURES) and (f.dtypes.iloc[2:] == np.float64).all()


def test_item_stats_and_histories_read_only_rows_before_the_cutoff(spark):
    from hmrec.rank.candidates import item_stats, user_histories

    cutoff = dt.date(2020, 9, 9)
    day = lambda n: cutoff - dt.timedelta(days=n)  # noqa: E731
    rows = [(day(1), 1, A, 10.0), (day(5), 2, A, 20.0), (day(20), 3, A, 20.0), (day(2), 2, B, 0.04),
            (day(3), 4, C, 7.0)]
    # the label week and after, bought by customers of every age: none of it may change a figure
    later = [(cutoff, 1, A, 0.5), (day(-3), 2, B, 0.5), (day(-1), 1, C, 0.5), (cutoff, 5, A, 99.0)]
    schema = "t_dat date, customer_idx int, article_idx int, price double"
    before = spark.createDataFrame(rows, schema)
    both = spark.createDataFrame(rows + later, schema)
    # customer 3 has no age, customer 5 (who buys only on the cutoff day) is 80
    ages = spark.createDataFrame([(1, 20), (2, 40), (3, None), (4, None), (5, 80)], "customer_idx int, age int")
    a = item_stats(before, cutoff, ages).toPandas().sort_values("article_idx").reset_index(drop=True)
    b = item_stats(both, cutoff, ages).toPandas().sort_values("article_idx").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    got = a.set_index("article_idx")
    assert got.loc[A, "sales_1d"] == 1 and got.loc[A, "sales_7d"] == 2 and got.loc[A, "sales_28d"] == 3
    assert got.loc[A, "trend"] == pytest.approx(2 / (1 / 3 + 1))
    assert got.loc[A, "days_since_first_sale"] == 20
    # A sold at 10, 20, 20: sample standard deviation; its buyers aged 20 and 40 (the third has no age)
    assert got.loc[A, "price_mean"] == pytest.approx(50 / 3)
    assert got.loc[A, "price_std"] == pytest.approx(np.std([10.0, 20.0, 20.0], ddof=1))
    assert got.loc[A, "buyer_age_mean"] == pytest.approx(30.0)
    assert got.loc[B, "price_std"] == 0.0 and got.loc[B, "buyer_age_mean"] == 40.0  # one sale: no spread
    assert np.isnan(got.loc[C, "buyer_age_mean"]) and got.loc[C, "sales_7d"] == 1  # no buyer with an age
    two = item_stats(spark.createDataFrame([(day(1), 1, A, 10.0), (day(2), 2, A, 20.0)], schema), cutoff, ages)
    assert two.first()["price_std"] == pytest.approx(np.sqrt(50.0))  # prices 10 and 20
    assert two.first()["buyer_age_mean"] == pytest.approx(30.0)  # buyers aged 20 and 40
    h = user_histories(both, cutoff, 0).toPandas().set_index("customer_idx")
    assert list(h.loc[1, "hist_items"]) == [A] and list(h.loc[1, "hist_days"]) == [1]
    assert list(h.loc[2, "hist_items"]) == [B, A]
    assert 5 not in h.index  # bought only on the cutoff day
    assert user_histories(both, cutoff, 3).toPandas().set_index("customer_idx").loc[2, "hist_items"].tolist() == [B]


def test_copurchase_pairs_count_the_customers_of_the_window_before_the_cutoff(spark):
    from hmrec.rank.candidates import copurchase_pairs

    cutoff = dt.date(2020, 9, 9)
    day = lambda n: cutoff - dt.timedelta(days=n)  # noqa: E731
    D = 40
    # A bought by customers 1-4; B by 1, 2 and 3 (with A); C by 1 and 2, D by 4 only (with A); customer 1
    # bought A twice (counts once); customer 5 bought B and C 40 days ago, outside a 28-day window
    rows = [(day(1), 1, A), (day(9), 1, A), (day(2), 1, B), (day(3), 1, C), (day(5), 2, A), (day(5), 2, B),
            (day(6), 2, C), (day(7), 3, A), (day(20), 3, B), (day(4), 4, A), (day(4), 4, D),
            (day(40), 5, B), (day(40), 5, C)]
    # on and after the cutoff: none of it may change a pair
    later = [(cutoff, 4, B), (cutoff, 4, C), (day(-2), 3, C), (day(-1), 6, A), (day(-1), 6, D)]
    schema = "t_dat date, customer_idx int, article_idx int"
    before = spark.createDataFrame(rows, schema)
    both = spark.createDataFrame(rows + later, schema)

    def pairs(frame, **kw):
        got = copurchase_pairs(frame, cutoff, 28, **kw).toPandas()
        return {(int(r.article_idx), int(r.other_idx)): r.weight for r in got.itertuples()}

    got = pairs(both)
    assert got == pairs(before)
    # (A, D) and (D, A) have one customer: below the two a pair needs; C's two buyers both bought A and B
    assert got == pytest.approx({(A, B): 3 / 4, (A, C): 2 / 4, (B, A): 1.0, (B, C): 2 / 3, (C, A): 1.0,
                                 (C, B): 1.0})
    assert pairs(both, min_buyers=1)[(A, D)] == pytest.approx(1 / 4)
    assert pairs(both, neighbours=1) == pytest.approx({(A, B): 3 / 4, (B, A): 1.0, (C, A): 1.0})  # ties: lower idx
    # one latest article per customer: nothing pairs up
    assert pairs(both, per_customer=1) == {}
    # within 60 days customer 5's B and C count too
    assert copurchase_pairs(both, cutoff, 60).where(f"article_idx = {B} AND other_idx = {C}").first().weight == \
        pytest.approx(3 / 4)


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


# ---- the features added later: boosters and tables of the first feature list -----------------------


def test_a_booster_of_the_first_feature_list_scores_new_candidate_rows_as_it_scored_the_old_ones(spark, tmp_path):
    import lightgbm as lgb

    from hmrec.rank.ranker import booster_features
    from hmrec.rank.serve import ranked_top

    cfg = make_cfg(tmp_path / "lake", "rank.threads=1", "rank.max_rounds=40", "rank.min_child_samples=5")
    old = train_ranker(_toy(120, 1), _toy(30, 2), cfg, features=S.FIRST_FEATURES)
    assert old.features == list(S.FIRST_FEATURES)
    # as the registry holds it: the booster's text, rebuilt
    booster = lgb.Booster(model_str=old.booster.model_to_string())
    assert booster_features(booster) == list(S.FIRST_FEATURES)
    test = _toy(30, 3)
    # the co-purchase columns too (as an evolved table reads them): the lists name every source
    old_rows = test[["customer_idx", "article_idx", *S.FIRST_FEATURES, *S.LATER_SOURCE_COLUMNS]]
    rng = np.random.default_rng(4)
    new_rows = test.assign(**{c: rng.normal(size=len(test)) for c in S.ADDED_FEATURES})
    new_rows = new_rows[list(rng.permutation(new_rows.columns))]  # the columns in another order
    expected = predict(booster, old_rows)
    np.testing.assert_array_equal(predict(booster, new_rows), expected)
    np.testing.assert_array_equal(predict(old.booster, new_rows), expected)
    # on Spark's workers (hmrec.rank.serve), from the broadcast text
    new_rows = new_rows.assign(customer_id="c" + new_rows["customer_idx"].astype(str))
    top = ranked_top(spark, spark.createDataFrame(new_rows), booster, 3)
    customers, idx, _, _ = top_lists(old_rows, expected, 3)
    got = top.sort_values(["customer_id", "rank"]).groupby("customer_id")["article_idx"].apply(list).to_dict()
    assert got == {f"c{c}": row.tolist() for c, row in zip(customers, idx)}


def test_a_booster_that_needs_the_added_features_refuses_rows_written_before_them():
    from hmrec.errors import HmrecError

    cfg = make_cfg("/nonexistent", "rank.threads=1", "rank.max_rounds=10", "rank.min_child_samples=5")
    booster = train_ranker(_toy(60, 1), _toy(20, 2), cfg).booster
    test = _toy(5, 3).assign(as_of=dt.date(2020, 9, 16), role="serve")
    assert len(predict(booster, test)) == len(test)
    # a row whose article has no buyer with an age: a null item_buyer_age_mean is a value, not a gap
    assert len(predict(booster, test.assign(item_buyer_age_mean=np.nan, age_vs_item_buyers=np.nan))) == len(test)
    with pytest.raises(HmrecError, match=r"item_price_std.*hmrec candidates --as-of"):
        predict(booster, test.drop(columns=list(S.ADDED_FEATURES)))  # a table never evolved
    # an evolved table's old rows: the new columns read as null where item_price_mean is set
    old = test.assign(**{c: np.nan for c in S.ADDED_FEATURES})
    with pytest.raises(HmrecError, match=r"as_of 2020-09-16, role serve.*item_price_std"):
        predict(booster, old)


def test_new_candidates_go_into_a_table_of_the_first_column_set_which_keeps_its_rows(spark, tmp_path):
    from pyspark.sql.types import StructType

    from hmrec.errors import HmrecError
    from hmrec.lake import schemas, storage, tables
    from hmrec.rank.candidates import candidate_rows, check_features, write_candidates, written_features

    cfg = make_cfg(tmp_path / "lake")
    ranked = ("ranker_score", "ranker_rank")  # added with the ranking of served candidates as they are made
    later = (*S.ADDED_FEATURES, *S.LATER_SOURCE_COLUMNS, *ranked)
    first = StructType([f for f in schemas.CANDIDATES.fields if f.name not in later])
    old_cut, new_cut = dt.date(2020, 9, 9), dt.date(2020, 9, 16)

    def rows(cutoff: dt.date, n: int, schema: StructType):
        out = []
        for i in range(n):
            row = {"as_of": cutoff, "role": "fit" if cutoff == old_cut else "serve", "customer_id": f"c{i}",
                   "customer_idx": i, "segment": "global", "article_idx": 100 + i}
            row.update({c: float(i) for c in S.FEATURES}, ranker_score=None, ranker_rank=None)
            out.append(tuple(row[f.name] for f in schema.fields))
        return spark.createDataFrame(out, schema)

    # as the release before this one wrote them: the first column set, no feature list in the commit
    storage.write_partition(rows(old_cut, 3, first), cfg, tables.CANDIDATES, old_cut,
                            metadata={"as_of": old_cut.isoformat(), "role": "fit", "model_version": "1"}, role="fit")
    assert write_candidates(rows(new_cut, 2, schemas.CANDIDATES), cfg, new_cut, "serve", "2") == 2
    old = candidate_rows(spark, cfg, old_cut, "fit").toPandas().sort_values("customer_idx")
    assert old["customer_idx"].tolist() == [0, 1, 2] and old["item_price_mean"].tolist() == [0.0, 1.0, 2.0]
    assert old[list(later)].isna().all().all()  # the new columns read as null
    new = candidate_rows(spark, cfg, new_cut, "serve").toPandas().sort_values("customer_idx")
    assert new["item_price_std"].tolist() == [0.0, 1.0] and new["age_vs_item_buyers"].tolist() == [0.0, 1.0]
    assert written_features(spark, cfg, old_cut, "fit") == list(S.FIRST_FEATURES)
    assert written_features(spark, cfg, new_cut, "serve") == list(S.FEATURES)
    check_features(spark, cfg, old_cut, "fit", S.FIRST_FEATURES)  # an older booster still reads them
    check_features(spark, cfg, new_cut, "serve", S.FEATURES)
    with pytest.raises(HmrecError, match=r"item_price_std.*rerun `hmrec candidates --as-of 2020-09-16 --role fit`"):
        check_features(spark, cfg, old_cut, "fit", S.FEATURES)
    # rewritten with the current code, the old cutoff's rows serve a booster of every feature
    write_candidates(rows(old_cut, 3, schemas.CANDIDATES), cfg, old_cut, "fit", "1")
    check_features(spark, cfg, old_cut, "fit", S.FEATURES)
    assert candidate_rows(spark, cfg, old_cut, "fit").where("item_price_std IS NULL").count() == 0
    assert candidate_rows(spark, cfg, new_cut, "serve").count() == 2
    # rows of the release before the co-purchase source: its commit's feature list lacks the source's columns
    before = StructType([f for f in schemas.CANDIDATES.fields if f.name not in S.LATER_SOURCE_COLUMNS])
    write_candidates(rows(old_cut, 3, before), cfg, old_cut, "fit", "1")
    assert written_features(spark, cfg, old_cut, "fit") == [c for c in S.FEATURES if c not in S.LATER_SOURCE_COLUMNS]
    check_features(spark, cfg, old_cut, "fit", S.FIRST_FEATURES)
    with pytest.raises(HmrecError, match=r"\['copurchase_score', 'copurchase_rank'\].*--role fit"):
        check_features(spark, cfg, old_cut, "fit", S.FEATURES)


def test_list_places_orders_each_customer_by_score_then_article():
    from hmrec.rank.candidates import list_places

    c = np.array([7, 3, 7, 7, 3, 9])
    a = np.array([5, 1, 2, 9, 4, 8])
    s = np.array([0.5, 0.1, 0.9, 0.5, 0.3, -2.0])
    # customer 7: article 2 (0.9), then 5 and 9 tie at 0.5 (lower article first); customer 3: 4 (0.3), 1 (0.1)
    assert list_places(c, a, s).tolist() == [2, 2, 1, 3, 1, 1]
    assert list_places(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)).tolist() == []


def test_the_active_window_is_the_shortest_within_the_allowed_loss_and_a_set_one_is_kept():
    from hmrec.rank.ranker import active_days_of, active_lists, choose_active_days
    from hmrec.serve.blend import pad_lists

    ranked = np.array([[1, 2], [3, 4], [5, 6], [8, 9]])
    fallback = np.tile([8, 9], (4, 1))
    # bought 10, 182 (the edge of a window counts as inside) and 400 days ago, and never (no candidates:
    # its ranked list is already the popularity list)
    days = np.array([10.0, 182.0, 400.0, np.nan])
    truth = pad_lists([[1], [3], [6], [9]])  # average precision 1, 1, 1/2 and 1/2 with candidates for all
    assert active_lists(ranked, fallback, days, 182).tolist() == [[1, 2], [3, 4], [8, 9], [8, 9]]
    assert active_lists(ranked, fallback, days, 0) is ranked
    chosen, maps, _ = choose_active_days(ranked, fallback, days, truth, 2, "auto", 0.0)
    assert chosen == 0
    assert maps == pytest.approx({28: 0.375, 56: 0.375, 91: 0.375, 182: 0.625, 365: 0.625, 0: 0.75})
    assert choose_active_days(ranked, fallback, days, truth, 2, "auto", 0.2)[0] == 182  # 0.625 >= 0.8 * 0.75
    assert choose_active_days(ranked, fallback, days, truth, 2, "auto", 0.5)[0] == 28  # 0.375 >= 0.5 * 0.75
    chosen, maps, why = choose_active_days(ranked, fallback, days, truth, 2, 91, 0.0)
    assert (chosen, why) == (91, "set") and maps == pytest.approx({91: 0.375, 0: 0.75})
    # what the candidates stage uses: a set number, else the rank stage's choice, else every customer
    meta = {"active_days": {"chosen": 56}}
    assert active_days_of(make_cfg("/tmp/lake"), meta) == 56
    assert active_days_of(make_cfg("/tmp/lake"), None) == 0
    assert active_days_of(make_cfg("/tmp/lake", "candidates.active_days=7"), meta) == 7


def test_active_users_keeps_the_buyers_within_the_window_as_the_rank_stage_counts_days(spark):
    from hmrec.etl import segments
    from hmrec.rank.candidates import active_users

    days = [0, 1, 27, 28, 29, 364, 365, 366, 4000]
    logs = np.log1p(np.array(days, dtype=np.float32)).astype(np.float32)  # stored as float, like USER_FEATURES
    assert segments.days_since_last(logs).tolist() == days
    frame = spark.createDataFrame(pd.DataFrame({"customer_idx": np.arange(len(days), dtype=np.int32),
                                                "days_since_last_log": logs}), "customer_idx int, days_since_last_log float")
    kept = lambda window: sorted(r[0] for r in active_users(frame, window).select("customer_idx").collect())  # noqa: E731
    assert kept(28) == [0, 1, 2, 3]
    assert kept(365) == [0, 1, 2, 3, 4, 5, 6]
    assert kept(0) == list(range(len(days)))


def test_the_feature_matrix_holds_the_named_columns_in_their_order_row_major_with_nulls_as_nan():
    frame = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, np.nan, 2.5], "c": pd.Series([None, 4.0, None], dtype=object),
                          "ignored": ["x", "y", "z"]})
    x = feature_matrix(frame, ["c", "a", "b"])
    assert x.dtype == np.float64 and x.flags["C_CONTIGUOUS"] and x.shape == (3, 3)
    np.testing.assert_array_equal(x, np.array([[np.nan, 1, 0.5], [4.0, 2, np.nan], [np.nan, 3, 2.5]]))
