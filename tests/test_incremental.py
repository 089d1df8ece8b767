"""Incremental ingest: a grown transactions file, an --append batch, changed earlier rows, catalogue upserts.

Hand-made files whose right answer is known: 10 articles, 12 customers, four
purchases a day from 2020-08-01; each test copies one lakehouse ingested from
the first 21 days (``base_lake``) and ingests more.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from hmrec.errors import InputError
from hmrec.etl import features, ingest
from hmrec.lake import manifest, storage, tables
from tests.conftest import aid, cid, make_cfg
from tests.test_ingest import ARTICLE_NAMES, CUSTOMER_NAMES, TRANSACTION_NAMES, article, customer, line, write_csv

START = dt.date(2020, 8, 1)
PER_DAY = 4
N_ARTICLES, N_CUSTOMERS = 10, 12


def day(i: int) -> str:
    return (START + dt.timedelta(days=i)).isoformat()


def tx_rows(first: int, last: int) -> list[str]:
    """The purchases of days ``first`` .. ``last`` (0 = 2020-08-01), PER_DAY a day, in date order."""
    out = []
    for d in range(first, last + 1):
        for k in range(PER_DAY):
            c, a = 1 + (d * PER_DAY + k) % N_CUSTOMERS, 1 + (d + 3 * k) % N_ARTICLES
            out.append(line(day(d), cid(c), aid(a), f"0.0{1 + k}", str(1 + k % 2)))
    return out


def article_rows(n: int = N_ARTICLES, **changed: dict) -> list[str]:
    return [line(*article(aid(i), **changed.get(aid(i), {}))) for i in range(1, n + 1)]


def customer_rows(ids, ages: dict | None = None) -> list[str]:
    ages = ages or {}
    return [line(*customer(cid(i), age=ages.get(i, str(20 + i)))) for i in ids]


def write_data(directory: Path, tx: list[str], articles: list[str] | None = None,
               customers: list[str] | None = None) -> Path:
    write_csv(directory, "transactions_train.csv", TRANSACTION_NAMES, tx)
    if articles is not None:
        write_csv(directory, "articles.csv", ARTICLE_NAMES, articles)
    if customers is not None:
        write_csv(directory, "customers.csv", CUSTOMER_NAMES, customers)
    return directory


def full_data(directory: Path, last_day: int) -> Path:
    return write_data(directory, tx_rows(0, last_day), article_rows(), customer_rows(range(1, N_CUSTOMERS + 1)))


@pytest.fixture(scope="module")
def base_lake(spark, tmp_path_factory) -> Path:
    """An ingest of days 0..20 (84 purchases)."""
    lake = tmp_path_factory.mktemp("incr") / "lake"
    summary = ingest.ingest(make_cfg(lake), spark, data_dir=str(full_data(lake.parent / "data", 20)))
    assert summary["mode"] == "whole" and summary["transactions_written"] == 21 * PER_DAY
    return lake


def copy(base: Path, tmp_path: Path) -> tuple:
    lake = tmp_path / "lake"
    shutil.copytree(base, lake)
    return make_cfg(lake), lake


def bronze(spark, cfg) -> dict:
    """What readers see: (version, sorted rows) of each bronze table but the rejects."""
    out = {}
    for t in (tables.ARTICLES, tables.CUSTOMERS, tables.TRANSACTIONS):
        rows = sorted(tuple(r) for r in storage.read(spark, cfg, t).collect())
        out[t.name] = (storage.version(spark, cfg, t), rows)
    return out


def heads(spark, cfg) -> dict:
    return {t.name: storage.head_version(spark, cfg, t) for t in (*ingest.TABLES.values(), ingest.REJECTS_TABLE)}


def test_day_stats_are_order_free_and_count_repeated_rows(spark, tmp_path):
    rows = tx_rows(0, 1)
    a = write_data(tmp_path / "a", rows)
    b = write_data(tmp_path / "b", rows[::-1])
    c = write_data(tmp_path / "c", rows + [rows[0]])
    header = TRANSACTION_NAMES
    stats = [ingest.day_stats(ingest.read_csv(spark, str(d / "transactions_train.csv"), header)) for d in (a, b, c)]
    assert stats[0] == stats[1]
    assert set(stats[0]) == {day(0), day(1)} and stats[0][day(0)][0] == PER_DAY
    assert stats[2][day(0)][0] == PER_DAY + 1 and stats[2][day(0)][1] != stats[0][day(0)][1]
    assert stats[2][day(1)] == stats[0][day(1)]


def test_a_grown_file_appends_only_its_new_days_in_one_commit(spark, base_lake, tmp_path, capsys):
    cfg, _ = copy(base_lake, tmp_path)
    before, head_before = bronze(spark, cfg), heads(spark, cfg)
    seq = manifest.latest(cfg).seq
    data = full_data(tmp_path / "data", 27)  # the same 21 days and 7 more
    capsys.readouterr()
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    assert summary["mode"] == "grown" and summary["skipped"] is False
    assert summary["transactions_read"] == 7 * PER_DAY and summary["transactions_written"] == 7 * PER_DAY
    after = bronze(spark, cfg)
    assert len(after[tables.TRANSACTIONS.name][1]) == 28 * PER_DAY
    assert set(before[tables.TRANSACTIONS.name][1]) <= set(after[tables.TRANSACTIONS.name][1])
    assert heads(spark, cfg)[tables.TRANSACTIONS.name] == head_before[tables.TRANSACTIONS.name] + 1
    # the catalogue files are new files with the same rows: merged, nothing changed
    assert (summary["customers_inserted"], summary["customers_updated"]) == (0, 0)
    assert after[tables.CUSTOMERS.name][1] == before[tables.CUSTOMERS.name][1]
    m = manifest.latest(cfg)
    assert m.seq == seq + 1 and m.rows[tables.TRANSACTIONS.name] == 28 * PER_DAY
    assert m.batch["mode"] == "grown" and m.batch["dates"] == [day(21), day(27)] and m.batch["written"] == 28
    assert m.batch["days"][day(21)][0] == PER_DAY and len(m.days) == 28
    assert f"appended {7 * PER_DAY} rows of {day(21)} .. {day(27)}" in capsys.readouterr().err

    # the same file touched: nothing new, nothing written, said in one line
    f = data / "transactions_train.csv"
    os.utime(f, (f.stat().st_atime, f.stat().st_mtime + 60))
    again = ingest.ingest(cfg, spark, data_dir=str(data))
    assert again["skipped"] is True and again["mode"] == "unchanged" and again["manifest_id"] == m.manifest_id
    assert f"transactions_train.csv: no new rows (every date up to {day(27)} matches" in capsys.readouterr().err
    assert bronze(spark, cfg) == after


def test_a_changed_earlier_row_is_found_and_the_file_ingested_whole(spark, base_lake, tmp_path, capsys):
    cfg, _ = copy(base_lake, tmp_path)
    rows = tx_rows(0, 27)
    rows[2 * PER_DAY + 1] = rows[2 * PER_DAY + 1].replace(",0.02,", ",0.09,")  # a price of 2020-08-03
    data = write_data(tmp_path / "data", rows, article_rows(), customer_rows(range(1, N_CUSTOMERS + 1)))
    capsys.readouterr()
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    err = capsys.readouterr().err
    assert summary["mode"] == "whole" and summary["transactions_written"] == 28 * PER_DAY
    assert (f"transactions_train.csv: rows of {day(2)} changed: the same {PER_DAY} rows in number, but their "
            f"checksum differs") in err
    assert "ingesting it whole" in err
    prices = {r["price"] for r in storage.read(spark, cfg, tables.TRANSACTIONS).where(F.col("t_dat") == day(2)).collect()}
    assert 0.09 in prices

    # a removed row of an earlier day is named with both counts
    cfg2, _ = copy(base_lake, tmp_path / "second")
    rows = tx_rows(0, 27)
    del rows[5 * PER_DAY]
    data = write_data(tmp_path / "data2", rows, article_rows(), customer_rows(range(1, N_CUSTOMERS + 1)))
    summary = ingest.ingest(cfg2, spark, data_dir=str(data))
    assert summary["mode"] == "whole" and summary["transactions_written"] == 28 * PER_DAY - 1
    assert f"rows of {day(5)} changed: {PER_DAY - 1:,} rows where {PER_DAY:,} were ingested" in capsys.readouterr().err


def test_appending_the_same_week_twice_gives_the_same_table(spark, base_lake, tmp_path, capsys):
    cfg, _ = copy(base_lake, tmp_path)
    week = write_data(tmp_path / "week", tx_rows(21, 27))
    first = ingest.ingest(cfg, spark, data_dir=str(week), append=True)
    assert first["mode"] == "append" and first["transactions_written"] == 7 * PER_DAY
    once = bronze(spark, cfg)
    assert len(once[tables.TRANSACTIONS.name][1]) == 28 * PER_DAY
    m = manifest.latest(cfg)
    assert m.batch["mode"] == "append" and m.batch["dates"] == [day(21), day(27)]

    assert ingest.ingest(cfg, spark, data_dir=str(week), append=True)["skipped"] is True  # the same files
    copied = tmp_path / "week-again"
    shutil.copytree(week, copied)  # the same rows in other files
    capsys.readouterr()
    again = ingest.ingest(cfg, spark, data_dir=str(copied), append=True)
    assert again["skipped"] is True and again["manifest_id"] == m.manifest_id
    assert "no new rows" in capsys.readouterr().err
    assert bronze(spark, cfg) == once

    # a batch overlapping the last one: its repeated days are left out, its new days appended
    overlap = write_data(tmp_path / "overlap", tx_rows(25, 29))
    summary = ingest.ingest(cfg, spark, data_dir=str(overlap), append=True)
    assert summary["transactions_read"] == 2 * PER_DAY and summary["transactions_written"] == 2 * PER_DAY
    assert len(bronze(spark, cfg)[tables.TRANSACTIONS.name][1]) == 30 * PER_DAY

    # then the whole data set, its file grown to the same days, is nothing new
    grown = bronze(spark, cfg)
    summary = ingest.ingest(cfg, spark, data_dir=str(full_data(tmp_path / "whole", 29)))
    assert summary["skipped"] is True and summary["mode"] == "unchanged"
    assert bronze(spark, cfg) == grown


def test_an_append_repeating_a_day_with_other_rows_is_refused_naming_it(spark, base_lake, tmp_path):
    cfg, _ = copy(base_lake, tmp_path)
    before, head_before = bronze(spark, cfg), heads(spark, cfg)
    rows = tx_rows(20, 24)[1:]  # 2020-08-21 lost a row
    with pytest.raises(InputError) as err:
        ingest.ingest(cfg, spark, data_dir=str(write_data(tmp_path / "batch", rows)), append=True)
    assert str(err.value).startswith(
        f"transactions_train.csv (--append batch): rows of {day(20)} changed: {PER_DAY - 1} rows where {PER_DAY} "
        f"were ingested")
    assert "Nothing was written" in str(err.value)
    assert bronze(spark, cfg) == before and heads(spark, cfg) == head_before


def test_an_append_that_fails_validation_leaves_bronze_unchanged(spark, base_lake, tmp_path):
    cfg, _ = copy(base_lake, tmp_path)
    before, head_before = bronze(spark, cfg), heads(spark, cfg)
    m = manifest.latest(cfg)
    rows = [r.replace(cid(1), cid(99)).replace(cid(2), cid(98)).replace(cid(3), cid(97))
            .replace(cid(4), cid(96)).replace(cid(5), cid(95)).replace(cid(6), cid(94)).replace(cid(7), cid(93))
            for r in tx_rows(21, 27)]  # 7 of the 12 customers unknown: most rows rejected
    with pytest.raises(InputError) as err:
        ingest.ingest(cfg, spark, data_dir=str(write_data(tmp_path / "batch", rows)), append=True)
    assert "transactions_train.csv: " in str(err.value) and "more than ingest.max_reject_share = 0.5" in str(err.value)
    assert "most for unknown_customer" in str(err.value) and "nothing was written" in str(err.value)
    assert bronze(spark, cfg) == before and heads(spark, cfg) == head_before
    assert manifest.latest(cfg).manifest_id == m.manifest_id


def test_articles_and_customers_are_upserted_and_the_id_maps_keep_every_old_index(spark, base_lake, tmp_path):
    cfg, _ = copy(base_lake, tmp_path)
    features.build_features(cfg, spark, as_of=dt.date.fromisoformat(day(21)))
    old_customers = {r["customer_id"]: r["customer_idx"] for r in storage.read(spark, cfg, tables.CUSTOMER_INDEX).collect()}
    old_articles = {r["article_id"]: r["article_idx"] for r in storage.read(spark, cfg, tables.ARTICLE_INDEX).collect()}
    assert len(old_customers) == N_CUSTOMERS and len(old_articles) == N_ARTICLES

    # the batch: customer 13 is new, customer 2 changed age, customers 1 and 3..12 absent (kept);
    # article 11 is new, article 4 changed its name; both new ids bought in the batch
    rows = tx_rows(21, 27) + [line(day(27), cid(13), aid(11), "0.05", "2")]
    batch = write_data(tmp_path / "batch", rows, articles=[line(*article(aid(4), prod_name="Renamed")),
                                                           line(*article(aid(11), prod_name="New top"))],
                       customers=customer_rows([2, 13], ages={2: "64"}))
    summary = ingest.ingest(cfg, spark, data_dir=str(batch), append=True)
    assert (summary["customers_inserted"], summary["customers_updated"]) == (1, 1)
    assert (summary["articles_inserted"], summary["articles_updated"]) == (1, 1)
    assert summary["transactions_written"] == 7 * PER_DAY + 1 and summary["transactions_rejected"] == 0
    customers = {r["customer_id"]: r["age"] for r in storage.read(spark, cfg, tables.CUSTOMERS).collect()}
    assert len(customers) == N_CUSTOMERS + 1
    assert customers[cid(2)] == 64 and customers[cid(13)] == 33 and customers[cid(1)] == 21
    articles = {r["article_id"]: r["prod_name"] for r in storage.read(spark, cfg, tables.ARTICLES).collect()}
    assert len(articles) == N_ARTICLES + 1
    assert articles[aid(4)] == "Renamed" and articles[aid(11)] == "New top" and articles[aid(5)] == "Strap top"
    m = manifest.latest(cfg)
    assert m.rows[tables.CUSTOMERS.name] == N_CUSTOMERS + 1 and m.batch["customers_updated"] == 1

    again = features.build_features(cfg, spark, as_of=dt.date.fromisoformat(day(28)))
    assert again["interactions_appended"] == 7 * PER_DAY + 1  # only the new days were indexed
    new_customers = {r["customer_id"]: r["customer_idx"] for r in storage.read(spark, cfg, tables.CUSTOMER_INDEX).collect()}
    new_articles = {r["article_id"]: r["article_idx"] for r in storage.read(spark, cfg, tables.ARTICLE_INDEX).collect()}
    assert {k: new_customers[k] for k in old_customers} == old_customers
    assert {k: new_articles[k] for k in old_articles} == old_articles
    assert new_customers[cid(13)] == N_CUSTOMERS and new_articles[aid(11)] == N_ARTICLES
    interactions = storage.read(spark, cfg, tables.INTERACTIONS)
    assert interactions.count() == 28 * PER_DAY + 1
    assert interactions.where(F.col("customer_idx") == N_CUSTOMERS).count() == 1


def test_an_append_after_a_stopped_one_does_not_keep_its_rows(spark, base_lake, tmp_path):
    cfg, _ = copy(base_lake, tmp_path)
    before = bronze(spark, cfg)
    # what an append stopped before its manifest leaves: rows at the head that no reader sees
    stray = storage.read(spark, cfg, tables.TRANSACTIONS).limit(5)
    storage.write(stray, cfg, tables.TRANSACTIONS, mode="append")
    assert bronze(spark, cfg) == before
    summary = ingest.ingest(cfg, spark, data_dir=str(write_data(tmp_path / "week", tx_rows(21, 27))), append=True)
    assert summary["transactions_written"] == 7 * PER_DAY
    assert len(bronze(spark, cfg)[tables.TRANSACTIONS.name][1]) == 28 * PER_DAY


def test_append_needs_an_ingested_lakehouse(spark, tmp_path):
    cfg = make_cfg(tmp_path / "lake")
    with pytest.raises(InputError, match=r"--append adds a batch to ingested data, but the lakehouse .* holds no "
                                         r"complete ingest; ingest the whole data first"):
        ingest.ingest(cfg, spark, data_dir=str(write_data(tmp_path / "week", tx_rows(0, 6))), append=True)


def test_changed_files_holding_no_new_date_say_so_and_their_fingerprint_is_recorded(
        spark, base_lake, tmp_path, capsys, monkeypatch):
    cfg, _ = copy(base_lake, tmp_path)
    before, head_before = bronze(spark, cfg), heads(spark, cfg)
    m0 = manifest.latest(cfg)
    # the 21 days already ingested, their rows in reverse order, and the catalogues as new files of the same rows
    data = write_data(tmp_path / "data", tx_rows(0, 20)[::-1], article_rows(), customer_rows(range(1, N_CUSTOMERS + 1)))
    tx = data / "transactions_train.csv"
    capsys.readouterr()
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    err = capsys.readouterr().err
    assert summary["skipped"] is True and summary["mode"] == "unchanged" and summary["manifest_id"] == m0.manifest_id
    found = (f"no new dates: every date in {tx} is already ingested, and articles.csv and customers.csv hold no "
             f"changed row; recorded the files' new fingerprint, no rows written")
    assert summary["found"] == found and found in err
    assert "input files unchanged" not in err
    # bronze as it was; one manifest row more, repeating the last one with the files' new fingerprint
    assert bronze(spark, cfg) == before and heads(spark, cfg) == head_before
    m1 = manifest.latest(cfg)
    assert (m1.seq, m1.manifest_id, m1.versions, m1.rows, m1.days) == (m0.seq + 1, m0.manifest_id, m0.versions,
                                                                        m0.rows, m0.days)
    assert m1.batch["mode"] == "unchanged" and m1.batch["written"] == 0
    assert json.loads(m1.fingerprint)["files"]["transactions"]["path"] == f"file:{tx}"

    # the next ingest of the same files stops at their fingerprint: the file is not scanned again
    monkeypatch.setattr(ingest, "day_stats", lambda raw: pytest.fail("transactions_train.csv was scanned again"))
    again = ingest.ingest(cfg, spark, data_dir=str(data))
    assert again["skipped"] is True and again["manifest_id"] == m0.manifest_id
    assert manifest.latest(cfg).seq == m1.seq
    assert "input files unchanged since the last ingest, nothing written" in capsys.readouterr().err


def test_an_append_of_dates_already_ingested_says_no_new_dates(spark, base_lake, tmp_path, capsys):
    cfg, _ = copy(base_lake, tmp_path)
    before, head_before = bronze(spark, cfg), heads(spark, cfg)
    m0 = manifest.latest(cfg)
    week = write_data(tmp_path / "old-week", tx_rows(14, 20))  # the last ingested week, as a batch of its own
    capsys.readouterr()
    summary = ingest.ingest(cfg, spark, data_dir=str(week), append=True)
    err = capsys.readouterr().err
    found = (f"no new dates: every date in {week / 'transactions_train.csv'} is already ingested; recorded the "
             f"files' new fingerprint, no rows written")
    assert summary["skipped"] is True and summary["found"] == found and found in err
    assert "input files unchanged" not in err
    assert bronze(spark, cfg) == before and heads(spark, cfg) == head_before
    m1 = manifest.latest(cfg)
    assert (m1.seq, m1.manifest_id, m1.versions) == (m0.seq + 1, m0.manifest_id, m0.versions)
    again = ingest.ingest(cfg, spark, data_dir=str(week), append=True)
    assert again["skipped"] is True and manifest.latest(cfg).seq == m1.seq
    assert "input files unchanged since the last ingest" in capsys.readouterr().err


# ---- what a stage at a cutoff reads: manifest.unchanged_before --------------------------------------

def _manifest(mid: str, seq: int, days: dict[str, tuple[int, int]], tx: int, mode: str,
              articles: int = 0, customers: int = 0) -> manifest.Manifest:
    versions = {tables.ARTICLES.name: articles, tables.CUSTOMERS.name: customers, tables.TRANSACTIONS.name: tx}
    return manifest.Manifest(mid, seq, None, versions=versions, days=days, batch={"mode": mode})


BEFORE = {day(0): (4, 11), day(1): (4, 12), day(2): (4, 13)}


def test_unchanged_before_holds_when_only_later_dates_were_appended():
    first = _manifest("m1", 1, BEFORE, tx=0, mode="whole")
    week = _manifest("m2", 2, {**BEFORE, day(3): (4, 14), day(4): (2, 15)}, tx=1, mode="append")
    history = [first, week]
    why = manifest.unchanged_before(history, "m1", "m2", START + dt.timedelta(days=3))
    assert why == f"bronze data changed (m1 -> m2) only on {day(3)} .. {day(4)}, on or after {day(3)}, which it " \
                  "does not read"
    # a stage that reads the new dates (a split whose holdout week reaches them) is not the same
    assert manifest.unchanged_before(history, "m1", "m2", START + dt.timedelta(days=4)) is None
    # two appends in a row, the first a repeat of its manifest id (its files' fingerprint recorded again)
    third = _manifest("m3", 4, {**week.days, day(5): (1, 16)}, tx=2, mode="grown")
    repeat = _manifest("m2", 3, week.days, tx=1, mode="append")
    assert manifest.unchanged_before([first, week, repeat, third], "m1", "m3", START + dt.timedelta(days=3))
    # and the other way round (the stage ran on the later manifest) is never the same
    assert manifest.unchanged_before(history, "m2", "m1", START + dt.timedelta(days=3)) is None


@pytest.mark.parametrize("later", [
    # an earlier date's rows changed (a count, then a checksum)
    _manifest("m2", 2, {**BEFORE, day(1): (5, 12), day(3): (4, 14)}, tx=1, mode="grown"),
    _manifest("m2", 2, {**BEFORE, day(1): (4, 99), day(3): (4, 14)}, tx=1, mode="grown"),
    # a whole ingest in between, although every date compares equal
    _manifest("m2", 2, {**BEFORE, day(3): (4, 14)}, tx=1, mode="whole"),
    # a customer or an article upserted
    _manifest("m2", 2, {**BEFORE, day(3): (4, 14)}, tx=1, mode="append", customers=1),
    _manifest("m2", 2, {**BEFORE, day(3): (4, 14)}, tx=1, mode="append", articles=1),
    # no per-date checksums to compare
    _manifest("m2", 2, {}, tx=1, mode="append"),
], ids=["count", "checksum", "whole", "customers", "articles", "no-checksums"])
def test_unchanged_before_is_none_when_what_the_stage_reads_may_differ(later):
    first = _manifest("m1", 1, BEFORE, tx=0, mode="whole")
    assert manifest.unchanged_before([first, later], "m1", "m2", START + dt.timedelta(days=3)) is None
    # an id the history does not hold, or none recorded (a lakehouse older than manifests)
    assert manifest.unchanged_before([first, later], "m0", "m2", START + dt.timedelta(days=3)) is None
    assert manifest.unchanged_before([first, later], None, "m2", START + dt.timedelta(days=3)) is None


def test_only_a_fit_stage_may_have_a_reach():
    from hmrec import pipeline

    # the refresh's own fit stages that have one are fit stages
    assert {s.key for s in pipeline.STAGES if s.reach is not None} == {"features@fit", "split@fit", "popularity@fit"}
    with pytest.raises(ValueError, match="stage features: only a fit stage has a reach"):
        pipeline.Stage("features", lambda *a: None, (), reach=lambda cfg: 0)
    pipeline.Stage("features@fit", lambda *a: None, (), at_fit=True, reach=lambda cfg: 0)


def test_a_refresh_makes_no_served_candidates_for_a_version_without_a_ranker(monkeypatch, capsys):
    # a validation week without purchases trains no ranker: the blend is served, which reads no candidates
    from hmrec import pipeline

    made: list[dt.date] = []
    monkeypatch.setattr(pipeline.registry, "latest_version", lambda cfg, as_of, role="serve": "7")
    monkeypatch.setattr(pipeline.candidates, "candidates", lambda cfg, spark, as_of: made.append(as_of) or {"rows": 1})
    stage = next(s for s in pipeline.STAGES if s.key == "candidates")
    as_of = dt.date(2020, 9, 16)
    monkeypatch.setattr(pipeline.ranker, "has_ranker", lambda cfg, version: False)
    assert stage.run(None, None, as_of, as_of) == {"skipped": "no ranker", "model_version": "7"}
    assert made == [] and "model version 7 has no ranker" in capsys.readouterr().err
    monkeypatch.setattr(pipeline.ranker, "has_ranker", lambda cfg, version: True)
    assert stage.run(None, None, as_of, as_of) == {"rows": 1} and made == [as_of]
