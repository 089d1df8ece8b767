"""Features: id maps, interactions, user and item features on hand-made data with known answers."""
from __future__ import annotations

import datetime as dt
import hashlib
import math

import pytest
from pyspark.sql import functions as F

from hmrec.lake import schemas, storage
from hmrec.errors import HmrecError
from hmrec.lake import tables
from hmrec.etl.segments import age_bucket, age_segment, segment_labels
from hmrec.etl.features import (
    ID_PREFIX,
    NEVER_BOUGHT_DAYS,
    build_features,
    default_as_of,
    categorical_vocab,
    item_codes,
    item_features,
    new_index_entries,
    update_index,
    user_features,
)
from tests.conftest import aid, cid

D = dt.date
AS_OF = D(2020, 9, 20)
BUCKETS = [0, 25, 35, 45, 55, 65, 200]


def article(n: int, **attrs: object) -> tuple:
    values = {"article_id": aid(n), **attrs}
    return tuple(values.get(name) for name, _ in schemas.ARTICLE_COLUMNS)


# Five articles; E (5) is never sold. product_group_name codes by sorted value:
# Accessories=1, Garment Upper body=2, Shoes=3 (D has none: 0).
ARTICLES = [
    article(1, product_type_no=253, product_group_name="Garment Upper body", index_code="A"),
    article(2, product_type_no=66, product_group_name="Accessories", index_code="C"),
    article(3, product_type_no=252, product_group_name="Garment Upper body", index_code="A"),
    article(4, product_type_no=None, product_group_name=None, index_code=""),
    article(5, product_type_no=66, product_group_name="Shoes", index_code="B"),
]
# customer_id, FN, Active, club_member_status, fashion_news_frequency, age, postal_code
CUSTOMERS = [
    (cid(1), 1.0, 1.0, "ACTIVE", "Regularly", 23, "p"),
    (cid(2), None, None, "PRE-CREATE", "NONE", 40, "p"),
    (cid(3), None, 1.0, None, "None", None, "p"),
    (cid(4), 1.0, None, "LEFT CLUB", "Monthly", 70, "p"),  # never buys
]
TRANSACTIONS = [
    (D(2020, 9, 1), cid(1), aid(1), 0.02, 2),
    (D(2020, 9, 10), cid(1), aid(2), 0.01, 1),
    (D(2020, 9, 10), cid(1), aid(3), 0.03, 2),  # same day as the row above
    (D(2020, 9, 19), cid(1), aid(1), 0.04, 1),
    (D(2020, 8, 1), cid(2), aid(4), 0.05, 1),
    (D(2020, 9, 15), cid(3), aid(2), 0.01, 2),
    (D(2020, 9, 15), cid(3), aid(2), 0.01, 2),  # bought twice that day
]
# Rows on and after the as-of date: features for AS_OF must not see them.
FUTURE = [
    (AS_OF, cid(4), aid(5), 0.09, 2),
    (AS_OF, cid(1), aid(2), 0.09, 2),
    (D(2020, 9, 21), cid(2), aid(1), 0.09, 2),
]


def write_bronze(spark, cfg, customers=CUSTOMERS, articles=ARTICLES, transactions=TRANSACTIONS) -> None:
    storage.write(spark.createDataFrame(articles, schemas.ARTICLES), cfg, tables.ARTICLES)
    storage.write(spark.createDataFrame(customers, schemas.CUSTOMERS), cfg, tables.CUSTOMERS)
    storage.write(spark.createDataFrame(transactions, schemas.TRANSACTIONS), cfg, tables.TRANSACTIONS)


def frames(spark, transactions):
    """In-memory inputs of the pure transforms (indices as the job would assign them)."""
    customers = spark.createDataFrame(CUSTOMERS, schemas.CUSTOMERS)
    articles = spark.createDataFrame(ARTICLES, schemas.ARTICLES)
    cindex = spark.createDataFrame([(cid(i), i - 1) for i in range(1, 5)], schemas.CUSTOMER_INDEX)
    aindex = spark.createDataFrame([(aid(i), i - 1) for i in range(1, 6)], schemas.ARTICLE_INDEX)
    inter = (
        spark.createDataFrame(transactions, schemas.TRANSACTIONS)
        .join(cindex, "customer_id")
        .join(aindex, "article_id")
    )
    vocab = categorical_vocab(articles)
    codes = item_codes(articles, aindex, vocab)
    return customers, cindex, inter, codes, vocab


