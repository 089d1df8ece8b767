"""The weekly refresh as its users run it: `hmrec run --append` with a directory holding only the new week.

The session's refreshed lakehouse (tests/conftest.py ``pipeline_run``: the tiny data, whose last purchase
is on 2020-09-22, refreshed at 2020-09-16) is copied, then a hand-made week 2020-09-23 .. 2020-09-29 (the
rows of the tiny data's last week moved on by seven days, plus one purchase of a new customer, whose row is
the week's customers.csv) is appended through the command line at as-of 2020-09-30.

Kept cheap so one refresh fits in ``make test``: every list setting is pinned (``score.method=blend`` and
the plan keys), so neither the fit model, the choose stage nor the ranker's stages run, and the model is
warm-started from the session's champion (14 days older) for ``train.warm_epochs`` = 1 epoch.
"""
from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from hmrec import cli, pipeline
from hmrec.etl import ingest
from hmrec.lake import manifest, storage, tables
from tests.conftest import TEST_SPARK, TINY_AS_OF, TINY_TRAIN, make_cfg
from tests.test_ingest import CUSTOMER_NAMES, TRANSACTION_NAMES, customer, line, write_csv

# The first test of a module run on its own also waits for the session's pipeline run.
pytestmark = pytest.mark.timeout(1500)

WEEK = dt.timedelta(days=7)
WEEK_START = dt.date(2020, 9, 23)  # the day after the tiny data's last purchase
NEXT_AS_OF = WEEK_START + WEEK
NEW_CUSTOMER = "f" * 64
# Every list setting pinned: no fit model, no choose stage, no ranker (see the module notes).
CHEAP = ["score.method=blend", "score.repurchase_slots=4", "score.repurchase_order=recency",
         "score.fallback=segment", "train.epochs=1"]


def write_week(tiny_data: Path, out: Path, new_customer: bool = True) -> tuple[int, dict[str, int]]:
    """The new week's directory: the rows of 2020-09-16 .. 2020-09-22 dated seven days later and, when
    ``new_customer``, one purchase of ``NEW_CUSTOMER`` on the week's last day and a customers.csv holding only
    that customer. Returns (rows written, rows per date)."""
    first = (WEEK_START - WEEK).isoformat()
    rows: list[str] = []
    with open(tiny_data / "transactions_train.csv", encoding="utf-8") as f:
        f.readline()
        for text in f:
            if text[:10] >= first:
                day = dt.date.fromisoformat(text[:10]) + WEEK
                rows.append(day.isoformat() + text.rstrip("\n")[10:])
    if new_customer:
        some_article = rows[0].split(",")[2]
        rows.append(line((NEXT_AS_OF - dt.timedelta(days=1)).isoformat(), NEW_CUSTOMER, some_article, "0.02", "1"))
        write_csv(out, "customers.csv", CUSTOMER_NAMES, [line(*customer(NEW_CUSTOMER, age="30"))])
    write_csv(out, "transactions_train.csv", TRANSACTION_NAMES, rows)
    per_day: dict[str, int] = {}
    for r in rows:
        per_day[r[:10]] = per_day.get(r[:10], 0) + 1
    return len(rows), per_day


def heads(spark, cfg) -> dict[str, int | None]:
    """The latest Delta version of every table the refresh writes (bronze, the served table, the stage runs)."""
    which = (*ingest.TABLES.values(), ingest.REJECTS_TABLE, tables.RECOMMENDATIONS, tables.STAGE_RUNS,
             tables.INGEST_MANIFESTS)
    return {t.name: storage.head_version(spark, cfg, t) for t in which}


