"""`hmrec export`: the Kaggle submission (and the per-row CSV) of one as-of's served lists.

The lakehouse is made by hand so each customer's expected line is known: every customer of the
tiny data set's customers.csv, served lists for a few of them (12, 15 and 5 articles, and a
later as-of's lists that replace them), and a popularity list for each as-of.
"""
from __future__ import annotations

import csv
import datetime as dt
import re

import pytest

from hmrec.cli import main
from hmrec.errors import HmrecError
from hmrec.lake import schemas, storage, tables
from hmrec.serve import export as export_mod
from hmrec.serve.export import export
from tests.conftest import aid, make_cfg

AS_OF = dt.date(2020, 9, 16)
LATER = dt.date(2020, 9, 23)
POPULAR = [aid(i, 500) for i in range(1, 31)]  # the global popularity list of AS_OF, best first
LATER_POPULAR = [aid(i, 700) for i in range(1, 31)]
SEGMENT_POPULAR = [aid(i, 900) for i in range(1, 31)]  # an age segment's list: never used to fill


def customers_csv(data) -> list[str]:
    with open(data / "customers.csv", newline="") as f:
        return [row["customer_id"] for row in csv.DictReader(f)]


def popularity_rows(as_of: dt.date, segment: str, ids: list[str]) -> list[tuple]:
    return [(as_of, segment, rank, a, rank, float(100 - rank)) for rank, a in enumerate(ids, start=1)]


def recommendation_rows(lists: dict[str, list[str]], as_of: dt.date, version: str) -> list[tuple]:
    rows = [(c, a, rank, 1.0 / rank, "model", version, as_of)
            for c, items in lists.items() for rank, a in enumerate(items, start=1)]
    return rows[::-1]  # stored out of rank order: the export orders by rank


@pytest.fixture(scope="module")
def served(spark, tiny_data, tmp_path_factory):
    """A lakehouse with the customers of customers.csv and served lists for three of them at AS_OF."""
    cfg = make_cfg(tmp_path_factory.mktemp("export") / "lake")
    ids = customers_csv(tiny_data)
    cust_rows = [tuple(c if n == "customer_id" else None for n, _ in schemas.CUSTOMER_COLUMNS) for c in ids]
    storage.write(spark.createDataFrame(cust_rows, schemas.CUSTOMERS), cfg, tables.CUSTOMERS)
    pop = (popularity_rows(AS_OF, "global", POPULAR) + popularity_rows(AS_OF, "age_25_34", SEGMENT_POPULAR)
           + popularity_rows(LATER, "global", LATER_POPULAR))
    storage.write(spark.createDataFrame(pop, schemas.POPULARITY), cfg, tables.POPULARITY)
    lists = {
        ids[0]: [aid(i, 100) for i in range(1, 13)],  # exactly 12
        ids[1]: [aid(i, 200) for i in range(1, 16)],  # 15: the first 12 by rank
        ids[2]: [POPULAR[1], aid(1, 300), POPULAR[0], aid(2, 300), aid(3, 300)],  # 5, two of them popular
    }
    for as_of, version, these in ((AS_OF, "3", lists), (LATER, "4", {ids[0]: [aid(i, 400) for i in range(1, 13)]})):
        storage.write(spark.createDataFrame(recommendation_rows(these, as_of, version), schemas.RECOMMENDATIONS),
                      cfg, tables.RECOMMENDATIONS, metadata={"as_of": as_of.isoformat(), "model_version": version, "k": 12})
    return cfg, ids, lists


@pytest.fixture(scope="module")
def submission(spark, served, tmp_path_factory):
    """The Kaggle file of AS_OF (whose lists a later refresh has replaced since): its header and rows."""
    cfg, _, _ = served
    out = tmp_path_factory.mktemp("submission") / "submission.csv"
    summary = export(cfg, spark, as_of=AS_OF, fmt="kaggle", out=str(out))
    text = out.read_text()
    return summary, text.splitlines()[0], {c: p for c, p in (line.split(",") for line in text.splitlines()[1:])}


def test_the_header_is_the_competitions(submission):
    _, header, _ = submission
    assert header == "customer_id,prediction"


def test_one_row_per_customer_of_customers_csv(submission, served):
    summary, _, rows = submission
    _, ids, _ = served
    assert sorted(rows) == sorted(ids) and len(ids) > 1000
    assert summary["customers"] == len(ids)
    assert summary["customers_without_list"] == len(ids) - 3
    assert summary["lists_filled_from_popularity"] == 1


def test_every_prediction_is_12_distinct_ten_digit_ids(submission):
    _, _, rows = submission
    for prediction in rows.values():
        articles = prediction.split(" ")
        assert len(articles) == 12 and len(set(articles)) == 12
        assert all(re.fullmatch(r"\d{10}", a) for a in articles)


def test_served_lists_are_kept_by_rank_cut_to_12_and_filled_without_repeats(submission, served):
    _, _, rows = submission
    _, ids, lists = served
    assert rows[ids[0]].split() == lists[ids[0]]
    assert rows[ids[1]].split() == [aid(i, 200) for i in range(1, 13)]
    # the 5 served articles, then the popular ones not among them: POPULAR[0] and [1] are already there
    assert rows[ids[2]].split() == lists[ids[2]] + POPULAR[2:9]


