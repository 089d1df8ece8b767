"""The gate's decisions and the rollback's choice of version, on hand-made figures with known answers.

The gate and publishing on a real lakehouse are tested on the pipeline run in
tests/test_pipeline.py.
"""
from __future__ import annotations

import datetime as dt
import math

import pytest

from hmrec.config import load_config
from hmrec.errors import GateFailed
from hmrec.governance.card import exposure, gini, lifts, render_md
from hmrec.governance.gate import failure, judge, lift, ranker_figures
from hmrec.governance.publish import origins, rollback_target

AS_OF = dt.date(2020, 9, 16)
GATE = load_config(None, []).gate  # min_lift 1.0, tolerance 0.2, max_fallback_share 0.9, min_coverage 0.01
SANE = {"embeddings_finite": True, "fallback_share": 0.2, "customers": 1000}


def figures(model_map: float, popularity_map: float, coverage: float = 0.3) -> dict:
    return {"users": 500, "methods": {"model": {"map@12": model_map, "recall@12": 0.3, "coverage": coverage},
                                      "popularity": {"map@12": popularity_map, "recall@12": 0.1, "coverage": 0.02}}}


def test_the_defaults_are_the_documented_ones():
    assert (GATE.min_lift, GATE.tolerance, GATE.max_fallback_share, GATE.min_coverage) == (1.0, 0.2, 0.9, 0.01)


def test_lift_over_popularity():
    assert lift(0.06, 0.02) == pytest.approx(3.0)
    assert lift(0.01, 0.0) == math.inf
    assert lift(0.0, 0.0) is None
    assert lift(None, 0.02) is None


def test_a_model_well_above_popularity_and_the_champion_passes():
    d = judge("7", AS_OF, figures(0.06, 0.02), SANE, champion="5", champion_lift=2.8, gate=GATE, k=12)
    assert d.passed and d.reasons == [] and d.notes == []
    assert d.figures["validation_lift"] == pytest.approx(3.0)
    tags = d.tags()
    assert tags["gate.decision"] == "passed" and tags["gate.champion"] == "5"
    assert float(tags["gate.validation_lift"]) == pytest.approx(3.0)


def test_a_model_worse_than_popularity_fails_and_the_error_says_what_stays_served():
    d = judge("7", AS_OF, figures(0.01, 0.02), SANE, champion="5", champion_lift=2.0, gate=GATE, k=12)
    assert not d.passed
    assert any("0.50x popularity" in r and "gate.min_lift 1" in r for r in d.reasons), d.reasons
    exc = failure(d)
    assert isinstance(exc, GateFailed) and exc.exit_status == 4 and exc.decision is d
    assert "version 5" in str(exc) and "hmrec promote --version 7" in str(exc)
    assert d.tags()["gate.decision"] == "failed"


def test_the_champion_sets_the_bar_within_the_tolerance():
    # 3.0 x (1 - 0.2) = 2.4: a lift of 2.5 is within the tolerance, 2.3 is not
    ok = judge("7", AS_OF, figures(0.05, 0.02), SANE, champion="5", champion_lift=3.0, gate=GATE, k=12)
    assert ok.passed, ok.reasons
    worse = judge("7", AS_OF, figures(0.046, 0.02), SANE, champion="5", champion_lift=3.0, gate=GATE, k=12)
    assert not worse.passed
    assert worse.reasons == ["validation lift 2.30x is more than gate.tolerance 20% below the champion's "
                             "(version 5: 3.00x)"]


def test_the_first_version_and_a_champion_without_a_recorded_lift_are_held_to_min_lift_only():
    first = judge("1", AS_OF, figures(0.03, 0.02), SANE, champion=None, champion_lift=None, gate=GATE, k=12)
    assert first.passed and first.notes == ["no champion lift to compare with (no champion yet)"]
    by_hand = judge("2", AS_OF, figures(0.03, 0.02), SANE, champion="1", champion_lift=None, gate=GATE, k=12)
    assert by_hand.passed and "version 1 has none recorded" in by_hand.notes[0]


@pytest.mark.parametrize("sanity, coverage, expected", [
    ({**SANE, "embeddings_finite": "article_id 0108775015 has a NaN embedding"}, 0.3, "item embeddings are not usable"),
    ({**SANE, "fallback_share": 0.95}, 0.3, "95.0% of customers have too little history for the model"),
    (SANE, 0.004, "hold 0.40% of the catalogue, less than gate.min_coverage 1.00%"),
])
def test_each_sanity_check_fails_the_gate_on_its_own(sanity, coverage, expected):
    d = judge("7", AS_OF, figures(0.06, 0.02, coverage), sanity, champion=None, champion_lift=None, gate=GATE, k=12)
    assert not d.passed and len(d.reasons) == 1 and expected in d.reasons[0], d.reasons


