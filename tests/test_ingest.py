"""The ingest job on tiny hand-written CSV files whose right answer is known row by row."""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from hmrec.etl import ingest
from hmrec.lake import schemas, storage
from hmrec.errors import InputError
from hmrec.lake import tables
from tests.conftest import make_cfg
from tests.conftest import aid, cid

ARTICLE_NAMES = [c for c, _ in schemas.ARTICLE_COLUMNS]
CUSTOMER_NAMES = [c for c, _ in schemas.CUSTOMER_COLUMNS]
TRANSACTION_NAMES = [c for c, _ in schemas.TRANSACTION_COLUMNS]
WHEN = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
MIN_DATE = dt.date(2000, 1, 1)


def line(*fields: str) -> str:
    """One CSV line, quoted the way the Kaggle files (and Python's csv module) quote."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue()


def write_csv(directory: Path, name: str, header: list[str], lines: list[str]) -> Path:
    """A CSV file with a header line and the given lines, as the data directory holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / name
    p.write_text("\n".join([",".join(header), *lines]) + "\n")
    return p


ARTICLE_DEFAULTS = {
    "product_code": "108775", "prod_name": "Strap top", "product_type_no": "253",
    "product_type_name": "Vest top", "product_group_name": "Garment Upper body",
    "graphical_appearance_no": "1010016", "graphical_appearance_name": "Solid",
    "colour_group_code": "9", "colour_group_name": "Black", "perceived_colour_value_id": "4",
    "perceived_colour_value_name": "Dark", "perceived_colour_master_id": "5",
    "perceived_colour_master_name": "Black", "department_no": "1676", "department_name": "Jersey Basic",
    "index_code": "A", "index_name": "Ladieswear", "index_group_no": "1", "index_group_name": "Ladieswear",
    "section_no": "16", "section_name": "Womens Everyday Basics", "garment_group_no": "1002",
    "garment_group_name": "Jersey Basic", "detail_desc": "Jersey top with narrow shoulder straps.",
}


def article(article_id: str, **fields: str) -> list[str]:
    """The fields of a valid articles.csv row, some replaced."""
    values = {"article_id": article_id, **ARTICLE_DEFAULTS, **fields}
    return [values[c] for c in ARTICLE_NAMES]


def customer(
    customer_id: str, fn="1.0", active="1.0", club="ACTIVE", news="Regularly", age="49", postal="p1"
) -> list[str]:
    """The fields of a customers.csv row."""
    return [customer_id, fn, active, club, news, age, postal]


# ---- articles -----------------------------------------------------------------------

A1 = article(aid(1))
A2 = article(aid(2), perceived_colour_value_id="-1", section_no="", detail_desc='Soft, "cosy" knit')
A3 = article(aid(3), product_code="108776")
ARTICLE_GOOD = [A1, A2, A3]
ARTICLE_BAD = [  # (fields or raw line, rule, reason)
    (article("108775015"), "article_id_format", "article_id '108775015' is not 10 digits"),
    (article(""), "article_id_format", "article_id is empty"),
    (article(aid(4), product_type_no="25.3"), "product_type_no_not_integer", "product_type_no '25.3' is not an integer"),
    (article(aid(5), department_no="99999999999"), "department_no_not_integer", "department_no '99999999999' is not an integer"),
    (article(aid(1), prod_name="Second copy"), "duplicate_article_id",
     "article_id '0000000001' appears more than once in articles.csv (the first row is kept)"),
    (line(*A3[:-1]), "field_count", f"wrong number of fields: 24 (expected 25: {', '.join(ARTICLE_NAMES)})"),
    (line(*article(aid(6)), "extra"), "field_count", f"wrong number of fields: 26 (expected 25: {', '.join(ARTICLE_NAMES)})"),
]


def article_lines() -> list[str]:
    """The lines of the test articles.csv: good and bad rows mixed."""
    bad = [b if isinstance(b, str) else line(*b) for b, _, _ in ARTICLE_BAD]
    # A bad row with the id of a later good row must not make that row a duplicate.
    return [line(*A1), bad[0], line(*article(aid(2), colour_group_code="x")), line(*A2), *bad[1:], line(*A3)]


