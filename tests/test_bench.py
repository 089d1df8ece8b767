"""Pieces of the benchmarks with known answers (the benchmarks themselves print figures, not assertions)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from hmrec.bench.rankers import held_out_figures
from hmrec.bench.warm import week_rows
from hmrec.bench.weekly import cut_transactions
from hmrec.rank import sources as S
from hmrec.rank.ranker import WeekFrames, held_out
from tests.conftest import make_cfg


def test_cut_transactions_keeps_the_header_and_the_rows_of_the_window(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("t_dat,customer_id,article_id,price,sales_channel_id\n"
                   "2020-09-01,a,1,0.1,1\n2020-09-08,b,2,0.2,2\n2020-09-09,c,3,0.3,1\n2020-09-15,d,4,0.4,2\n"
                   "2020-09-16,e,5,0.5,1\n")
    out = tmp_path / "week" / "transactions_train.csv"
    assert cut_transactions(src, out, dt.date(2020, 9, 8), dt.date(2020, 9, 16)) == 3
    lines = out.read_text().splitlines()
    assert lines[0].startswith("t_dat,") and [line[:10] for line in lines[1:]] == ["2020-09-08", "2020-09-09", "2020-09-15"]
    assert cut_transactions(src, tmp_path / "before.csv", None, dt.date(2020, 9, 8)) == 1


def test_the_rankers_figures_count_every_held_out_buyer_and_rank_only_their_candidates(tmp_path):
    cfg = make_cfg(tmp_path / "lake", "rank.valid_share=0.5", "rank.seed=3")
    ids = np.arange(40)
    out = ids[held_out(ids, 0.5, 3)]
    assert len(out) >= 2
    hit, missing = int(out[0]), int(out[1])  # the first held-out buyer's candidates hold its purchase; the second has none
    actual = pd.DataFrame({"customer_idx": ids, "actual": [[100 + int(c)] for c in ids]})
    valid = pd.DataFrame({"customer_idx": [hit, hit, hit], "article_idx": [7, 100 + hit, 8]})
    for source in S.SOURCES:
        valid[f"{source}_rank"] = 1.0
    week = WeekFrames(actual=actual, train=pd.DataFrame({"customer_idx": [], "article_idx": []}), valid=valid)
    # the purchase ranked second: average precision 1/2 for that buyer, 0 for every other held-out buyer
    figures = held_out_figures(week, np.array([0.9, 0.5, 0.1]), cfg)
    assert figures["buyers"] == len(out)
    assert figures["map@12"] == round(0.5 / len(out), 5) and figures["recall@12"] == round(1 / len(out), 5)
    assert missing != hit


def test_the_matrix_row_of_a_profile_whose_refresh_failed_the_gate_says_why():
    from hmrec.bench.matrix import matrix_rows

    methods = {"model": {"map@12": 0.12, "recall@12": 0.3}, "popularity": {"map@12": 0.04, "recall@12": 0.1},
               "repurchase": {"map@12": 0.08, "recall@12": 0.2}}
    rows = matrix_rows({"default": {"methods": methods}, "trend": {"gate_failed": "version 2 failed the gate: x"}}, 12)
    assert rows[0]["best baseline"] == "repurchase" and rows[0]["model / best baseline map@12"] == 1.5
    assert "gate failed" not in rows[0]
    assert rows[1] == {"stage": "trend", "gate failed": "version 2 failed the gate: x", "best baseline": None,
                       "plans": ""}


def test_the_warm_bench_compares_each_week_both_backtests_judged_and_flags_a_loss_past_the_goal():
    d1, d2, d3 = dt.date(2020, 9, 2), dt.date(2020, 9, 9), dt.date(2020, 9, 16)

    def fig(m, start="cold", users=100):
        return {"k": 12, "map": m, "recall": None if m is None else m * 2, "users": users, "start": start,
                "seconds": 10.0}

    warm = {d1: fig(0.1), d2: fig(0.094, "warm from v1"), d3: fig(0.2, "warm from v2")}
    cold = {d1: fig(0.1), d2: fig(0.1), d3: fig(None)}  # the cold backtest had no figures for d3
    rows = week_rows(warm, cold)
    assert [r["stage"] for r in rows] == [f"week from {d1}", f"week from {d2}"]
    assert rows[0]["warm - cold"] == 0.0 and rows[0]["within 0.005"] == "yes"
    assert rows[1]["warm - cold"] == -0.006 and rows[1]["within 0.005"] == "no"
    assert rows[1]["warm start"] == "warm from v1" and rows[1]["cold map@12"] == 0.1


def test_the_warm_bench_puts_the_served_list_beside_the_blend_week_by_week_and_on_the_mean():
    from hmrec.bench.warm import blend_rows

    d1, d2, d3 = dt.date(2020, 9, 2), dt.date(2020, 9, 9), dt.date(2020, 9, 16)

    def fig(m, blend):
        return {"k": 12, "map": m, "recall": None if m is None else 2 * m, "blend map": blend,
                "blend recall": None if blend is None else 2 * blend}

    rows = blend_rows("cold", {d2: fig(0.15, 0.10), d1: fig(0.12, 0.12), d3: fig(0.2, None)})  # d3: no blend
    assert [r["stage"] for r in rows] == [f"cold: served against blend, week from {d1}",
                                          f"cold: served against blend, week from {d2}",
                                          "cold: served against blend, mean"]
    assert rows[0]["map ratio"] == 1.0 and rows[1]["map ratio"] == 1.5 and rows[1]["recall ratio"] == 1.5
    # the mean's ratio is the ratio of the means (0.135 / 0.11), not the mean of the ratios
    assert rows[2]["served map@12"] == 0.135 and rows[2]["blend map@12"] == 0.11 and rows[2]["map ratio"] == 1.227
    assert rows[2]["blend recall@12"] == 0.22
    assert blend_rows("warm", {d1: fig(None, 0.1)}) == []