def test_lists_as_narrow_as_the_age_segments_popular_lists_pass_the_coverage_check():
    # on data where this week's best-sellers are the best list, the chosen lists are the segments' popular
    # ones: 0.55% of the catalogue, below gate.min_coverage 1%, and as wide as segment popularity's lists
    narrow = figures(0.06, 0.02, coverage=0.0055)
    narrow["methods"]["popularity_segment"] = {"map@12": 0.05, "recall@12": 0.2, "coverage": 0.0055}
    d = judge("7", AS_OF, narrow, SANE, champion=None, champion_lift=None, gate=GATE, k=12)
    assert d.passed, d.reasons
    assert any("0.55% of the catalogue" in n and "accepted" in n for n in d.notes), d.notes
    # narrower than both the floor and the segments' lists (one list for nearly everybody): refused
    narrow["methods"]["popularity_segment"]["coverage"] = 0.009
    d = judge("7", AS_OF, narrow, SANE, champion=None, champion_lift=None, gate=GATE, k=12)
    assert not d.passed and "less than the age segments' popularity lists (0.90%)" in d.reasons[0], d.reasons
    # the ranker's figures carry the segments' coverage from the choose stage's, so it judges the same way
    judged = ranker_figures(narrow, {"ranker": 0.06, "blend": 0.05, "popularity": 0.02, "users": 300}, 12)
    assert judged["methods"]["popularity_segment"] == {"coverage": 0.009}


def test_without_validation_figures_quality_is_not_judged_and_says_so():
    d = judge("7", AS_OF, None, SANE, champion="5", champion_lift=3.0, gate=GATE, k=12)
    assert d.passed
    assert any(n.startswith("quality not judged: no validation figures") for n in d.notes), d.notes
    assert d.tags()["gate.notes"].count("not judged") == 2  # quality and coverage
    empty = judge("7", AS_OF, {"reason": "no purchase in the validation week"}, SANE, None, None, GATE, 12)
    assert "quality not judged: no purchase in the validation week" in empty.notes


def _history(*ops):
    """Delta history rows: ('W',) a write, ('R', v) a restore of version v; versions 0, 1, ..."""
    return [{"version": i, "operation": "RESTORE" if op[0] == "R" else "WRITE",
             "restored": op[1] if op[0] == "R" else None} for i, op in enumerate(ops)]


def test_a_champion_judged_on_the_same_week_sets_the_bar_instead_of_its_recorded_lift():
    # its recorded lift (6x, from a week where popularity did badly) would fail a 3x challenger; on the same
    # week its published lists reach 0.05, and 0.06 is above 0.05 x 0.8
    same = {"map@12": 0.05, "recall@12": 0.2, "users": 480, "as_of": "2020-09-09"}
    d = judge("7", AS_OF, figures(0.06, 0.02), SANE, "5", 6.0, GATE, 12, champion_week=same)
    assert d.passed and d.figures["champion_same_week_map@12"] == 0.05
    assert d.figures["champion_same_week_users"] == 480
    assert not judge("7", AS_OF, figures(0.06, 0.02), SANE, "5", 6.0, GATE, 12).passed  # the recorded lift alone
    # 0.039 < 0.05 x 0.8 = 0.04: more than the tolerance below the champion's lists on that week
    d = judge("7", AS_OF, figures(0.039, 0.01), SANE, "5", 1.0, GATE, 12, champion_week=same)
    assert not d.passed and any("champion's published lists on the same week" in r and "0.0500" in r
                                for r in d.reasons), d.reasons


def test_with_the_ranker_served_its_own_lift_is_judged_and_the_coverage_is_the_choose_stages():
    # the blend's lists are 2x popularity; the ranker's, on its held-out buyers, 0.9x: the served list fails
    maps = {"ranker": 0.018, "blend": 0.017, "popularity": 0.02, "users": 300}
    judged = ranker_figures(figures(0.04, 0.02, coverage=0.25), maps, 12)
    assert judged["users"] == 300 and judged["list"] == "ranker"
    assert judged["methods"]["model"] == {"map@12": 0.018, "coverage": 0.25}
    d = judge("7", AS_OF, judged, SANE, champion=None, champion_lift=None, gate=GATE, k=12)
    assert not d.passed and d.figures["validation_lift"] == pytest.approx(0.9)
    assert d.figures["validation_users"] == 300
    # without choose figures the coverage is not judged, and the note says so
    d = judge("7", AS_OF, ranker_figures(None, {**maps, "ranker": 0.05}, 12), SANE, None, None, GATE, 12)
    assert d.passed and d.figures["validation_lift"] == pytest.approx(2.5)
    assert any("coverage not judged" in n for n in d.notes)


