"""Choices on the validation week: known answers on planted worlds, and the plan space.

In the planted world (tests/planted.py) a customer of group g is served the
articles g, g+4, ... by the model. Each customer's history holds three
articles of the next group. Where customers re-buy their history, a plan that
keeps recent purchases must win; where they never re-buy and buy what the
model finds, the model alone must win; cold customers get a popularity list.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from hmrec.etl.segments import HISTORY_GROUPS
from hmrec.evaluation.choose import PerCustomer, figures_of, pick, score_options, validation_intervals
from hmrec.serve.blend import fill_lists, pad_lists
from hmrec.serve.index import ShippedIndex, make_index
from hmrec.serve.plans import ListPlan, options, unchosen
from hmrec.serve.score import ScoringContext
from tests.conftest import make_cfg
from tests.planted import GROUPS, N_ITEMS, aid, cid, group_list, item_vectors, planted_embedder

AS_OF = dt.date(2020, 9, 16)
K = 4
N_USERS = 40


def _context() -> ScoringContext:
    vectors = item_vectors()
    index = make_index("flat", vectors, make_cfg("/tmp/unused-lake").index, ids=np.arange(N_ITEMS))
    pop = pd.DataFrame({"segment": ["global"] * 6, "rank": range(1, 7), "article_idx": [39, 38, 37, 36, 35, 34],
                        "score": [60.0, 50, 40, 30, 20, 10]})
    names, f_idx, f_score = fill_lists(pop, np.arange(N_ITEMS), K)
    embedder = planted_embedder(N_USERS)
    return ScoringContext(
        embedder=embedder, index=ShippedIndex.of(index, "v1"), dim=GROUPS, k=K, n_candidates=K + K,
        min_history=1, repurchase_slots=K, repurchase_column="last_articles", filter_bought=False, batch_size=64,
        item_pos=np.arange(N_ITEMS), item_vectors=vectors, article_ids=np.array([aid(i) for i in range(N_ITEMS)]),
        segment_names=names, fill_idx=f_idx, fill_score=f_score, model_version="v1", as_of=AS_OF,
    )


def _history(i: int) -> list[int]:
    """Three articles of the group after the customer's own, latest first."""
    return group_list((i + 1) % GROUPS, 3)


def _users(cold: int = 8) -> pd.DataFrame:
    """Active customers 0..N_USERS-cold-1 with a history; the last ``cold`` have bought nothing."""
    active = N_USERS - cold
    return pd.DataFrame({
        "customer_id": [cid(i) for i in range(N_USERS)],
        "customer_idx": list(range(N_USERS)),
        "n_purchases": [3] * active + [0] * cold,
        "days_since_last_log": [np.log1p(5.0)] * active + [np.log1p(3650.0)] * cold,
        "last_articles": [np.array(_history(i)) for i in range(active)] + [np.array([], dtype=int)] * cold,
        "segment": ["age_unknown"] * N_USERS,
    })


def _choose(actual: list[list[int]]) -> dict[str, ListPlan]:
    cfg = make_cfg("/tmp/unused-lake", f"score.k={K}")
    candidates = options(cfg)
    every = list({p.label(): p for group in candidates.values() for p in group}.values())
    sums, counts = score_options(_users(), pad_lists(actual), _context(), every, K)
    assert counts.tolist() == [8, 0, 32]  # cold, lapsed, active
    return pick(sums, counts, candidates)


def test_customers_who_rebuy_get_their_recent_purchases():
    actual = [_history(i) for i in range(32)] + [[39, 38]] * 8
    chosen = _choose(actual)
    assert chosen["active"].source in ("repurchase", "model") and chosen["active"].slots >= 3, chosen
    assert chosen["cold"].source == "popular"


def test_customers_who_never_rebuy_get_the_model_without_purchases():
    actual = [group_list(i % GROUPS, K) for i in range(32)] + [[39, 38]] * 8
    chosen = _choose(actual)
    assert chosen["active"] == ListPlan("model", slots=0, order="recency", fallback="segment"), chosen