ARTICLE_EXTRA_REJECT = (line(*article(aid(2), colour_group_code="x")), "colour_group_code_not_integer",
                        "colour_group_code 'x' is not an integer")


def expected_article(fields: list[str]) -> tuple:
    """An articles.csv row as bronze/articles holds it (hand-typed from the schema's types)."""
    out = []
    for (name, typ), value in zip(schemas.ARTICLE_COLUMNS, fields):
        out.append(None if value == "" else int(value) if typ == schemas.I else value)
    return tuple(out)


# ---- customers ------------------------------------------------------------------------

C1 = customer(cid(1))
C2 = customer(cid(2), "", "", "", "", "", "")
C3 = customer(cid(3), "1", "1", age="0")
C4 = customer(cid(4), age="120")
CUSTOMER_GOOD = [C1, C2, C3, C4]
CUSTOMER_EXPECTED = [
    (cid(1), 1.0, 1.0, "ACTIVE", "Regularly", 49, "p1"),
    (cid(2), None, None, None, None, None, None),
    (cid(3), 1.0, 1.0, "ACTIVE", "Regularly", 0, "p1"),
    (cid(4), 1.0, 1.0, "ACTIVE", "Regularly", 120, "p1"),
]
CUSTOMER_BAD = [
    (customer(cid(5).upper().replace("0", "A")), "customer_id_format",
     f"customer_id '{cid(5).upper().replace('0', 'A')}' is not 64 lowercase hex characters"),
    (customer("abc"), "customer_id_format", "customer_id 'abc' is not 64 lowercase hex characters"),
    (customer(cid(6), fn="0"), "fn_invalid", "FN '0' is not 1, 1.0 or empty"),
    (customer(cid(7), active="yes"), "active_invalid", "Active 'yes' is not 1, 1.0 or empty"),
    (customer(cid(8), age="121"), "age_invalid", "age '121' is not an integer in 0..120"),
    (customer(cid(9), age="-3"), "age_invalid", "age '-3' is not an integer in 0..120"),
    (customer(cid(10), age="30.5"), "age_invalid", "age '30.5' is not an integer in 0..120"),
    (customer(cid(1), age="20"), "duplicate_customer_id",
     f"customer_id '{cid(1)}' appears more than once in customers.csv (the first row is kept)"),
    (line(*customer(cid(11)), ""), "field_count", f"wrong number of fields: 8 (expected 7: {', '.join(CUSTOMER_NAMES)})"),
]


def customer_lines() -> list[str]:
    """The lines of the test customers.csv: good rows, then bad ones."""
    return [line(*c) for c in CUSTOMER_GOOD] + [b if isinstance(b, str) else line(*b) for b, _, _ in CUSTOMER_BAD]


# ---- transactions -----------------------------------------------------------------------