def users_by_id(spark, transactions, as_of=AS_OF, last_n=12) -> dict:
    customers, cindex, inter, codes, vocab = frames(spark, transactions)
    df = user_features(customers, cindex, inter, codes, as_of, len(vocab["product_group_name"]), last_n, BUCKETS)
    assert df.schema.simpleString() == schemas.USER_FEATURES.simpleString()
    return {r["customer_id"]: r.asDict() for r in df.collect()}


def items_by_id(spark, transactions, as_of=AS_OF) -> dict:
    _, _, inter, codes, _ = frames(spark, transactions)
    df = item_features(codes, inter, as_of, [7, 28])
    assert df.schema.simpleString() == schemas.ITEM_FEATURES.simpleString()
    return {r["article_id"]: r.asDict() for r in df.collect()}


def test_age_bucket_segment_and_labels(spark):
    ages = [None, 0, 24, 25, 34, 64, 65, 199, 200, -1]
    df = spark.createDataFrame([(a,) for a in ages], "age int")
    df = df.withColumn("b", age_bucket(F.col("age"), BUCKETS))
    rows = df.withColumn("s", age_segment(F.col("b"), BUCKETS)).collect()
    assert [r["b"] for r in rows] == [0, 1, 1, 2, 2, 5, 6, 6, 0, 0]
    assert [r["s"] for r in rows] == [
        "age_unknown", "age_0_24", "age_0_24", "age_25_34", "age_25_34",
        "age_55_64", "age_65_199", "age_65_199", "age_unknown", "age_unknown",
    ]
    assert segment_labels(BUCKETS) == [
        "age_unknown", "age_0_24", "age_25_34", "age_35_44", "age_45_54", "age_55_64", "age_65_199",
    ]


def test_update_index_appends_new_ids_and_never_renumbers(spark, cfg):
    def ids(*names: str):
        return spark.createDataFrame([(n,) for n in names], "customer_id string")

    def update(df) -> int:
        return update_index(spark, cfg, tables.CUSTOMER_INDEX, df, "customer_id", "customer_idx")

    def index() -> dict:
        return {r[0]: r[1] for r in storage.read(spark, cfg, tables.CUSTOMER_INDEX).collect()}

    assert update(ids(cid(9), cid(3), cid(3), None)) == 2
    assert index() == {cid(3): 0, cid(9): 1}
    before = storage.version(spark, cfg, tables.CUSTOMER_INDEX)

    # cid(9) left the customer file, two new ones came (one sorts before the old ids).
    assert update(ids(cid(3), cid(7), cid(1))) == 2
    assert index() == {cid(3): 0, cid(9): 1, cid(1): 2, cid(7): 3}
    assert storage.version(spark, cfg, tables.CUSTOMER_INDEX) == before + 1  # one commit


def test_new_index_entries_only_for_unknown_ids(spark):
    existing = spark.createDataFrame([(cid(5), 0), (cid(2), 7)], schemas.CUSTOMER_INDEX)
    ids = spark.createDataFrame([(cid(n),) for n in (2, 5, 4, 1, 4)], "customer_id string")
    rows = new_index_entries(ids, existing, "customer_id", "customer_idx").collect()
    assert sorted(tuple(r) for r in rows) == [(cid(1), 8), (cid(4), 9)]
    known = spark.createDataFrame([(cid(2),)], "customer_id string")
    assert new_index_entries(known, existing, "customer_id", "customer_idx").count() == 0


def test_new_ids_are_numbered_in_id_order_across_prefixes_after_the_max_index(spark):
    ids = [hashlib.sha256(f"n-{i}".encode()).hexdigest() for i in range(400)]
    assert len({i[:ID_PREFIX] for i in ids}) > 100  # many groups, numbered apart
    existing = spark.createDataFrame([(ids[0], 41), (ids[1], 3)], schemas.CUSTOMER_INDEX)
    frame = spark.createDataFrame([(i,) for i in ids + ids[:50]], "customer_id string").repartition(3)
    got = dict(tuple(r) for r in new_index_entries(frame, existing, "customer_id", "customer_idx").collect())
    assert got == {c: 42 + n for n, c in enumerate(sorted(ids[2:]))}
    # article ids: ten digits sharing their first characters
    arts = [f"{108775000 + 7919 * i:010d}" for i in range(60)]
    none = spark.createDataFrame([], schemas.ARTICLE_INDEX)
    rows = new_index_entries(spark.createDataFrame([(a,) for a in arts], "article_id string"), none,
                             "article_id", "article_idx").collect()
    assert sorted((r.article_idx, r.article_id) for r in rows) == list(enumerate(sorted(arts)))


