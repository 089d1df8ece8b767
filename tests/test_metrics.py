"""Ranking metrics against values worked out by hand, including Kaggle's MAP@12 edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hmrec.evaluation import metrics as M


def test_ap_with_fewer_actual_items_than_k():
    # hits at ranks 1 and 3: (1/1 + 2/3) / min(2, 12)
    assert M.average_precision(["a", "b"], ["a", "x", "b", "y"], 12) == pytest.approx((1 + 2 / 3) / 2)


def test_ap_counts_a_repeated_prediction_once():
    assert M.average_precision(["a"], ["a", "a", "a"], 12) == pytest.approx(1.0)
    # the second 'a' is a miss, yet still takes rank 3: b's precision is 2/4
    assert M.average_precision(["a", "b"], ["x", "a", "a", "b"], 12) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_ap_without_relevant_items_is_zero():
    assert M.average_precision(["a"], ["x", "y", "z"], 12) == 0.0
    assert M.average_precision(["a"], [], 12) == 0.0


def test_ap_with_more_actual_items_than_k_divides_by_k():
    actual = [f"i{n}" for n in range(15)]
    assert M.average_precision(actual, actual[:12], 12) == pytest.approx(1.0)
    half = actual[:6] + [f"miss{n}" for n in range(6)]
    assert M.average_precision(actual, half, 12) == pytest.approx(6 / 12)


def test_ap_ignores_predictions_past_k_and_duplicate_actuals():
    assert M.average_precision(["a"], ["x", "y", "a"], 2) == 0.0
    assert M.average_precision(["a", "a", "b"], ["b"], 12) == pytest.approx(1 / 2)


def test_map_leaves_out_customers_without_purchases():
    actuals = [["a"], [], ["b", "c"]]
    predictions = [["a"], ["z"], ["c", "x"]]
    # (1.0 + (1/1)/2) / 2 customers who bought
    assert M.map_at_k(actuals, predictions, 12) == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError):
        M.map_at_k([["a"]], [], 12)


def test_recall_ndcg_hitrate_coverage_by_hand():
    assert M.recall(["a", "b", "c"], ["a", "x", "c"], 2) == pytest.approx(1 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert M.ndcg(["a", "b"], ["x", "a", "b"], 3) == pytest.approx(dcg / idcg)
    assert M.ndcg(["a"], ["a", "a"], 2) == pytest.approx(1.0)
    assert M.hitrate_at_k([["a"], ["b"], ["c"], []], [["x", "a"], ["b"], ["y"], ["c"]], 2) == pytest.approx(2 / 3)
    assert M.coverage([["a", "b"], ["b", "c"]], 10) == pytest.approx(0.3)
    assert M.coverage([["a", "b"], ["b", "c"]], 10, k=1) == pytest.approx(0.2)


def test_all_metrics_agree_with_the_single_metrics():
    actuals = [["a", "b"], ["c"], []]
    predictions = [["b", "x", "a"], ["y", "z"], ["a"]]
    got = M.all_metrics(actuals, predictions, 3, catalogue_size=8)
    assert got["recall@3"] == pytest.approx((1.0 + 0.0) / 2)
    assert got["map@3"] == pytest.approx(((1 + 2 / 3) / 2 + 0) / 2)
    assert got["hitrate@3"] == pytest.approx(0.5)
    assert got["ndcg@3"] == pytest.approx(((1 + 1 / 2) / (1 + 1 / math.log2(3)) + 0) / 2)
    assert got["coverage"] == pytest.approx(5 / 8)  # b, x, a, y, z: the third list's a counts once
    assert list(got) == M.metric_names(3)


def test_recall_curve_runs_flat_past_the_list():
    curve = M.recall_curve([["a", "b"], ["c"], []], [["x", "a", "b"], ["c"], ["q"]], 4)
    np.testing.assert_allclose(curve, [0.5, 0.75, 1.0, 1.0])