TX_GOOD = [  # (fields, typed row)
    (["2020-09-01", cid(1), aid(1), "0.0508474576271186", "2"],
     (dt.date(2020, 9, 1), cid(1), aid(1), 0.0508474576271186, 2)),
    # the same purchase twice in one day: both are kept
    (["2020-09-01", cid(1), aid(1), "0.0508474576271186", "2"],
     (dt.date(2020, 9, 1), cid(1), aid(1), 0.0508474576271186, 2)),
    (["2020-09-02", cid(2), aid(2), "1.6949152542372882e-05", "1"],
     (dt.date(2020, 9, 2), cid(2), aid(2), 1.6949152542372882e-05, 1)),
    (["2000-01-01", cid(3), aid(3), "0", "1"], (dt.date(2000, 1, 1), cid(3), aid(3), 0.0, 1)),
    (["2019-12-31", cid(4), aid(2), "1.0", "2"], (dt.date(2019, 12, 31), cid(4), aid(2), 1.0, 2)),
]
TX_BAD = [
    (["2020-02-30", cid(1), aid(1), "0.1", "1"], "t_dat_format", "t_dat '2020-02-30' is not a date of the form yyyy-MM-dd"),
    (["2020-9-1", cid(1), aid(1), "0.1", "1"], "t_dat_format", "t_dat '2020-9-1' is not a date of the form yyyy-MM-dd"),
    (["", cid(1), aid(1), "0.1", "1"], "t_dat_format", "t_dat is empty"),
    (["1999-12-31", cid(1), aid(1), "0.1", "1"], "t_dat_range", "t_dat '1999-12-31' is before 2000-01-01"),
    (["2999-01-01", cid(1), aid(1), "0.1", "1"], "t_dat_range", "t_dat '2999-01-01' is in the future"),
    (["2020-09-01", cid(1)[:63], aid(1), "0.1", "1"], "customer_id_format",
     f"customer_id '{cid(1)[:63]}' is not 64 lowercase hex characters"),
    (["2020-09-01", "ab,c", aid(1), "0.1", "1"], "customer_id_format", "customer_id 'ab,c' is not 64 lowercase hex characters"),
    (["2020-09-01", cid(1), "108775015", "0.1", "1"], "article_id_format", "article_id '108775015' is not 10 digits"),
    (["2020-09-01", cid(1), "010877501X", "0.1", "1"], "article_id_format", "article_id '010877501X' is not 10 digits"),
    (["2020-09-01", cid(1), aid(1), "-0.01", "1"], "price_negative", "price '-0.01' is negative"),
    (["2020-09-01", cid(1), aid(1), "abc", "1"], "price_not_numeric", "price 'abc' is not a number"),
    (["2020-09-01", cid(1), aid(1), "NaN", "1"], "price_not_numeric", "price 'NaN' is not a number"),
    (["2020-09-01", cid(1), aid(1), "", "1"], "price_not_numeric", "price is empty"),
    (["2020-09-01", cid(1), aid(1), "1.5", "1"], "price_above_max", "price '1.5' is above ingest.max_price = 1.0"),
    (["2020-09-01", cid(1), aid(1), "0.1", "3"], "sales_channel_unknown", "sales_channel_id '3' is not 1 or 2"),
    (["2020-09-01", cid(1), aid(1), "0.1", ""], "sales_channel_unknown", "sales_channel_id is empty"),
    (["2020-09-01", cid(1), aid(99), "0.1", "1"], "unknown_article", "article_id '0000000099' is not in articles.csv"),
    (["2020-09-01", cid(99), aid(1), "0.1", "1"], "unknown_customer", f"customer_id '{cid(99)}' is not in customers.csv"),
    # catalogue rows that were rejected do not count as known
    (["2020-09-01", cid(1), aid(4), "0.1", "1"], "unknown_article", "article_id '0000000004' is not in articles.csv"),
    (["2020-09-01", cid(6), aid(1), "0.1", "1"], "unknown_customer", f"customer_id '{cid(6)}' is not in customers.csv"),
    (line("2020-09-01", cid(1), aid(1), "0.1"), "field_count", f"wrong number of fields: 4 (expected 5: {', '.join(TRANSACTION_NAMES)})"),
    (line("2020-09-01", cid(1), aid(1), "0.1", "1", "x"), "field_count",
     f"wrong number of fields: 6 (expected 5: {', '.join(TRANSACTION_NAMES)})"),
]


def tx_lines() -> list[str]:
    """The lines of the test transactions_train.csv: good and bad rows mixed."""
    good = [line(*f) for f, _ in TX_GOOD]
    bad = [b if isinstance(b, str) else line(*b) for b, _, _ in TX_BAD]
    return good[:2] + bad[:10] + good[2:] + bad[10:]


def write_inputs(directory: Path) -> Path:
    """The three test input files in ``directory``."""
    write_csv(directory, "articles.csv", ARTICLE_NAMES, article_lines())
    write_csv(directory, "customers.csv", CUSTOMER_NAMES, customer_lines())
    write_csv(directory, "transactions_train.csv", TRANSACTION_NAMES, tx_lines())
    return directory


def raw_of(bad) -> str:
    """The line a bad row was written as."""
    return bad if isinstance(bad, str) else line(*bad)


def expected_rejects(bad_rows, extra=()) -> Counter:
    """(raw, rule, reason) of each bad row, as a multiset."""
    return Counter([(raw_of(b), rule, reason) for b, rule, reason in bad_rows] + list(extra))


def rejects_of(df) -> Counter:
    """(raw, rule, reason) of each reject row, as a multiset."""
    return Counter((r["raw"], r["rule"], r["reason"]) for r in df.collect())


def typed(schema) -> list[tuple]:
    """Column names and types (nullability aside)."""
    return [(f.name, f.dataType) for f in schema.fields]


