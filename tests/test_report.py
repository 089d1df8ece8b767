"""The report and the progress lines as a reader sees them: pure rendering, no Spark."""
from __future__ import annotations

import io
import re
from contextlib import redirect_stderr

import pytest

from hmrec import progress
from hmrec.evaluation.report import NOISY_BELOW, figures_source, headline, render_html

K = 12


def metrics(recall: float, ndcg: float = 0.1, map_: float = 0.05) -> dict:
    return {f"recall@{K}": recall, f"ndcg@{K}": ndcg, f"map@{K}": map_, f"hitrate@{K}": 0.5, "coverage": 0.3}


HOLDOUT = {"model": metrics(0.386), "popularity": metrics(0.124), "repurchase": metrics(0.235),
           "model_retrieval": metrics(0.373)}
DATA = {"customers": 6860, "articles": 528, "transactions": 158942,
        "train": {"rows": 157062, "first": "2018-09-20", "last": "2020-09-15"},
        "validation": {"rows": 1853, "first": "2020-09-09", "last": "2020-09-15"},
        "holdout": {"rows": 1880, "first": "2020-09-16", "last": "2020-09-22"}}


def doc(**extra) -> dict:
    base = {"as_of": "2020-09-16", "k": K, "model_version": "3", "methods": HOLDOUT,
            "segments": {"cold": HOLDOUT, "active": HOLDOUT}, "users": {"all": 945, "cold": 60, "active": 885},
            "recall_curve": {"model": [0.1] * K}}
    base.update(extra)
    return base


def text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_the_report_leads_with_the_answer_from_the_holdout_week():
    sentence = headline(doc(data=DATA), K)
    assert "945 customers who bought in the holdout week (2020-09-16 … 2020-09-22)" in sentence
    assert "3.1x the popularity baseline (0.124)" in sentence and "1.64x re-offering recent purchases" in sentence
    page = text(render_html(doc(data=DATA), K, 100))
    assert page.index(sentence.split(":")[0]) < page.index("Data")  # the answer comes first
    assert "Figures from the holdout week" in page and "3.1x" in page
    assert "157,062" in page and "2018-09-20 … 2020-09-15" in page  # what the model saw
    assert "Glossary" in page and "NDCG@K" in page
    # the served list stops at K, said beside the curve
    assert f"hold K = {K} articles" in page


def test_small_segments_are_marked_noisy():
    page = text(render_html(doc(), K, 100))
    assert f"60 customers — noisy (fewer than {NOISY_BELOW})" in page
    assert "885 customers —" not in page and "885 customers" in page


def test_without_a_holdout_week_the_figures_come_from_the_validation_week():
    validation = {"cutoff": "2020-09-23", "users": 812, "methods": {"model": metrics(0.3), "popularity": metrics(0.1)},
                  "choices": {"score.repurchase_slots": 6}}
    d = doc(as_of="2020-09-23", methods={}, segments={}, users={}, validation=validation)
    week, methods, users, _ = figures_source(d)
    assert week == "validation week" and users == 812 and methods is validation["methods"]
    page = text(render_html(d, K, 100))
    assert "812 customers who bought in the validation week" in page and "3.0x the popularity baseline" in page
    assert "no holdout week yet" in page
    assert "Choices made on it" in page and "score.repurchase_slots" in page


def test_the_choices_of_the_validation_week_show_beside_the_holdout_figures():
    validation = {"cutoff": "2020-09-16", "users": 700, "methods": {"model": metrics(0.3)}, "choices": {"index.kind": "ivf"}}
    page = text(render_html(doc(validation=validation), K, 100))
    assert "holdout week" in page.split("Validation week")[0]
    assert "Choices made on it" in page and "ivf" in page


def test_a_document_without_any_figures_says_so():
    d = doc(methods={}, segments={}, users={})
    assert figures_source(d) is None
    assert "nothing to judge the lists on" in text(render_html(d, K, 100))


def test_done_lines_are_short_and_the_record_is_printed_at_verbose_only():
    err = io.StringIO()
    record = dict(skipped=False, articles_read=528, articles_written=528, articles_rejected=0, customers_read=6860,
                  customers_written=6860, customers_rejected=0, transactions_read=158942,
                  transactions_written=158940, transactions_rejected=2, rejects_written=2)
    try:
        for level in ("WARN", "INFO"):
            progress.configure(level)
            with redirect_stderr(err):
                with progress.stage("ingest") as summary:
                    summary.update(record)
    finally:
        progress.configure("WARN")
    quiet, verbose = err.getvalue().split("[hmrec ingest] started\n")[1:]
    done = [line for line in quiet.splitlines() if "done in" in line]
    assert done == [done[0]] and "158,940 transactions, 6,860 customers, 528 articles; 2 rows rejected" in done[0]
    assert "transactions_read=" not in quiet
    assert "record: skipped=False, articles_read=528" in verbose


def test_a_stage_without_its_own_summary_and_a_failed_one():
    assert progress.short_summary("unknown", {"a": 1234, "b": "x", "seconds": 1.0}) == "a 1,234, b x"
    assert progress.short_summary("train", {"model_version": "1"}) == "model_version 1"  # keys missing: generic
    # a refresh past the last purchase has no holdout week: evaluate's line says so
    assert progress.short_summary("evaluate", {"users": 0, "holdout": "none yet", "report": "/l/reports/2020-09-23"}) \
        == "no holdout week to evaluate yet; report /l/reports/2020-09-23/report.html (the validation week)"
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(RuntimeError):
        with progress.stage("score") as summary:
            summary["customers"] = 5
            raise RuntimeError("boom")
    assert "[hmrec score] FAILED after" in err.getvalue() and "customers=5" in err.getvalue()


def test_age_bands_and_sales_channels_get_their_own_tables_after_the_history_segments():
    segs = {"cold": HOLDOUT, "active": HOLDOUT, "age:25-34": HOLDOUT, "channel:online": HOLDOUT}
    users = {"all": 945, "cold": 60, "active": 885, "age:25-34": 412, "channel:online": 700}
    page = text(render_html(doc(segments=segs, users=users), K, 100))
    assert page.index("By purchase history") < page.index("cold") < page.index("By age band") \
        < page.index("age:25-34 412 customers") < page.index("By sales channel") < page.index("channel:online 700 customers")


def test_the_figures_tables_show_each_bootstrap_interval_below_recall_and_map():
    holdout = {"all": {"model": {f"map@{K}": [0.041, 0.059], f"recall@{K}": [0.371, 0.402]}}}
    validation = {"cutoff": "2020-09-09", "users": 700, "methods": {"model": metrics(0.3), "popularity": metrics(0.1)},
                  "intervals": {"all": {"popularity": {f"map@{K}": [0.031, 0.066], f"recall@{K}": [0.09, 0.11]}}}}
    page = text(render_html(doc(intervals=holdout, validation=validation), K, 100))
    lead, val = page.split("Validation week (")
    assert "0.386 0.371–0.402" in lead and "0.050 0.041–0.059" in lead
    assert "0.100 0.090–0.110" in val and "0.050 0.031–0.066" in val
    assert "bootstrap 95% interval over the week's buyers" in lead
    # a method without an interval shows its figure alone
    assert "0.300 —" not in val and "0.300" in val