def test_rollback_goes_back_one_publish_each_time():
    h = _history(("W",), ("W",), ("W",))  # lists A, B, C
    assert rollback_target(h) == (2, 1)
    h = _history(("W",), ("W",), ("W",), ("R", 1))  # B again
    assert origins(h)[3] == 1
    assert rollback_target(h) == (3, 0)  # A, not back to C
    h = _history(("W",), ("W",), ("W",), ("R", 1), ("R", 0))
    with pytest.raises(Exception, match="nothing earlier to roll back to"):
        rollback_target(h)
    # a publish after a rollback: the rollback's state is the one before it
    h = _history(("W",), ("W",), ("R", 0), ("W",))
    assert rollback_target(h) == (3, 2) and origins(h)[2] == 0


def test_rollback_of_the_first_publish_is_refused():
    with pytest.raises(Exception, match="first lists ever published"):
        rollback_target(_history(("W",)))


def test_gini_of_exposure():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 8]) == pytest.approx(3 / 4)
    assert gini([]) == 0.0 and gini([0, 0]) == 0.0
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)


def test_exposure_of_hand_made_lists():
    catalogue = [f"{i:010d}" for i in range(200)]
    bought = {a: 200 - i for i, a in enumerate(catalogue)}  # article 0 most bought, then 1, ...
    slots = [catalogue[0]] * 6 + [catalogue[1]] * 2 + [catalogue[2]] * 2  # the top 1% is 2 articles: 0 and 1
    out = exposure(slots, catalogue, bought, {"model": 7, "popular": 3})
    assert out["slots"] == 10 and out["top_articles"] == 2
    assert out["top_articles_slot_share"] == pytest.approx(0.8)
    assert out["catalogue_coverage"] == pytest.approx(3 / 200)
    assert out["source_share"] == {"model": 0.7, "popular": 0.3}


def test_lifts_over_each_baseline():
    methods = {"model": {"map@12": 0.06}, "popularity": {"map@12": 0.02}, "repurchase": {"map@12": 0.0}}
    assert lifts(methods, 12) == {"popularity": 3.0, "repurchase": None}


def test_bootstrap_interval_of_a_mean():
    import numpy as np

    from hmrec.evaluation.metrics import bootstrap_interval

    assert bootstrap_interval(np.full(50, 0.25)) == [0.25, 0.25]  # no spread, no width
    values = np.r_[np.zeros(500), np.ones(500)]  # mean 0.5, standard error 0.5 / sqrt(1000) = 0.0158
    low, high = bootstrap_interval(values)
    assert low < 0.5 < high
    assert high - low == pytest.approx(2 * 1.96 * 0.0158, rel=0.15)
    assert bootstrap_interval(values) == [low, high]  # seeded
    assert bootstrap_interval(np.array([])) == [0.0, 0.0]


def _card() -> dict:
    """A card as build_card makes it, with hand-made figures (K = 12)."""
    m = (lambda mp, r: {"recall@12": r, "ndcg@12": 0.1, "map@12": mp, "coverage": 0.2})
    iv = (lambda lo, hi: {"map@12": [lo, hi], "recall@12": [lo + 0.1, hi + 0.1]})
    methods = {"model": m(0.06, 0.3), "popularity": m(0.02, 0.1)}
    return {
        "model_details": {"name": "hmrec-two-tower", "version": "4", "as_of": "2020-09-16"},
        "training_data": {"training_rows": {"rows": 10, "first_day": "2020-06-18", "last_day": "2020-09-15",
                                            "customers": 3, "articles": 4},
                          "training_window_days": 90, "catalogue_articles": 5, "customers": 6, "table_versions": {}},
        "evaluation": {
            "k": 12,
            "validation": {"week": "2020-09-09 .. 2020-09-15", "fit_model_version": "3", "served_list": "ranker",
                           "customers": 500, "methods": methods, "lift_over": lifts(methods, 12),
                           "intervals": {"all": {"model": iv(0.0512, 0.0688)}, "cold": {"model": iv(0.011, 0.019)}},
                           "groups": {"cold": {"users": 120, "chosen": "popular segment",
                                               "methods": {"model": m(0.015, 0.05)}, "lift_over": {}}},
                           "ranker": {"served": True, "customers": 100, "lift_of": "ranker",
                                      "methods": {"ranker": m(0.07, 0.31), "blend": m(0.05, 0.3)},
                                      "lift_over": {"blend": 1.4},
                                      "groups": {"active": {"users": 60, "ranker": {"map@12": 0.09}}},
                                      "intervals": {"all": {"ranker": iv(0.0601, 0.0799)},
                                                    "active": {"ranker": iv(0.0702, 0.1103)}},
                                      "active_days": {"chosen": 91, "why": "within 0.005",
                                                      "map@12": {"28": 0.061, "91": 0.0699, "0": 0.07}}}},
            "holdout": {"week": "2020-09-16 .. 2020-09-22", "customers": {"all": 900, "age:25-34": 310,
                                                                         "channel:online": 420},
                        "methods": methods, "lift_over": lifts(methods, 12),
                        "segments": {"age:25-34": {"model": m(0.0731, 0.3)}, "channel:online": {"model": m(0.0412, 0.3)}},
                        "intervals": {"all": {}, "age:25-34": {"model": iv(0.0655, 0.0807)},
                                      "channel:online": {"model": iv(0.0333, 0.0491)}},
                        "segment_lift_over": {}}},
        "exposure": None, "intended_use": [], "out_of_scope": [], "limitations": [], "gate": {}}


