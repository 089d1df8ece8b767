"""Popularity: ranking, tie-break, segment fill and no look past the as-of date, on known answers."""
from __future__ import annotations

import datetime as dt

from conftest import make_cfg

from hmrec.lake import schemas, storage
from hmrec.etl.segments import segment_labels
from hmrec.etl.popularity import popularity, rank_popularity
from hmrec.lake import tables
from tests.conftest import aid, cid

D = dt.date
AS_OF = D(2020, 9, 20)
IN_WINDOW = D(2020, 9, 15)  # inside the 7 days before AS_OF
EARLIER = D(2020, 9, 1)  # before the window
BUCKETS = [0, 30, 200]
YOUNG, OLD = "age_0_29", "age_30_199"


# (day, article number, segment, how many purchases); article n has article_idx n - 1.
PURCHASES = [
    (IN_WINDOW, 3, YOUNG, 2),
    (IN_WINDOW, 3, OLD, 1),
    (IN_WINDOW, 1, YOUNG, 2),  # ties with article 2 globally, with article 3 among the young
    (IN_WINDOW, 2, OLD, 2),
    (EARLIER, 4, OLD, 5),
    (EARLIER, 5, YOUNG, 1),
    (AS_OF, 6, YOUNG, 10),  # on the as-of date: must not count
    (D(2020, 9, 25), 6, OLD, 10),
]
CATALOGUE = [(aid(n), n - 1) for n in range(1, 7)]

# Known answers with top_n = 6 (the whole catalogue): article numbers by rank, and scores.
WANT = {
    "global": ([3, 1, 2, 4, 5, 6], [3, 2, 2, 0, 0, 0]),
    YOUNG: ([1, 3, 5, 2, 4, 6], [2, 2, 0, 0, 0, 0]),
    OLD: ([2, 3, 4, 1, 5, 6], [2, 1, 0, 0, 0, 0]),
    "age_unknown": ([3, 1, 2, 4, 5, 6], [0, 0, 0, 0, 0, 0]),
}


def ranked(rows) -> dict:
    """segment -> (article numbers by rank, scores by rank)."""
    out: dict = {}
    for r in sorted(rows, key=lambda r: (r["segment"], r["rank"])):
        arts, scores = out.setdefault(r["segment"], ([], []))
        assert r["article_idx"] == int(r["article_id"]) - 1
        arts.append(int(r["article_id"]))
        scores.append(r["score"])
    return out


def run_pure(spark, purchases, top_n: int) -> dict:
    rows = [(day, n - 1, seg) for day, n, seg, times in purchases for _ in range(times)]
    df = spark.createDataFrame(rows, "t_dat date, article_idx int, segment string")
    catalogue = spark.createDataFrame(CATALOGUE, "article_id string, article_idx int")
    out = rank_popularity(df, catalogue, AS_OF, window_days=7, top_n=top_n, labels=segment_labels(BUCKETS))
    assert out.schema.simpleString() == schemas.POPULARITY.simpleString()
    result = out.collect()
    assert {r["as_of"] for r in result} == {AS_OF}
    return ranked(result)


def test_ranking_tie_break_and_fill(spark):
    assert run_pure(spark, PURCHASES, top_n=6) == WANT


def test_short_lists_take_the_top(spark):
    got = run_pure(spark, PURCHASES, top_n=3)
    assert got == {
        "global": ([3, 1, 2], [3, 2, 2]),
        YOUNG: ([1, 3, 5], [2, 2, 0]),
        OLD: ([2, 3, 4], [2, 1, 0]),
        "age_unknown": ([3, 1, 2], [0, 0, 0]),
    }


def test_rows_on_or_after_as_of_do_not_count(spark):
    before = [p for p in PURCHASES if p[0] < AS_OF]
    assert len(before) < len(PURCHASES)
    assert run_pure(spark, before, top_n=6) == run_pure(spark, PURCHASES, top_n=6)


def test_popularity_job(spark, tmp_path):
    cfg = make_cfg(tmp_path / "lake", "popularity.top_n=6", "popularity.window_days=7",
                   "features.age_buckets=[0,30,200]")
    # Customer 1 is young, 2 old, 3 of unknown age; 4 is in the id map but no
    # longer in the customer file. Article 7 is in the id map but no longer in
    # the catalogue, so however often it sold it is never ranked.
    customers = [(cid(1), None, None, None, None, 25, None), (cid(2), None, None, None, None, 45, None),
                 (cid(3), None, None, None, None, None, None)]
    article_rows = [tuple({"article_id": aid(n)}.get(c) for c, _ in schemas.ARTICLE_COLUMNS) for n in range(1, 7)]
    buyer = {YOUNG: 1, OLD: 2}
    rows = [(day, cid(buyer[seg]), aid(n), 0.01, 1, buyer[seg] - 1, n - 1)
            for day, n, seg, times in PURCHASES + [(IN_WINDOW, 7, YOUNG, 9)] for _ in range(times)]
    storage.write(spark.createDataFrame(customers, schemas.CUSTOMERS), cfg, tables.CUSTOMERS)
    storage.write(spark.createDataFrame(article_rows, schemas.ARTICLES), cfg, tables.ARTICLES)
    storage.write(spark.createDataFrame([(cid(c), c - 1) for c in range(1, 5)], schemas.CUSTOMER_INDEX), cfg,
                  tables.CUSTOMER_INDEX)
    storage.write(spark.createDataFrame(CATALOGUE + [(aid(7), 6)], schemas.ARTICLE_INDEX), cfg, tables.ARTICLE_INDEX)
    storage.write(spark.createDataFrame(rows, schemas.INTERACTIONS), cfg, tables.INTERACTIONS)

    summary = popularity(cfg, spark, as_of=AS_OF)
    assert summary["rows_in"] == 13 + 9
    assert (summary["segments"], summary["min_items_per_segment"], summary["rows_written"]) == (4, 6, 24)
    stored = storage.read_as_of(spark, cfg, tables.POPULARITY, AS_OF)
    assert stored.schema.simpleString() == schemas.POPULARITY.simpleString()
    assert ranked(stored.collect()) == WANT