# ---- headers (no Spark) ---------------------------------------------------------------


def test_renamed_column_is_named_with_what_was_found():
    with pytest.raises(InputError) as err:
        ingest.check_header(
            "transactions_train.csv",
            ["t_dat", "customer_id", "article_id", "prize", "sales_channel_id"],
            TRANSACTION_NAMES,
        )
    assert str(err.value).startswith(
        "transactions_train.csv: column 'price' is missing "
        "(found: t_dat, customer_id, article_id, prize, sales_channel_id)"
    )


@pytest.mark.parametrize(
    "found, message",
    [
        (["t_dat", "customer_id", "article_id", "price"], "column 'sales_channel_id' is missing"),
        (["t_dat", "customer_id", "article_id"], "columns 'price', 'sales_channel_id' are missing"),
        (TRANSACTION_NAMES + ["store"], "unexpected column 'store'"),
        (TRANSACTION_NAMES + ["price"], "column 'price' appears more than once"),
    ],
)
def test_header_problems(found, message):
    with pytest.raises(InputError, match=f"^transactions_train.csv: {message}"):
        ingest.check_header("transactions_train.csv", found, TRANSACTION_NAMES)


def test_header_in_another_order_is_accepted():
    ingest.check_header("customers.csv", list(reversed(CUSTOMER_NAMES)), CUSTOMER_NAMES)


# ---- validation transforms ------------------------------------------------------------------


def _raw(spark, path: Path):
    return ingest.read_csv(spark, str(path), ingest.read_header(spark, str(path)))


def test_articles_rules(spark, tmp_path):
    p = write_csv(tmp_path, "articles.csv", ARTICLE_NAMES, article_lines())
    good, rejects = ingest.validate_articles(_raw(spark, p), "src/articles.csv", WHEN)

    assert typed(good.schema) == typed(schemas.ARTICLES)
    assert sorted(good.collect()) == sorted(expected_article(a) for a in ARTICLE_GOOD)
    got = rejects.collect()
    # collected timestamps come back as naive local time
    assert {(r["source"], r["ingested_at"]) for r in got} == {
        ("src/articles.csv", WHEN.astimezone().replace(tzinfo=None))
    }
    assert rejects_of(rejects) == expected_rejects(ARTICLE_BAD, [ARTICLE_EXTRA_REJECT])


def test_customers_rules(spark, tmp_path):
    p = write_csv(tmp_path, "customers.csv", CUSTOMER_NAMES, customer_lines())
    good, rejects = ingest.validate_customers(_raw(spark, p), "customers.csv", WHEN)

    assert typed(good.schema) == typed(schemas.CUSTOMERS)
    # the first row of a repeated id is the one kept (age 49, not 20)
    assert sorted(good.collect()) == sorted(CUSTOMER_EXPECTED)
    assert rejects_of(rejects) == expected_rejects(CUSTOMER_BAD)


def test_transactions_rules(spark, tmp_path):
    p = write_csv(tmp_path, "transactions_train.csv", TRANSACTION_NAMES, tx_lines())
    articles = spark.createDataFrame([(aid(i),) for i in (1, 2, 3)], "article_id string")
    # a repeated catalogue id must not multiply purchases
    customers = spark.createDataFrame([(cid(i),) for i in (1, 2, 3, 4, 1)], "customer_id string")
    good, rejects = ingest.validate_transactions(
        _raw(spark, p), articles, customers, "tx.csv", WHEN,
        max_price=1.0, min_date=MIN_DATE, broadcast_customers=True,
    )

    assert typed(good.schema) == typed(schemas.TRANSACTIONS)
    assert sorted(good.collect()) == sorted(row for _, row in TX_GOOD)
    assert rejects_of(rejects) == expected_rejects(TX_BAD)


def test_columns_in_another_order_are_read_by_name(spark, tmp_path):
    order = ["price", "article_id", "sales_channel_id", "t_dat", "customer_id"]
    fields = dict(zip(TRANSACTION_NAMES, ["2020-09-01", cid(1), aid(1), "0.25", "2"]))
    p = write_csv(tmp_path, "transactions_train.csv", order, [line(*[fields[c] for c in order])])
    articles = spark.createDataFrame([(aid(1),)], "article_id string")
    customers = spark.createDataFrame([(cid(1),)], "customer_id string")
    good, rejects = ingest.validate_transactions(
        _raw(spark, p), articles, customers, "tx.csv", WHEN, max_price=1.0, min_date=MIN_DATE
    )
    assert good.collect() == [(dt.date(2020, 9, 1), cid(1), aid(1), 0.25, 2)]
    assert rejects.count() == 0