def test_run_append_refreshes_on_the_new_week_and_a_second_append_writes_nothing(
        spark, pipeline_run, tiny_data, tmp_path, capsys):
    cfg0 = pipeline_run[0]
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN, *CHEAP)
    n_week, per_day = write_week(tiny_data, tmp_path / "week")
    assert sorted(per_day) == [(WEEK_START + dt.timedelta(days=i)).isoformat() for i in range(7)]

    tx_before = storage.read(spark, cfg, tables.TRANSACTIONS).count()
    n_customers = storage.read(spark, cfg, tables.CUSTOMERS).count()
    served_before = sorted(tuple(r) for r in storage.read(spark, cfg, tables.RECOMMENDATIONS).collect())
    assert {r[-1] for r in served_before} == {TINY_AS_OF}
    seq = manifest.latest(cfg).seq

    argv = ["run", "--data", str(tmp_path / "week"), "--as-of", NEXT_AS_OF.isoformat(), "--append"]
    for assignment in (f"paths.lakehouse={lake}", *TEST_SPARK, *TINY_TRAIN, *CHEAP):
        argv += ["--set", assignment]
    capsys.readouterr()
    assert cli.main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err

    # bronze grew by exactly the week, recorded as one append batch of its dates
    assert storage.read(spark, cfg, tables.TRANSACTIONS).count() == tx_before + n_week
    customers = storage.read(spark, cfg, tables.CUSTOMERS)
    assert customers.count() == n_customers + 1 and customers.where(F.col("customer_id") == NEW_CUSTOMER).count() == 1
    m = manifest.latest(cfg)
    assert m.seq == seq + 1
    assert m.batch["mode"] == "append" and m.batch["dates"] == [WEEK_START.isoformat(), "2020-09-29"]
    assert m.batch["written"] == n_week and m.batch["customers_inserted"] == 1
    assert {d: v[0] for d, v in m.batch["days"].items()} == per_day
    # the model started from the champion's weights; the new customer is the one new row
    assert re.search(r"warm start from v\d+: [\d,]+ customer rows copied, 1 new;", err), err[-3000:]

    # the served table holds the lists of the new as-of: exactly K distinct articles for every customer
    served = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    assert {r["as_of"] for r in served.select("as_of").distinct().collect()} == {NEXT_AS_OF}
    per = served.groupBy("customer_id").agg(F.count("*").alias("n"), F.countDistinct("article_id").alias("d"))
    assert per.count() == n_customers + 1
    assert per.where((F.col("n") != cfg.score.k) | (F.col("d") != cfg.score.k)).count() == 0
    assert per.join(customers, "customer_id", "left_anti").count() == 0
    # the lists of the previous as-of stay readable, as they were served
    assert sorted(tuple(r) for r in storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, TINY_AS_OF).collect()) \
        == served_before

    # the same command again: the same files, every stage done; not one table gets a commit
    before = heads(spark, cfg)
    assert cli.main(argv) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert heads(spark, cfg) == before
    assert "input files unchanged since the last ingest, nothing written" in err
    # evaluate too: with no holdout week yet and every setting pinned its report is its only output
    assert ("ran none; skipped (already done) features, split, popularity, train, index, gate, score, evaluate, "
            "card") in err


def test_a_refresh_after_an_append_keeps_the_fit_stages_of_the_previous_as_of(spark, pipeline_run, tiny_data,
                                                                              tmp_path, capsys):
    """The weekly refresh at WEEK_START (the session's as-of + 7) after the week before it was appended: its fit
    cutoff is the session's as-of, whose features, split and popularity were made by the session's refresh on
    the same rows before it, so they are still done; a batch that adds a customer changes what they read."""
    cfg0 = pipeline_run[0]
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN)
    fit_at = TINY_AS_OF
    assert pipeline.fit_cutoff(cfg, WEEK_START) == fit_at
    write_week(tiny_data, tmp_path / "week", new_customer=False)
    runs_before = storage.read(spark, cfg, tables.STAGE_RUNS).where(F.col("as_of") == F.lit(fit_at)).count()

    capsys.readouterr()
    results = pipeline.run(cfg, spark, data_dir=str(tmp_path / "week"), as_of=WEEK_START, append=True,
                           until="popularity@fit")
    err = capsys.readouterr().err
    assert {"ingest", "features", "split", "popularity"} <= set(results)
    assert not {"features@fit", "split@fit", "popularity@fit"} & set(results), err[-3000:]
    added = f"only on {WEEK_START} .. 2020-09-29, on or after"
    for key, limit in (("features@fit", fit_at), ("split@fit", WEEK_START), ("popularity@fit", fit_at)):
        assert re.search(rf"{re.escape(key)}: already done for {fit_at} with these settings; bronze data changed "
                         rf"\(\w+ -> \w+\) {added} {limit}, which it does not read, skipped", err), (key, err[-3000:])
    # nothing was written at the fit cutoff
    assert storage.read(spark, cfg, tables.STAGE_RUNS).where(F.col("as_of") == F.lit(fit_at)).count() == runs_before

    # a second batch holds a new customer: every customer's features at the fit cutoff may change
    write_week(tiny_data, tmp_path / "customer")
    day_after = (NEXT_AS_OF - dt.timedelta(days=1)).isoformat()
    rows = [r for r in (tmp_path / "customer" / "transactions_train.csv").read_text().splitlines()[1:]
            if NEW_CUSTOMER in r]
    write_csv(tmp_path / "customer", "transactions_train.csv", TRANSACTION_NAMES,
              [r.replace(day_after, NEXT_AS_OF.isoformat(), 1) for r in rows])
    capsys.readouterr()
    results = pipeline.run(cfg, spark, data_dir=str(tmp_path / "customer"), as_of=WEEK_START, append=True,
                           until="popularity@fit")
    err = capsys.readouterr().err
    assert {"features@fit", "split@fit", "popularity@fit"} <= set(results)
    assert re.search(rf"features@fit at {fit_at}: runs again, bronze data changed \(ingest manifest", err), err[-3000:]