def test_item_codes_are_dense_by_sorted_value(spark):
    _, _, _, codes, vocab = frames(spark, TRANSACTIONS)
    assert vocab["product_group_name"] == ["Accessories", "Garment Upper body", "Shoes"]
    rows = {r["article_id"]: r for r in codes.collect()}
    assert [rows[aid(i)]["product_group_name_code"] for i in range(1, 6)] == [2, 1, 2, 0, 3]
    assert [rows[aid(i)]["product_type_no_code"] for i in range(1, 6)] == [3, 1, 2, 0, 1]
    # The empty index_code of article 4 counts as unknown, like a null.
    assert [rows[aid(i)]["index_code_code"] for i in range(1, 6)] == [1, 3, 1, 0, 2]
    assert [rows[aid(i)]["colour_group_code_code"] for i in range(1, 6)] == [0] * 5
    assert [rows[aid(i)]["article_idx"] for i in range(1, 6)] == [0, 1, 2, 3, 4]


def test_user_features_known_answers(spark):
    # The rows on and after AS_OF are in the input; the answers count none of them.
    users = users_by_id(spark, TRANSACTIONS + FUTURE)
    assert len(users) == 4

    u1 = users[cid(1)]
    assert u1["customer_idx"] == 0 and u1["n_purchases"] == 4 and u1["as_of"] == AS_OF
    assert (u1["age"], u1["age_bucket"], u1["club_status_code"], u1["news_freq_code"], u1["fn"], u1["active"]) == (
        23, 1, 1, 3, 1, 1)
    assert u1["n_purchases_log"] == pytest.approx(math.log1p(4), rel=1e-6)
    assert u1["days_since_last_log"] == pytest.approx(math.log1p(1), rel=1e-6)
    assert u1["mean_price"] == pytest.approx(0.025, rel=1e-6)
    assert u1["online_share"] == pytest.approx(0.5)
    assert u1["n_distinct_articles_log"] == pytest.approx(math.log1p(3), rel=1e-6)
    assert u1["repeat_share"] == pytest.approx(0.25)
    assert u1["category_shares"] == pytest.approx([0.0, 0.25, 0.75, 0.0])
    # Most recent first; the two 2020-09-10 purchases by article_idx descending.
    assert u1["last_articles"] == [0, 2, 1, 0]

    u2 = users[cid(2)]
    assert (u2["age_bucket"], u2["club_status_code"], u2["news_freq_code"], u2["fn"], u2["active"]) == (3, 2, 1, 0, 0)
    assert u2["days_since_last_log"] == pytest.approx(math.log1p(50), rel=1e-6)
    assert u2["category_shares"] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert u2["last_articles"] == [3]

    u3 = users[cid(3)]
    # 'None' in the file is the same answer as 'NONE'; no age is bucket 0.
    assert (u3["age"], u3["age_bucket"], u3["club_status_code"], u3["news_freq_code"]) == (None, 0, 0, 1)
    assert u3["n_purchases"] == 2 and u3["repeat_share"] == pytest.approx(0.5)
    assert u3["online_share"] == pytest.approx(1.0)
    assert u3["last_articles"] == [1, 1]

    u4 = users[cid(4)]
    assert (u4["n_purchases"], u4["age_bucket"], u4["club_status_code"], u4["news_freq_code"]) == (0, 6, 3, 2)
    assert u4["days_since_last_log"] == pytest.approx(math.log1p(NEVER_BOUGHT_DAYS), rel=1e-6)
    assert (u4["n_purchases_log"], u4["mean_price"], u4["online_share"], u4["repeat_share"]) == (0, 0, 0, 0)
    assert u4["n_distinct_articles_log"] == 0
    assert u4["category_shares"] == [0.0, 0.0, 0.0, 0.0]
    assert u4["last_articles"] == []


def test_last_articles_keeps_only_the_last_n(spark):
    users = users_by_id(spark, TRANSACTIONS, last_n=2)
    assert users[cid(1)]["last_articles"] == [0, 2]
    assert users[cid(2)]["last_articles"] == [3]


