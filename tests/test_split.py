"""Split: train before the as-of date, holdout in the days after, never overlapping."""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from hmrec.lake import schemas, storage, tables
from hmrec.errors import HmrecError
from hmrec.etl.features import categorical_vocab, item_codes, item_features, user_features
from hmrec.etl.split import fit_cutoff, holdout_rows, split, train_rows, validation_rows
from tests.conftest import make_cfg
from tests.conftest import aid, cid

D = dt.date
AS_OF = D(2020, 9, 20)


def row(day: dt.date, c: int, a: int) -> tuple:
    """An interaction of customer c (customer_idx c) with article a (article_idx a)."""
    return (day, cid(c), aid(a), 0.01 * a, 1 + c % 2, c, a)


INTERACTION_ROWS = [
    row(D(2020, 8, 1), 3, 3),  # train only when train_days reaches back to it
    row(D(2020, 9, 1), 1, 1),
    row(D(2020, 9, 12), 1, 2),
    row(D(2020, 9, 19), 2, 1),  # last train day
    row(D(2020, 9, 20), 2, 2),  # first holdout day
    row(D(2020, 9, 26), 1, 3),  # last holdout day
    row(D(2020, 9, 27), 3, 1),  # after the holdout week: in neither
]


def keys(rows) -> set:
    return {(r["t_dat"], r["customer_idx"], r["article_idx"]) for r in rows}


def expected(first: dt.date, end: dt.date) -> set:
    return {(r[0], r[5], r[6]) for r in INTERACTION_ROWS if first <= r[0] < end}


def test_split_job_writes_disjoint_windows(spark, cfg, capsys):
    storage.write(spark.createDataFrame(INTERACTION_ROWS, schemas.INTERACTIONS), cfg, tables.INTERACTIONS)
    summary = split(cfg, spark, as_of=AS_OF)

    train = storage.read_as_of(spark, cfg, tables.TRAIN, AS_OF)
    holdout = storage.read_as_of(spark, cfg, tables.HOLDOUT, AS_OF)
    assert train.schema.simpleString() == schemas.SPLIT_ROWS.simpleString()
    assert holdout.schema.simpleString() == schemas.SPLIT_ROWS.simpleString()
    train_keys, holdout_keys = keys(train.collect()), keys(holdout.collect())
    assert train_keys == expected(D(2020, 1, 1), AS_OF)
    assert holdout_keys == expected(AS_OF, D(2020, 9, 27))
    assert len(train_keys) == 4 and len(holdout_keys) == 2
    assert not train_keys & holdout_keys
    assert train_keys | holdout_keys == expected(D(2020, 1, 1), D(2020, 9, 27))
    assert (summary["rows_in"], summary["train_rows"], summary["holdout_rows"]) == (7, 4, 2)
    # The validation week is the last 7 days before the as-of: 2020-09-13 .. 2020-09-19.
    validation = storage.read_as_of(spark, cfg, tables.VALIDATION, AS_OF)
    assert keys(validation.collect()) == {(D(2020, 9, 19), 2, 1)}
    assert summary["validation_rows"] == 1
    assert validation.agg(F.min("t_dat"), F.max("t_dat")).first()[:] == (D(2020, 9, 19), D(2020, 9, 19))

    # An as-of after the last transaction: the weekly refresh's case, no holdout week yet.
    late = D(2020, 10, 10)
    capsys.readouterr()
    summary = split(cfg, spark, as_of=late)
    assert (summary["train_rows"], summary["validation_rows"], summary["holdout_rows"]) == (7, 0, 0)
    err = capsys.readouterr().err
    assert "no transaction yet in the week from 2020-10-10 to 2020-10-16" in err
    assert "covers 2020-08-01 .. 2020-09-27" in err
    assert "no transaction in the validation week 2020-10-03 .. 2020-10-09" in err
    # Partitions are replaced one as-of at a time: the first one is intact.
    assert keys(storage.read_as_of(spark, cfg, tables.HOLDOUT, AS_OF).collect()) == holdout_keys


def test_the_validation_week_is_the_last_days_before_the_as_of_and_never_the_holdout(spark):
    df = spark.createDataFrame(INTERACTION_ROWS, schemas.INTERACTIONS)
    as_of = D(2020, 9, 27)
    validation = keys(validation_rows(df, as_of, validation_days=7).collect())
    assert validation == expected(D(2020, 9, 20), as_of)
    assert validation == {(D(2020, 9, 20), 2, 2), (D(2020, 9, 26), 1, 3)}
    holdout = keys(holdout_rows(df, as_of, holdout_days=7).collect())
    assert holdout == {(D(2020, 9, 27), 3, 1)}
    assert not validation & holdout
    assert validation <= keys(train_rows(df, as_of, train_days=0).collect())
    assert fit_cutoff(make_cfg("/tmp/unused-lake"), as_of) == D(2020, 9, 20)


def test_train_days_limits_the_train_window(spark):
    df = spark.createDataFrame(INTERACTION_ROWS, schemas.INTERACTIONS)
    train = train_rows(df, AS_OF, train_days=10).collect()
    assert keys(train) == expected(D(2020, 9, 10), AS_OF)
    assert {r["as_of"] for r in train} == {AS_OF}
    assert keys(holdout_rows(df, AS_OF, holdout_days=1).collect()) == expected(AS_OF, D(2020, 9, 21))


def test_split_before_the_first_transaction_is_an_error(spark, cfg):
    storage.write(spark.createDataFrame(INTERACTION_ROWS, schemas.INTERACTIONS), cfg, tables.INTERACTIONS)
    with pytest.raises(HmrecError, match=r"covers t_dat 2020-08-01 \.\. 2020-09-27"):
        split(cfg, spark, as_of=D(2020, 8, 1))
    assert not storage.exists(spark, cfg, tables.TRAIN)


def test_features_at_as_of_see_only_the_train_rows(spark):
    """Features from all interactions equal features from gold/train alone: the holdout never leaks in."""
    article_rows = [
        tuple({"article_id": aid(a), "product_group_name": g}.get(n) for n, _ in schemas.ARTICLE_COLUMNS)
        for a, g in [(1, "Shoes"), (2, "Socks"), (3, "Shoes")]
    ]
    articles = spark.createDataFrame(article_rows, schemas.ARTICLES)
    aindex = spark.createDataFrame([(aid(a), a) for a in (1, 2, 3)], schemas.ARTICLE_INDEX)
    customers = spark.createDataFrame(
        [(cid(c), None, None, None, None, 30, None) for c in (1, 2, 3)], schemas.CUSTOMERS
    )
    cindex = spark.createDataFrame([(cid(c), c) for c in (1, 2, 3)], schemas.CUSTOMER_INDEX)
    codes = item_codes(articles, aindex, categorical_vocab(articles))
    everything = spark.createDataFrame(INTERACTION_ROWS, schemas.INTERACTIONS)
    train = train_rows(everything, AS_OF, train_days=0)

    def users(inter):
        df = user_features(customers, cindex, inter, codes, AS_OF, 2, 12, [0, 200])
        return sorted(tuple(r) for r in df.orderBy("customer_idx").collect())

    def items(inter):
        return sorted(tuple(r) for r in item_features(codes, inter, AS_OF, [7, 28]).collect())

    by_train = users(train)
    assert by_train == users(everything)
    assert items(train) == items(everything)
    # Customer 2 bought in the train window (09-19) and in the holdout (09-20).
    assert [r[3] for r in by_train] == [2, 1, 1]
    assert everything.where(F.col("t_dat") >= F.lit(AS_OF)).count() == 3