def test_customers_who_buy_what_is_popular_get_the_popular_list():
    actual = [[39, 38, 37, 36]] * 40
    chosen = _choose(actual)
    assert chosen["active"].source == "popular"
    assert chosen["cold"].source == "popular"


def test_the_plan_space_honours_pinned_settings():
    auto = options(make_cfg("/tmp/unused-lake"))
    assert {p.source for p in auto["cold"]} == {"popular"}
    assert {p.source for p in auto["active"]} == {"popular", "repurchase", "model"}
    assert {p.slots for p in auto["active"] if p.source == "model"} == {0, 2, 4, 6, 8, 12}
    pinned = options(make_cfg("/tmp/unused-lake", "score.repurchase_slots=4", "score.repurchase_order=model",
                              "score.fallback=global"))
    assert [p for p in pinned["active"] if p.source == "model"] == [ListPlan("model", 4, "model", "global")]
    assert {p.fallback for p in pinned["active"]} == {"global"}
    off = options(make_cfg("/tmp/unused-lake", "score.repurchase=false"))
    assert {p.slots for p in off["active"]} == {0}
    plans = unchosen(make_cfg("/tmp/unused-lake", "score.repurchase_slots=4"))
    assert plans["active"] == ListPlan("model", 4, "recency", "segment") and plans["cold"].source == "popular"
    assert set(plans) == set(HISTORY_GROUPS)


@pytest.mark.parametrize("first,second", [(ListPlan("popular", fallback="segment"), ListPlan("model", slots=0))])
def test_ties_go_to_the_earlier_simpler_plan(first, second):
    sums = {first.label(): np.ones((3, 3)), second.label(): np.ones((3, 3))}
    chosen = pick(sums, np.ones(3), {g: [first, second] for g in HISTORY_GROUPS})
    assert all(p == first for p in chosen.values())


def test_validation_intervals_bracket_the_served_figures_overall_and_per_group():
    # active customers re-buy their history; the 8 cold ones buy the two most popular articles
    actual = [_history(i) for i in range(32)] + [[39, 38]] * 8
    cfg = make_cfg("/tmp/unused-lake", f"score.k={K}")
    candidates = options(cfg)
    every = list({p.label(): p for group in candidates.values() for p in group}.values())
    per = PerCustomer()
    sums, counts = score_options(_users(), pad_lists(actual), _context(), every, K, per_customer=per)
    chosen = pick(sums, counts, candidates)
    figures = figures_of(sums, counts, chosen, candidates, K)
    got = validation_intervals(per, chosen, K)
    assert list(got) == ["all", "cold", "active"]  # no lapsed buyer
    assert per.groups().tolist() == [2] * 32 + [0] * 8
    # the per-customer figures add up to the sums the choice was made on
    label = chosen["active"].label()
    assert per.of(label)[:, 0].sum() == pytest.approx(sums[label][:, 2].sum())
    assert figures["groups"]["active"]["methods"]["model"] == figures["groups"]["active"]["plans"][label]
    # every cold buyer's popular list starts with the two articles bought: AP 1 and recall 1 for each
    assert got["cold"]["model"] == {f"map@{K}": [1.0, 1.0], f"recall@{K}": [1.0, 1.0]}
    for group, methods in [("all", figures["methods"]), ("cold", figures["groups"]["cold"]["methods"]),
                           ("active", figures["groups"]["active"]["methods"])]:
        assert set(got[group]) == set(methods) == {"model", "popularity", "popularity_segment", "repurchase"}
        for method, values in methods.items():
            for metric in (f"map@{K}", f"recall@{K}"):
                low, high = got[group][method][metric]
                assert low <= values[metric] <= high, (group, method, metric)
    assert got["all"]["model"][f"map@{K}"] == [1.0, 1.0]  # the chosen plans find every purchase at the top
    low, high = got["all"]["popularity"][f"map@{K}"]
    assert low < figures["methods"]["popularity"][f"map@{K}"] < high  # popular suits the cold buyers only: some width