# ---- the job ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    """One ingest of the hand-written files into a lakehouse that the tests below leave as it is.

    The customers are joined by a shuffle here (the unit test above broadcasts
    them), so both ways of the catalogue check meet the same expected rows.
    """
    data = write_inputs(tmp_path_factory.mktemp("data"))
    # Most rows of these files are bad on purpose: the reject-share guard is off.
    cfg = make_cfg(tmp_path_factory.mktemp("lake"), "ingest.broadcast_max_customers=0", "ingest.max_reject_share=1")
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    return cfg, data, summary


def _state(spark, cfg) -> dict:
    names = [*ingest.TABLES.values(), ingest.REJECTS_TABLE]
    return {
        n: (storage.version(spark, cfg, n), Counter(tuple(r) for r in storage.read(spark, cfg, n).collect()))
        for n in names
    }


def test_ingest_writes_bronze_and_rejects(spark, ingested):
    cfg, data, summary = ingested
    assert summary["skipped"] is False
    n_article_rejects = len(ARTICLE_BAD) + 1
    assert (summary["articles_read"], summary["articles_written"], summary["articles_rejected"]) == (
        len(ARTICLE_GOOD) + n_article_rejects, len(ARTICLE_GOOD), n_article_rejects
    )
    assert (summary["customers_read"], summary["customers_written"], summary["customers_rejected"]) == (
        len(CUSTOMER_GOOD) + len(CUSTOMER_BAD), len(CUSTOMER_GOOD), len(CUSTOMER_BAD)
    )
    assert (summary["transactions_read"], summary["transactions_written"], summary["transactions_rejected"]) == (
        len(TX_GOOD) + len(TX_BAD), len(TX_GOOD), len(TX_BAD)
    )
    assert summary["rejects_written"] == n_article_rejects + len(CUSTOMER_BAD) + len(TX_BAD)
    assert summary["rejected_by_reason"]["transactions_train.csv"] == dict(Counter(rule for _, rule, _ in TX_BAD))
    assert summary["rejected_by_reason"]["articles.csv"] == dict(
        Counter([rule for _, rule, _ in ARTICLE_BAD] + [ARTICLE_EXTRA_REJECT[1]])
    )

    tx = storage.read(spark, cfg, tables.TRANSACTIONS)
    assert typed(tx.schema) == typed(schemas.TRANSACTIONS)
    assert sorted(tx.collect()) == sorted(row for _, row in TX_GOOD)
    assert sorted(storage.read(spark, cfg, tables.CUSTOMERS).collect()) == sorted(CUSTOMER_EXPECTED)
    assert sorted(storage.read(spark, cfg, tables.ARTICLES).collect()) == sorted(
        expected_article(a) for a in ARTICLE_GOOD
    )

    rejects = storage.read(spark, cfg, tables.REJECTS)
    assert typed(rejects.schema) == typed(schemas.REJECTS)
    rows = rejects.collect()
    by_file = Counter(os.path.basename(r["source"]) for r in rows)
    assert by_file == {"articles.csv": n_article_rejects, "customers.csv": len(CUSTOMER_BAD),
                       "transactions_train.csv": len(TX_BAD)}
    tx_rejects = Counter((r["raw"], r["reason"]) for r in rows if r["source"].endswith("transactions_train.csv"))
    assert tx_rejects == Counter((raw_of(b), reason) for b, _, reason in TX_BAD)


def test_reingest_of_same_files_changes_nothing(spark, ingested):
    cfg, data, _ = ingested
    before = _state(spark, cfg)
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    assert summary["skipped"] is True
    assert _state(spark, cfg) == before


def test_reingest_of_clean_files_with_no_rejects_changes_nothing(spark, tmp_path):
    data = tmp_path / "clean"
    write_csv(data, "articles.csv", ARTICLE_NAMES, [line(*a) for a in ARTICLE_GOOD])
    write_csv(data, "customers.csv", CUSTOMER_NAMES, [line(*c) for c in CUSTOMER_GOOD])
    write_csv(data, "transactions_train.csv", TRANSACTION_NAMES, [line(*f) for f, _ in TX_GOOD])
    cfg = make_cfg(tmp_path / "lake")
    first = ingest.ingest(cfg, spark, data_dir=str(data))
    assert first["skipped"] is False and first["rejects_written"] == 0
    before = _state(spark, cfg)
    assert ingest.ingest(cfg, spark, data_dir=str(data))["skipped"] is True
    assert _state(spark, cfg) == before


@pytest.mark.parametrize(
    "header, message",
    [
        (["t_dat", "customer_id", "article_id", "prize", "sales_channel_id"],
         "transactions_train.csv: column 'price' is missing (found: t_dat, customer_id, article_id, prize, sales_channel_id)"),
        (["t_dat", "customer_id", "article_id", "price"], "transactions_train.csv: column 'sales_channel_id' is missing"),
    ],
)
def test_bad_header_fails_before_anything_is_written(spark, ingested, tmp_path, header, message):
    cfg, data, _ = ingested
    before = _state(spark, cfg)
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    # a new directory is a new fingerprint, and articles and customers are valid: only the header stops the job
    fields = ["2020-09-01", cid(1), aid(1), "0.1", "1"][: len(header)]
    write_csv(bad, "transactions_train.csv", header, [line(*fields)])
    with pytest.raises(InputError) as err:
        ingest.ingest(cfg, spark, data_dir=str(bad))
    assert message in str(err.value)
    assert _state(spark, cfg) == before


def test_missing_file_fails_before_anything_is_written(spark, ingested, tmp_path):
    cfg, data, _ = ingested
    before = _state(spark, cfg)
    partial = tmp_path / "partial"
    shutil.copytree(data, partial)
    (partial / "customers.csv").unlink()
    with pytest.raises(InputError, match=r"^customers.csv not found in .*partial"):
        ingest.ingest(cfg, spark, data_dir=str(partial))
    assert _state(spark, cfg) == before


def test_touched_files_with_the_same_rows_change_nothing(spark, ingested, capsys):
    # A new fingerprint, the same rows: every date's count and checksum match and the catalogues and
    # their rejects are already in bronze, so nothing is written (tests/test_incremental.py appends).
    cfg, data, _ = ingested
    before = _state(spark, cfg)
    for f in data.iterdir():
        os.utime(f, (f.stat().st_atime, f.stat().st_mtime + 60))
    capsys.readouterr()
    again = ingest.ingest(cfg, spark, data_dir=str(data))
    assert again["skipped"] is True and again["mode"] == "unchanged"
    assert "no new rows: every date of transactions_train.csv up to 2020-09-02 matches" in capsys.readouterr().err
    assert _state(spark, cfg) == before


def test_check_constraints_reject_a_direct_write(spark, ingested):
    cfg, _, _ = ingested
    before = _state(spark, cfg)
    violations = [
        ((dt.date(2020, 9, 1), cid(1), aid(1), -0.5, 1), "price_non_negative"),
        ((dt.date(2020, 9, 1), cid(1), aid(1), 0.5, 3), "sales_channel_known"),
        ((dt.date(2020, 9, 1), cid(1), "123", 0.5, 1), "article_id_length"),
        ((dt.date(2020, 9, 1), cid(1)[:63], aid(1), 0.5, 1), "customer_id_length"),
        ((None, cid(1), aid(1), 0.5, 1), "t_dat_present"),
    ]
    for row, constraint in violations:
        with pytest.raises(Exception, match=constraint):
            storage.write(spark.createDataFrame([row], schemas.TRANSACTIONS), cfg, tables.TRANSACTIONS, mode="append")
    with pytest.raises(Exception, match="article_id_length"):
        storage.write(spark.createDataFrame([expected_article(article("123"))], schemas.ARTICLES),
                      cfg, tables.ARTICLES, mode="append")
    with pytest.raises(Exception, match="customer_id_length"):
        storage.write(spark.createDataFrame([(cid(1) + "0", None, None, None, None, 30, None)], schemas.CUSTOMERS),
                      cfg, tables.CUSTOMERS, mode="append")
    assert _state(spark, cfg) == before