def test_a_customer_without_a_served_list_gets_the_global_popularity_list_of_the_as_of(submission, served):
    _, _, rows = submission
    _, ids, _ = served
    assert rows[ids[3]].split() == POPULAR[:12]
    assert rows[ids[-1]].split() == POPULAR[:12]


def test_the_csv_format_has_one_row_per_recommendation(spark, served, tmp_path):
    cfg, ids, lists = served
    out = tmp_path / "rows.csv"
    export(cfg, spark, as_of=AS_OF, fmt="csv", out=str(out))
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["customer_id", "rank", "article_id", "score", "source"]
        rows = list(reader)
    mine = [r for r in rows if r["customer_id"] == ids[1]]
    assert [r["article_id"] for r in mine] == lists[ids[1]]  # as stored: all 15
    assert [int(r["rank"]) for r in mine] == list(range(1, 16))
    other = [r for r in rows if r["customer_id"] == ids[3]]
    assert [r["article_id"] for r in other] == POPULAR[:cfg.score.k]
    assert {r["source"] for r in other} == {"popular"} and float(other[0]["score"]) == 99.0
    assert len(rows) == 12 + 15 + 5 + (len(ids) - 3) * cfg.score.k


def test_an_as_of_without_served_lists_names_it_and_the_command(spark, served, tmp_path):
    cfg, _, _ = served
    out = tmp_path / "submission.csv"
    with pytest.raises(HmrecError) as err:
        export(cfg, spark, as_of=dt.date(2020, 9, 2), fmt="kaggle", out=str(out))
    message = str(err.value)
    assert "no served lists for as-of 2020-09-02" in message
    assert "hmrec run --data DIR --as-of 2020-09-02" in message
    assert "2020-09-16, 2020-09-23" in message  # the as-ofs it does hold
    assert not out.exists()


def test_a_failed_write_leaves_no_new_file_and_keeps_the_previous_one(spark, served, tmp_path, monkeypatch):
    cfg, _, _ = served
    out = tmp_path / "submission.csv"
    out.write_text("customer_id,prediction\nprevious,export\n")

    def broken(directory):
        assert any(directory.glob("part-*.csv"))  # Spark has written the file: the failure is at the rename
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_single_part", broken)
    with pytest.raises(OSError, match="disk full"):
        export(cfg, spark, as_of=LATER, fmt="kaggle", out=str(out))
    assert out.read_text() == "customer_id,prediction\nprevious,export\n"
    assert list(tmp_path.iterdir()) == [out]  # no temporary directory left beside it


def test_the_command_line_refuses_an_unknown_format_and_a_missing_directory(tmp_path, capsys):
    lake = ["--set", f"paths.lakehouse={tmp_path / 'lake'}"]
    assert main(["export", "--as-of", "2020-09-16", "--format", "parquet", "--out", str(tmp_path / "s.csv"), *lake]) == 2
    assert "--format 'parquet' is not an export format; use one of: kaggle, csv" in capsys.readouterr().err
    missing = tmp_path / "no" / "such"
    assert main(["export", "--as-of", "2020-09-16", "--out", str(missing / "s.csv"), *lake]) == 2
    assert f"the directory {missing} does not exist; create it first" in capsys.readouterr().err
    with pytest.raises(HmrecError, match="is a directory"):
        export_mod.check_destination("kaggle", str(tmp_path))


def test_a_catalogue_of_a_list_and_one_more_article_fills_every_list(spark, tmp_path):
    # 13 articles in all: 12 popular ones fill any list to 12 distinct, its own articles first
    cfg = make_cfg(tmp_path / "lake")
    small = POPULAR[:13]
    storage.write(spark.createDataFrame(popularity_rows(AS_OF, "global", small), schemas.POPULARITY), cfg,
                  tables.POPULARITY)
    popular = export_mod.popular_articles(spark, cfg, AS_OF, 12)
    assert [a for a, _ in popular] == small[:12]
    served = [small[12], small[0], small[5], small[1], small[7]]  # 5 served, all of them popular
    recs = spark.createDataFrame(recommendation_rows({"c1": served}, AS_OF, "3"), schemas.RECOMMENDATIONS)
    customers = spark.createDataFrame([("c1",), ("c2",)], "customer_id string")
    rows = {r["customer_id"]: r for r in export_mod.kaggle_rows(customers, recs, [a for a, _ in popular], 12).collect()}
    assert rows["c1"]["prediction"].split() == served + [small[i] for i in (2, 3, 4, 6, 8, 9, 10)]
    assert rows["c2"]["prediction"].split() == small[:12] and rows["c1"]["served"] == 5
    with pytest.raises(HmrecError, match="holds 13 distinct global articles for as-of 2020-09-16, fewer than the 14"):
        export_mod.popular_articles(spark, cfg, AS_OF, 14)