def test_the_card_shows_every_segment_and_the_validation_intervals():
    md = render_md(_card())
    assert "#### By age band" in md and "Segment age:25-34 (310 customers):" in md
    assert "| model | 0.3000 | 0.1000 | 0.0731 | 0.2000 | 0.1655 .. 0.1807 | 0.0655 .. 0.0807 |" in md
    assert "#### By sales channel" in md and "Segment channel:online (420 customers):" in md
    assert "0.0333 .. 0.0491" in md
    assert md.index("By age band") < md.index("By sales channel")
    # the validation week: the served lists' intervals overall and per group, and the ranker's own
    assert "| model | 0.3000 | 0.1000 | 0.0600 | 0.2000 | 0.1512 .. 0.1688 | 0.0512 .. 0.0688 |" in md
    assert "Group cold (120 buyers, recipe popular segment):" in md and "0.0110 .. 0.0190" in md
    assert "scoring serves the ranker's lists" in md and "held-out buyers (100 buyers" in md
    assert "0.0601 .. 0.0799" in md and "Group active (60 held-out buyers):" in md and "0.0702 .. 0.1103" in md
    assert "| blend | 0.3000 | 0.1000 | 0.0500 | 0.2000 | - | - | 1.4000 |" in md
    assert ("Served candidates: the customers who bought within 91 days before the as-of (within 0.005; the others "
            "get the popularity list). Held-out MAP@12 by window: 28 days 0.0610, 91 days 0.0699, every buyer "
            "0.0700.") in md


def test_the_cards_ranker_figures_come_from_ranker_json_in_the_groups_and_lists_order(monkeypatch):
    from hmrec.governance.card import ranker_validation
    from hmrec.rank import ranker

    iv = {"map@12": [0.1, 0.3], "recall@12": [0.2, 0.4]}
    recorded = {"users": 30, "blend": {"map@12": 0.1, "users": 30}, "popularity": {"map@12": 0.05, "users": 30},
                "ranker": {"map@12": 0.2, "users": 30},
                "groups": {"active": {"blend": {"map@12": 0.1}, "ranker": {"map@12": 0.25}, "users": 28},
                           "cold": {"blend": {"map@12": 0.0}, "ranker": {"map@12": 0.0}, "users": 2}},
                "intervals": {"active": {"blend": iv, "ranker": iv}, "all": {"blend": iv, "ranker": iv}}}
    monkeypatch.setattr(ranker, "has_ranker", lambda cfg, version: True)
    monkeypatch.setattr(ranker, "load_ranker", lambda cfg, version: (None, {"validation": recorded}))
    monkeypatch.setattr(ranker, "validation_maps", lambda cfg, version: {"ranker": 0.2, "blend": 0.1})
    cfg = load_config(None, [])  # score.method: ranker
    got = ranker_validation(cfg, "4", 12)
    assert got["served"] is True and got["lift_of"] == "ranker" and got["customers"] == 30
    assert list(got["methods"]) == ["ranker", "blend", "popularity"] and got["methods"]["blend"] == {"map@12": 0.1}
    assert got["lift_over"] == {"blend": 2.0, "popularity": 4.0}
    assert list(got["groups"]) == ["cold", "active"] and list(got["groups"]["active"]) == ["users", "ranker", "blend"]
    assert list(got["intervals"]) == ["all", "active"] and list(got["intervals"]["all"]) == ["ranker", "blend"]
    blend = ranker_validation(load_config(None, ["score.method=blend"]), "4", 12)
    assert blend["served"] is False and blend["lift_over"] == {"ranker": 0.5, "popularity": 2.0}