def test_item_features_known_answers(spark):
    # The rows on and after AS_OF are in the input; the answers count none of them.
    items = items_by_id(spark, TRANSACTIONS + FUTURE)
    a, b, c, d, e = (items[aid(i)] for i in range(1, 6))
    assert (a["sales_7d"], a["sales_28d"], a["sales_total"], a["days_since_first_sale"]) == (1, 2, 2, 19)
    assert a["price_mean"] == pytest.approx(0.03, rel=1e-6)
    assert a["price_std"] == pytest.approx(math.sqrt(2 * 0.01**2), rel=1e-5)
    assert (b["sales_7d"], b["sales_28d"], b["sales_total"], b["days_since_first_sale"]) == (2, 3, 3, 10)
    assert b["price_std"] == pytest.approx(0.0, abs=1e-7)
    assert (c["sales_7d"], c["sales_28d"], c["sales_total"], c["price_std"]) == (0, 1, 1, 0.0)
    assert (d["sales_7d"], d["sales_28d"], d["sales_total"], d["days_since_first_sale"]) == (0, 0, 1, 50)
    assert d["price_mean"] == pytest.approx(0.05, rel=1e-6)
    assert (e["sales_7d"], e["sales_28d"], e["sales_total"], e["price_mean"], e["price_std"]) == (0, 0, 0, 0, 0)
    assert e["days_since_first_sale"] == -1
    assert (a["product_group_name_code"], e["product_group_name_code"], e["article_idx"]) == (2, 3, 4)


def test_default_as_of_is_the_day_after_the_last_transaction(spark):
    _, _, inter, _, _ = frames(spark, TRANSACTIONS + FUTURE)
    assert default_as_of(inter) == D(2020, 9, 22)
    with pytest.raises(HmrecError, match="--as-of"):
        default_as_of(inter.where(F.lit(False)))


def test_build_features_job(spark, cfg):
    write_bronze(spark, cfg, transactions=TRANSACTIONS + FUTURE)
    summary = build_features(cfg, spark, as_of=AS_OF)
    assert summary["as_of"] == AS_OF.isoformat()
    assert summary["rows_in"] == len(TRANSACTIONS) + len(FUTURE)
    assert (summary["customers_new"], summary["articles_new"]) == (4, 5)

    cindex = {r[0]: r[1] for r in storage.read(spark, cfg, tables.CUSTOMER_INDEX).collect()}
    assert cindex == {cid(i): i - 1 for i in range(1, 5)}
    aindex = {r[0]: r[1] for r in storage.read(spark, cfg, tables.ARTICLE_INDEX).collect()}
    assert aindex == {aid(i): i - 1 for i in range(1, 6)}
    inter = storage.read(spark, cfg, tables.INTERACTIONS)
    assert inter.schema.simpleString() == schemas.INTERACTIONS.simpleString()
    got = sorted((r["t_dat"], r["customer_idx"], r["article_idx"], r["price"]) for r in inter.collect())
    want = sorted((t, cindex[c], aindex[a], p) for t, c, a, p, _ in TRANSACTIONS + FUTURE)
    assert got == want

    # The stored features are those of the rows before AS_OF only, although
    # the interactions hold the later rows too; the user's known answers are
    # checked in test_user_features_known_answers.
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF)
    assert users.schema.simpleString() == schemas.USER_FEATURES.simpleString()
    stored = {r["customer_id"]: r.asDict() for r in users.collect()}
    assert stored == users_by_id(spark, TRANSACTIONS)
    assert stored[cid(1)]["last_articles"] == [0, 2, 1, 0]
    items = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, AS_OF)
    assert {r["article_id"]: r.asDict() for r in items.collect()} == items_by_id(spark, TRANSACTIONS)
    assert summary["interactions_reused"] is False

    # Same bronze data, default as-of (the day after 2020-09-21): the
    # interactions are reused and the first as-of partition stays as it was.
    version = storage.version(spark, cfg, tables.INTERACTIONS)
    again = build_features(cfg, spark, as_of=None)
    assert again["as_of"] == "2020-09-22" and again["interactions_reused"] is True
    assert storage.version(spark, cfg, tables.INTERACTIONS) == version
    assert storage.read_as_of(spark, cfg, tables.USER_FEATURES, D(2020, 9, 22)).count() == 4
    first = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF).collect()
    assert {r["customer_id"]: r.asDict() for r in first} == stored


def test_build_features_names_a_missing_table(spark, cfg):
    with pytest.raises(FileNotFoundError, match="bronze/customers"):
        build_features(cfg, spark, as_of=AS_OF)
