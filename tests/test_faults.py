"""The fault suite: bad inputs, broken artifacts, bad settings, jobs killed at every commit point, two jobs at once.

Every case asserts the exit status or the error, its message, and what the
readers of the lakehouse see before and after: the previous good version of
every table, or exactly the intended new one. The fast probes run with
`make test`; the tests that start and kill ``hmrec`` processes are marked
``faults`` and run with `make test-faults` (and in CI).

Two session lakehouses serve every case, each copied before a case changes it:
an ingest of a small clean data set (``small_lake``) and a whole refresh of it
(``served_lake``, with a few training steps).
"""
from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from pyspark.sql import functions as F

from hmrec import pipeline
from hmrec.cli import main
from hmrec.config import load_config
from hmrec.errors import HmrecError, InputError
from hmrec.etl import ingest
from hmrec.lake import lease, manifest, reader, schemas, storage, tables
from hmrec.model import registry
from hmrec.serve import index as index_mod
from hmrec.serve import score as score_mod
from hmrec.serve.recommend import recommend
from tests.conftest import TEST_SPARK, make_cfg
from tests.test_ingest import ARTICLE_NAMES, CUSTOMER_NAMES, TRANSACTION_NAMES, aid, article, cid, customer

ROOT = Path(__file__).resolve().parents[1]
AS_OF = dt.date(2020, 9, 16)
N_ARTICLES, N_CUSTOMERS, N_TX = 24, 30, 600
# A few steps of a small model: the refresh's artifacts, not its quality, are under test here.
FAST = ["train.epochs=1", "train.max_steps=3", "train.val_users=0", "train.batch_size=64",
        "train.random_negatives=16", "train.log_every=1000", "train.embedding_dim=16", "train.id_dim=8",
        "train.attr_dim=4", "train.hidden_dim=32", "index.recall_sample=50"]
BRONZE_VIEW = (tables.ARTICLES, tables.CUSTOMERS, tables.TRANSACTIONS, tables.REJECTS, tables.INGEST_MANIFESTS)


# ---- data --------------------------------------------------------------------------------


def line(*fields: str) -> str:
    """One CSV line as Python's csv module writes it: a field holding a comma, a quote or a line break is quoted."""
    buf = io.StringIO()
    csv.writer(buf).writerow(fields)  # the default line terminator, \r\n, makes line breaks quoted
    return buf.getvalue()[: -len("\r\n")]


def clean_files() -> dict[str, tuple[list[str], list[str]]]:
    """A small clean data set: {file name: (header, lines)}; 600 purchases from 2020-07-01 to 2020-09-20."""
    arts = [line(*article(aid(i), prod_name=f"Top {i}", product_type_no=str(250 + i % 4),
                          detail_desc=f'Soft top no. {i}, "cosy", with straps')) for i in range(1, N_ARTICLES + 1)]
    custs = [line(*customer(cid(i), age=str(18 + 2 * i))) for i in range(1, N_CUSTOMERS + 1)]
    start = dt.date(2020, 7, 1)
    tx = []
    for i in range(N_TX):
        day = start + dt.timedelta(days=(i * 7) % 82)
        c = 1 + i % N_CUSTOMERS
        a = 1 + (c * 3 + i // N_CUSTOMERS) % N_ARTICLES
        tx.append(line(day.isoformat(), cid(c), aid(a), f"0.0{1 + i % 9}", str(1 + i % 2)))
    return {"articles.csv": (ARTICLE_NAMES, arts), "customers.csv": (CUSTOMER_NAMES, custs),
            "transactions_train.csv": (TRANSACTION_NAMES, tx)}


def write_files(directory: Path, files: dict, newline: str = "\n", bom: bool = False) -> Path:
    """Write {file name: (header, lines) or raw bytes} into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, bytes):
            (directory / name).write_bytes(content)
            continue
        header, lines = content
        text = newline.join([",".join(header), *lines]) + newline
        (directory / name).write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    return directory


def variant(tmp_path: Path, name: str = "data", **changes) -> Path:
    """The clean data set with some files replaced (``transactions_train_csv=...``: dots as underscores)."""
    files = clean_files()
    for key, content in changes.items():
        fname = key.replace("_csv", ".csv")
        if content is None:
            files.pop(fname)
        else:
            files[fname] = content
    return write_files(tmp_path / name, files)


def tx_lines() -> list[str]:
    return clean_files()["transactions_train.csv"][1]


# ---- lakehouses ----------------------------------------------------------------------------


def copy_lake(src: Path | str, dst: Path) -> Path:
    """Copy a lakehouse, re-rooting the MLflow registry's artifact paths to the copy."""
    shutil.copytree(src, dst)
    db = dst / "mlflow.db"
    if db.exists():
        old, new = str(Path(src).resolve()), str(dst.resolve())
        con = sqlite3.connect(db)
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("model_versions", "source"), ("model_versions", "storage_location")):
            con.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
        con.commit()
        con.close()
    return dst


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return write_files(tmp_path_factory.mktemp("small_data"), clean_files())


@pytest.fixture(scope="session")
def small_lake(spark, small_data, tmp_path_factory) -> Path:
    """An ingest of the clean data set."""
    lake = tmp_path_factory.mktemp("small_lake") / "lake"
    summary = ingest.ingest(make_cfg(lake), spark, data_dir=str(small_data))
    assert summary["transactions_written"] == N_TX and summary["rejects_written"] == 0
    return lake


@pytest.fixture(scope="session")
def served_lake(spark, small_lake, small_data, tmp_path_factory) -> Path:
    """A whole refresh of the clean data set for AS_OF (on a copy of ``small_lake``: its ingest is skipped)."""
    lake = copy_lake(small_lake, tmp_path_factory.mktemp("served_lake") / "lake")
    results = pipeline.run(make_cfg(lake, *FAST), spark, data_dir=str(small_data), as_of=AS_OF)
    assert results["ingest"]["skipped"] is True and "evaluate" in results
    return lake


def view(cfg, which=BRONZE_VIEW) -> dict:
    """What readers see of each table: (version, rows, digest of the rows as a multiset); None if missing.

    Read as the JVM-free reader reads (bronze at the last manifest's versions), which is what
    Spark's reads see too (both ask :func:`hmrec.lake.manifest.pinned_version`).
    """
    out = {}
    for t in which:
        location = cfg.table_path(t.name)
        try:
            pinned = manifest.pinned_version(cfg, t)
            delta = DeltaTable(location) if pinned is None else DeltaTable(location, version=pinned)
        except TableNotFoundError:
            out[t.name] = None
            continue
        rows = sorted(repr(r) for f in delta.file_uris() for r in pq.read_table(f).to_pylist())
        out[t.name] = (delta.version(), len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16])
    return out


def contents(v: dict) -> dict:
    """A view without the versions: the rows alone."""
    return {k: (None if x is None else x[1:]) for k, x in v.items()}


def lake_args(lake: Path, *extra: str) -> list[str]:
    return ["--set", f"paths.lakehouse={lake}", *[a for s in [*TEST_SPARK, *FAST, *extra] for a in ("--set", s)]]


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the command line in this process (its Spark session reused): (exit status, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def error_line(err: str, command: str) -> str:
    """The one error line of a failed command; nothing else may look like an error or a traceback."""
    lines = [ln for ln in err.splitlines() if ln.startswith(f"hmrec {command}: error: ")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "weights_only" not in err
    return lines[0]


def refused(spark, lake: Path, tmp_path: Path, data: Path, *overrides: str) -> tuple[str, dict, dict]:
    """Ingest ``data`` into a copy of ``lake``, expecting an InputError: (message, view before, view after)."""
    cfg = make_cfg(copy_lake(lake, tmp_path / "lake"), *overrides)
    before = view(cfg)
    with pytest.raises(InputError) as err:
        ingest.ingest(cfg, spark, data_dir=str(data))
    return str(err.value), before, view(cfg)


def accepted(spark, lake: Path, tmp_path: Path, data: Path, *overrides: str):
    """Ingest ``data`` into a copy of ``lake``: (cfg, summary, view before, view after)."""
    cfg = make_cfg(copy_lake(lake, tmp_path / "lake"), *overrides)
    before = view(cfg)
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    return cfg, summary, before, view(cfg)


# ---- bad inputs that are refused, leaving every table as it was ---------------------------------------


REFUSED = {
    "header-only transactions file": (
        dict(transactions_train_csv=(TRANSACTION_NAMES, [])),
        [f"transactions_train.csv holds no rows (only its header), which would replace the {N_TX:,} rows of "
         f"{tables.TRANSACTIONS}: fewer than ingest.min_keep_share = 0.5 of them", "nothing was written",
         "--allow-shrink"]),
    "far fewer transactions": (
        dict(transactions_train_csv=(TRANSACTION_NAMES, tx_lines()[:120])),
        [f"transactions_train.csv has 120 valid rows, which would replace the {N_TX:,} rows of {tables.TRANSACTIONS}",
         "--allow-shrink (or --set ingest.min_keep_share=0"]),
    "far fewer articles": (
        dict(articles_csv=(ARTICLE_NAMES, clean_files()["articles.csv"][1][:4])),
        [f"articles.csv has 4 valid rows, which would replace the {N_ARTICLES} rows of {tables.ARTICLES}",
         "transactions_train.csv:", "most for unknown_article"]),
    "data from another period": (
        dict(transactions_train_csv=(TRANSACTION_NAMES, [ln.replace("2020-", "1990-") for ln in tx_lines()])),
        [f"transactions_train.csv: {N_TX} of its {N_TX} rows (100%) were rejected, more than "
         "ingest.max_reject_share = 0.5", "rule t_dat_range rejected 600 rows with t_dat 1990-07-01 .. 1990-09-20",
         "ingest.min_date = 2000-01-01", "--set ingest.min_date=1990-01-01"]),
    "dates in the future": (
        dict(transactions_train_csv=(TRANSACTION_NAMES, [ln.replace("2020-", "2999-") for ln in tx_lines()])),
        ["rule t_dat_range rejected 600 rows with t_dat 2999-07-01 .. 2999-09-20", "dates after today are never accepted"]),
    "most prices above the maximum": (
        dict(transactions_train_csv=(TRANSACTION_NAMES, [ln.rsplit(",", 2)[0] + ",1.5," + ln.rsplit(",", 1)[1]
                                                          if i % 5 else ln for i, ln in enumerate(tx_lines())])),
        ["transactions_train.csv: 480 of its 600 rows (80%) were rejected", "most for price_above_max: 480 rows",
         "price '1.5' is above ingest.max_price = 1.0"]),
    "empty transactions file": (dict(transactions_train_csv=b""), ["transactions_train.csv: the first line is empty"]),
    "renamed column": (
        dict(transactions_train_csv=(["t_dat", "customer_id", "article_id", "prize", "sales_channel_id"], tx_lines())),
        ["transactions_train.csv: column 'price' is missing (found: t_dat, customer_id, article_id, prize, "
         "sales_channel_id)"]),
    "missing column": (
        dict(customers_csv=(CUSTOMER_NAMES[:-1], [ln.rsplit(",", 1)[0] for ln in clean_files()["customers.csv"][1]])),
        ["customers.csv: column 'postal_code' is missing"]),
    "extra column": (
        dict(transactions_train_csv=(TRANSACTION_NAMES + ["store"], [ln + ",s1" for ln in tx_lines()])),
        ["transactions_train.csv: unexpected column 'store'"]),
    "a column twice": (
        dict(articles_csv=(ARTICLE_NAMES + ["prod_name"], [ln + ",x" for ln in clean_files()["articles.csv"][1]])),
        ["articles.csv: column 'prod_name' appears more than once"]),
    "a missing file": (dict(customers_csv=None), ["customers.csv not found in", "hmrec generate --out DIR"]),
    "binary garbage": (dict(transactions_train_csv=np.random.default_rng(0).bytes(5000)),
                       ["transactions_train.csv", "header"]),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_input_is_refused_and_nothing_changes(spark, small_lake, tmp_path, case):
    changes, parts = REFUSED[case]
    message, before, after = refused(spark, small_lake, tmp_path, variant(tmp_path, **changes))
    for part in parts:
        assert part in message, message
    assert "\n" not in message
    assert after == before


def test_gzip_in_place_of_the_csv_is_named_with_the_fix(spark, small_lake, tmp_path):
    data = variant(tmp_path)
    raw = (data / "transactions_train.csv").read_bytes()
    (data / "transactions_train.csv.gz").write_bytes(gzip.compress(raw))
    (data / "transactions_train.csv").unlink()
    message, before, after = refused(spark, small_lake, tmp_path, data)
    assert message.startswith(f"transactions_train.csv not found in {data}, but transactions_train.csv.gz is there")
    assert f"gunzip -k {data}/transactions_train.csv.gz" in message
    assert after == before


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_data_that_is_no_directory_is_named(spark, small_lake, tmp_path, what):
    data = tmp_path / "nowhere"
    if what == "a file":
        data.write_text("x")
    message, before, after = refused(spark, small_lake, tmp_path, data)
    assert message.startswith(f"--data {data} {'does not exist' if what == 'missing' else 'is a file'}")
    assert after == before


def test_allow_shrink_replaces_deliberately_and_the_cli_says_how(spark, small_lake, tmp_path, capsys):
    data = variant(tmp_path, transactions_train_csv=(TRANSACTION_NAMES, []))
    lake = copy_lake(small_lake, tmp_path / "lake")
    cfg = make_cfg(lake)
    before = view(cfg)
    code, err = cli(capsys, "ingest", "--data", str(data), *lake_args(lake))
    assert code == 2
    assert "--allow-shrink" in error_line(err, "ingest")
    assert view(cfg) == before
    code, err = cli(capsys, "ingest", "--data", str(data), "--allow-shrink", *lake_args(lake))
    assert code == 0, err
    after = view(cfg)
    assert after[tables.TRANSACTIONS.name][1] == 0
    assert contents(after)[tables.ARTICLES.name] == contents(before)[tables.ARTICLES.name]
    assert manifest.latest(cfg).seq == manifest.latest(make_cfg(small_lake)).seq + 1


# ---- inputs that are accepted, whole -----------------------------------------------------------------


def test_bom_and_crlf_read_as_the_clean_files(spark, small_lake, tmp_path):
    base = contents(view(make_cfg(small_lake)))
    data = write_files(tmp_path / "bom-crlf", clean_files(), bom=True, newline="\r\n")
    assert (data / "customers.csv").read_bytes().startswith(b"\xef\xbb\xbfcustomer_id,FN,")
    assert (data / "customers.csv").read_bytes().count(b"\r\n") == N_CUSTOMERS + 1
    cfg = make_cfg(tmp_path / "fresh")  # read whole into a new lakehouse
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    assert summary["rejects_written"] == 0 and summary["skipped"] is False
    got = contents(view(cfg))
    for t in (tables.ARTICLES, tables.CUSTOMERS, tables.TRANSACTIONS):
        assert got[t.name] == base[t.name], t
    # over the clean files' ingest, every date's row count and checksum match: nothing is new
    _, summary, before, after = accepted(spark, small_lake, tmp_path, data)
    assert summary["skipped"] is True and summary["mode"] == "unchanged"
    # the bronze tables are untouched; only the manifest gains a row recording the new files' fingerprint
    manifests = tables.INGEST_MANIFESTS.name
    assert {t: v for t, v in after.items() if t != manifests} == {t: v for t, v in before.items() if t != manifests}
    assert after[manifests][:2] == (before[manifests][0] + 1, before[manifests][1] + 1)


def test_quoted_commas_quotes_line_breaks_and_non_ascii_are_stored_whole(spark, small_lake, tmp_path):
    texts = {
        1: 'First line of the text\nsecond line, with a comma, and "quotes"',
        2: "Strümpfe – 靴下 🧦, naïve café\r\nmit Umbruch",
        3: "ends with a line break\n",
    }
    arts = [line(*article(aid(i), prod_name=("Übergröße Top" if i == 2 else f"Top {i}"),
                          detail_desc=texts.get(i, f'Soft top no. {i}, "cosy", with straps')))
            for i in range(1, N_ARTICLES + 1)]
    data = variant(tmp_path, articles_csv=(ARTICLE_NAMES, arts))
    cfg, summary, before, after = accepted(spark, small_lake, tmp_path, data)
    assert summary["articles_read"] == N_ARTICLES and summary["articles_rejected"] == 0
    assert summary["rejects_written"] == 0
    stored = {r["article_id"]: (r["prod_name"], r["detail_desc"])
              for r in storage.read(spark, cfg, tables.ARTICLES).collect()}
    assert len(stored) == N_ARTICLES
    for i, text in texts.items():
        assert stored[aid(i)][1] == text
    assert stored[aid(2)][0] == "Übergröße Top"
    assert stored[aid(5)][1] == 'Soft top no. 5, "cosy", with straps'


def test_bad_rows_are_rejected_naming_file_column_and_value_and_the_rest_kept(spark, small_lake, tmp_path, capsys):
    arts = clean_files()["articles.csv"][1]
    custs = clean_files()["customers.csv"][1]
    tx = tx_lines()
    bad = {0: "2020-02-30", 1: "2020-9-1", 4: "2999-07-01", 5: "2999-07-15"}
    tx = [ln.replace(ln.split(",")[0], bad[i], 1) if i in bad else ln for i, ln in enumerate(tx)]
    tx[2] = ",".join(tx[2].split(",")[:3] + ["abc", "1"])
    tx[3] = ",".join(tx[3].split(",")[:3] + ["-0.5", "1"])
    data = variant(tmp_path, articles_csv=(ARTICLE_NAMES, arts + [line(*article(aid(1), prod_name="Again"))]),
                   customers_csv=(CUSTOMER_NAMES, custs + [line(*customer(cid(1), age="70"))]),
                   transactions_train_csv=(TRANSACTION_NAMES, tx))
    p = data / "transactions_train.csv"
    text = p.read_text().rstrip("\n")
    p.write_text(text[: len(text) - 30])  # the export stopped in the middle of its last row
    cfg, summary, before, after = accepted(spark, small_lake, tmp_path, data)
    assert summary["rejected_by_reason"] == {
        "articles.csv": {"duplicate_article_id": 1}, "customers.csv": {"duplicate_customer_id": 1},
        "transactions_train.csv": {"t_dat_format": 2, "price_not_numeric": 1, "price_negative": 1, "t_dat_range": 2,
                                   "field_count": 1}}
    rejects = {r["reason"]: r["raw"] for r in storage.read(spark, cfg, tables.REJECTS).collect()}
    cut = text.splitlines()[-1][: len(text.splitlines()[-1]) - 30]
    assert rejects == {
        f"article_id '{aid(1)}' appears more than once in articles.csv (the first row is kept)": line(*article(aid(1), prod_name="Again")),
        f"customer_id '{cid(1)}' appears more than once in customers.csv (the first row is kept)": line(*customer(cid(1), age="70")),
        "t_dat '2020-02-30' is not a date of the form yyyy-MM-dd": tx[0],
        "t_dat '2020-9-1' is not a date of the form yyyy-MM-dd": tx[1],
        "price 'abc' is not a number": tx[2], "price '-0.5' is negative": tx[3],
        "t_dat '2999-07-01' is in the future": tx[4], "t_dat '2999-07-15' is in the future": tx[5],
        f"wrong number of fields: 2 (expected 5: {', '.join(TRANSACTION_NAMES)})": cut,
    }
    assert after[tables.TRANSACTIONS.name][1] == N_TX - 7
    assert after[tables.ARTICLES.name][1:] == before[tables.ARTICLES.name][1:]  # the first row of the id is kept
    assert after[tables.CUSTOMERS.name][1:] == before[tables.CUSTOMERS.name][1:]
    err = capsys.readouterr().err
    assert "rule t_dat_range rejected 2 rows with t_dat 2999-07-01 .. 2999-07-15" in err
    assert "dates after today are never accepted" in err


# ---- an ingest lands whole or not at all -------------------------------------------------------------


def test_a_half_written_ingest_is_invisible_until_the_next_one_finishes(spark, small_lake, tmp_path):
    cfg = make_cfg(copy_lake(small_lake, tmp_path / "lake"))
    before = view(cfg)
    files_before = reader.live_files(cfg, tables.ARTICLES, "")
    # What a killed ingest leaves: a new version of one bronze table and no manifest.
    storage.write(storage.read(spark, cfg, tables.ARTICLES).limit(3), cfg, tables.ARTICLES)
    assert storage.head_version(spark, cfg, tables.ARTICLES) == before[tables.ARTICLES.name][0] + 1
    assert view(cfg) == before
    assert reader.live_files(cfg, tables.ARTICLES, "") == files_before
    data = variant(tmp_path, transactions_train_csv=(TRANSACTION_NAMES, tx_lines()[:500]))
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    after = view(cfg)
    assert summary["manifest_id"] == manifest.latest(cfg).manifest_id != manifest.latest(make_cfg(small_lake)).manifest_id
    assert after[tables.ARTICLES.name][1] == N_ARTICLES and after[tables.TRANSACTIONS.name][1] == 500
    assert after[tables.ARTICLES.name][0] == before[tables.ARTICLES.name][0] + 2


def test_readers_of_a_lakehouse_whose_first_ingest_never_finished_are_told(spark, small_data, tmp_path, capsys):
    lake = tmp_path / "lake"
    cfg = make_cfg(lake)
    storage.ensure_table(spark, cfg, tables.INGEST_MANIFESTS)  # what the first ingest does before its first table
    for t in (tables.ARTICLES, tables.CUSTOMERS, tables.TRANSACTIONS):  # killed before its manifest
        storage.write(spark.createDataFrame([], t.schema), cfg, t)
    with pytest.raises(manifest.NoCompleteIngest, match="no ingest has finished"):
        storage.read(spark, cfg, tables.ARTICLES)
    code, err = cli(capsys, "features", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    assert code == 2 and "run `hmrec ingest --data DIR`" in error_line(err, "features")
    code, err = cli(capsys, "ingest", "--data", str(small_data), *lake_args(lake))
    assert code == 0, err
    assert view(cfg)[tables.TRANSACTIONS.name][1] == N_TX


def test_a_lakehouse_from_before_manifests_is_adopted_then_ingested(spark, small_lake, small_data, tmp_path, capsys):
    cfg = make_cfg(copy_lake(small_lake, tmp_path / "lake"))
    shutil.rmtree(cfg.table_path(tables.INGEST_MANIFESTS.name))
    before = view(cfg)
    assert before[tables.INGEST_MANIFESTS.name] is None and before[tables.TRANSACTIONS.name][1] == N_TX
    data = variant(tmp_path, transactions_train_csv=(TRANSACTION_NAMES, tx_lines()[:550]))
    summary = ingest.ingest(cfg, spark, data_dir=str(data))
    assert "recorded the bronze tables as they are as ingest manifest" in capsys.readouterr().err
    rows = storage.read(spark, cfg, tables.INGEST_MANIFESTS).orderBy("seq").collect()
    assert [r["seq"] for r in rows] == [1, 2] and rows[1]["manifest_id"] == summary["manifest_id"]
    assert rows[0]["rows"][tables.TRANSACTIONS.name] == N_TX and rows[1]["rows"][tables.TRANSACTIONS.name] == 550


def test_the_manifest_reads_the_same_through_spark_and_delta_rs(spark, small_lake):
    cfg = make_cfg(small_lake)
    fields = ("manifest_id", "seq", "versions", "rows", "fingerprint")
    through_spark = manifest._from_rows(manifest._read_spark(spark, cfg))
    through_rs = manifest.latest(cfg)
    assert [getattr(through_spark, f) for f in fields] == [getattr(through_rs, f) for f in fields]
    assert set(through_rs.versions) == {t.name for t in tables.ALL if t.in_manifest}
    assert through_rs.rows[tables.TRANSACTIONS.name] == N_TX


def test_an_unchanged_input_is_skipped_and_keeps_the_manifest(spark, small_lake, small_data, tmp_path):
    cfg, summary, before, after = accepted(spark, small_lake, tmp_path, small_data)
    assert summary["skipped"] is True and summary["manifest_id"] == manifest.latest(cfg).manifest_id
    assert after == before


# ---- the scoring job checks what it publishes, before the commit ------------------------------------


def _lists(lists: dict[str, list]) -> pd.DataFrame:
    rows = [(c, a, r + 1, 1.0, "model", "1", AS_OF) for c, arts in lists.items() for r, a in enumerate(arts)]
    return pd.DataFrame(rows, columns=schemas.RECOMMENDATIONS.fieldNames())


GOOD_LISTS = {cid(1): [aid(1), aid(2), aid(3)], cid(2): [aid(3), aid(2), aid(1)]}
IDS = np.array([cid(1), cid(2)], dtype=object)


@pytest.mark.parametrize("case, frame, message", [
    ("an article twice", _lists({**GOOD_LISTS, cid(2): [aid(3), aid(3), aid(1)]}),
     f"1 customers of a scored batch do not have exactly 3 distinct articles ranked 1..3 (e.g. customer_id {cid(2)}: "
     f"articles ['{aid(3)}', '{aid(3)}', '{aid(1)}'], ranks [1, 2, 3])"),
    ("a missing article", _lists({**GOOD_LISTS, cid(1): [aid(1), None, aid(3)]}), f"customer_id {cid(1)}: articles ['{aid(1)}', None"),
    ("a short list", _lists({**GOOD_LISTS, cid(1): [aid(1), aid(2)]}), "a scored batch of 2 customers holds 5 rows, not 6 (3 each)"),
    ("ranks out of order", _lists(GOOD_LISTS).assign(rank=[1, 3, 2, 1, 2, 3]), "ranks [1, 3, 2]"),
    ("another customer's list", _lists({cid(1): GOOD_LISTS[cid(1)], cid(9): GOOD_LISTS[cid(2)]}), f"customer_id {cid(2)}:"),
])
def test_a_scored_batch_that_is_not_k_distinct_articles_is_refused(case, frame, message):
    score_mod.check_lists(_lists(GOOD_LISTS), IDS, 3)
    with pytest.raises(HmrecError) as err:
        score_mod.check_lists(frame, IDS, 3)
    assert str(err.value).startswith(f"refused to publish {tables.RECOMMENDATIONS}: ")
    assert message in str(err.value) and str(err.value).endswith("the served table is unchanged")


def test_features_must_hold_each_customer_of_bronze_once(spark):
    customers = spark.createDataFrame([(cid(i),) for i in (1, 2, 3)], "customer_id string")
    users = lambda *ids: spark.createDataFrame([(c,) for c in ids], "customer_id string")  # noqa: E731
    assert score_mod.check_coverage(users(cid(1), cid(2)), customers, AS_OF) == {"scored": 2, "fallback": 1}
    with pytest.raises(HmrecError) as err:
        score_mod.check_coverage(users(cid(1), cid(2), cid(2), cid(7)), customers, AS_OF)
    assert str(err.value) == (
        f"refused to publish {tables.RECOMMENDATIONS}: 1 customers appear more than once in {tables.USER_FEATURES} "
        f"for as_of {AS_OF} (e.g. ['{cid(2)}']); 1 customers of {tables.USER_FEATURES} for as_of {AS_OF} are not in "
        f"{tables.CUSTOMERS} (e.g. ['{cid(7)}']); the served table is unchanged. Rebuild the features with "
        f"`hmrec features --as-of {AS_OF}`, then rerun `hmrec score`")


def test_duplicated_features_make_scoring_refuse_before_the_commit(spark, served_lake, tmp_path, capsys):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    one = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF).where(F.col("n_purchases") > 0).limit(1)
    storage.write(one, cfg, tables.USER_FEATURES, mode="append")  # a damaged features table: one customer twice
    before = view(cfg, (tables.RECOMMENDATIONS,))
    code, err = cli(capsys, "score", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    msg = error_line(err, "score")
    assert code == 2 and f"1 customers appear more than once in {tables.USER_FEATURES} for as_of {AS_OF}" in msg
    assert view(cfg, (tables.RECOMMENDATIONS,)) == before


def test_a_bad_list_found_in_a_worker_stops_the_write_before_its_commit(spark, served_lake, tmp_path, capsys):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    top = {r["article_id"] for r in storage.read_as_of(spark, cfg, tables.POPULARITY, AS_OF)
           .where("segment = 'global' AND rank <= 12").collect()}
    served = recs.where(F.col("source") == "model").groupBy("article_id").count().orderBy(F.desc("count")).collect()
    victim = next(r["article_id"] for r in served if r["article_id"] not in top)
    # A damaged embeddings table: one article has lost its id, so the lists holding it would hold a null.
    emb = storage.read_as_of(spark, cfg, tables.ITEM_EMBEDDINGS, AS_OF)
    damaged = emb.withColumn("article_id", F.when(F.col("article_id") == victim, F.lit(None)).otherwise(F.col("article_id")))
    version = registry.latest_version(cfg, AS_OF)
    storage.write_partition(damaged.localCheckpoint(), cfg, tables.ITEM_EMBEDDINGS, AS_OF, model_version=version)
    before = view(cfg, (tables.RECOMMENDATIONS,))
    code, err = cli(capsys, "score", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    msg = error_line(err, "score")
    assert code == 2
    assert msg.startswith(f"hmrec score: error: refused to publish {tables.RECOMMENDATIONS}: ")
    assert "customers of a scored batch do not have exactly 12 distinct articles" in msg and "None" in msg
    assert view(cfg, (tables.RECOMMENDATIONS,)) == before


@pytest.mark.parametrize("setting", ["score.k=0", "score.k=-5", "ingest.min_keep_share=1.5", "lease.stale_after_s=0"])
def test_a_setting_out_of_range_stops_the_command_before_it_starts(served_lake, capsys, setting):
    mtime = (served_lake / tables.RECOMMENDATIONS.name / "_delta_log").stat().st_mtime_ns
    code, err = cli(capsys, "score", "--as-of", AS_OF.isoformat(), *lake_args(served_lake, setting))
    key = setting.split("=")[0]
    assert code == 2 and f"config key {key} must be" in error_line(err, "score")
    assert "[hmrec score] started" not in err
    assert (served_lake / tables.RECOMMENDATIONS.name / "_delta_log").stat().st_mtime_ns == mtime


# ---- broken artifacts: one line naming the file, the model version and the fix ----------------------------


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(1).bytes(len(data)))
    elif how == "deleted":
        path.unlink()
    else:
        raise ValueError(how)


def _model_dir(cfg) -> tuple[str, Path]:
    version = registry.latest_version(cfg, AS_OF)
    mv = registry.client(cfg).get_model_version(cfg.paths.registered_model, version)
    return version, Path(registry._local_dir(mv.source))


ARTIFACTS = [
    ("index", "truncated", "is damaged"), ("index", "random bytes", "is damaged"), ("index", "deleted", "is missing"),
    ("index meta", "truncated", "cannot be read (JSONDecodeError)"),
    ("model.pt", "random bytes", "is damaged"), ("model.pt", "truncated", "is damaged"),
    ("model meta", "truncated", "is damaged"),
    # registered or saved before checksums were recorded: the parsers' failures get the same kind of line
    ("model.pt, no checksum", "random bytes", "cannot be read (UnpicklingError)"),
    ("index, no checksum", "truncated", "cannot be read (RuntimeError)"),
]


@pytest.mark.parametrize("what, how, problem", ARTIFACTS)
def test_a_broken_artifact_is_one_line_naming_file_version_and_fix(spark, served_lake, tmp_path, capsys, what, how, problem):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    version, model_dir = _model_dir(cfg)
    index_dir = index_mod.index_dir(cfg, version)
    meta = json.loads((index_dir / index_mod.META_FILE).read_text())
    if what.startswith("index meta"):
        target, fix = index_dir / index_mod.META_FILE, "hmrec index --as-of"
    elif what.startswith("index"):
        target, fix = index_dir / meta["file"], "hmrec index --as-of"
        if "no checksum" in what:
            meta.pop("sha256")
            (index_dir / index_mod.META_FILE).write_text(json.dumps(meta))
    else:
        name = registry.WEIGHTS_FILE if what.startswith("model.pt") else registry.META_FILE
        target, fix = model_dir / name, "train again with `hmrec train --as-of 2020-09-16`"
        if "no checksum" in what:
            registry.client(cfg).delete_model_version_tag(cfg.paths.registered_model, version,
                                                          registry.CHECKSUM_TAG.format(name))
    _damage(target, how)
    before = view(cfg, (tables.RECOMMENDATIONS,))
    # the blend reads the index when scoring (the ranker reads the candidates built with it)
    method = ["--set", "score.method=blend"] if what.startswith("index") else []
    code, err = cli(capsys, "score", "--as-of", AS_OF.isoformat(), *lake_args(lake), *method)
    msg = error_line(err, "score")
    assert code == 2
    assert msg.startswith(f"hmrec score: error: {target}: ") and f"model version {version}" in msg
    assert problem in msg and fix in msg
    assert view(cfg, (tables.RECOMMENDATIONS,)) == before


def test_a_damaged_checkpoint_is_one_line_without_the_unpicklers_advice(tmp_path):
    from hmrec.train.checkpoint import load_checkpoint

    path = tmp_path / "last.pt"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    with pytest.raises(HmrecError) as err:
        load_checkpoint(str(path))
    assert str(err.value).startswith(f"checkpoint {path} is corrupted or unreadable (")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).endswith("delete it or rerun without --resume")


def test_an_index_job_stopped_between_its_two_files_leaves_the_previous_pair(spark, served_lake, tmp_path, monkeypatch):
    cfg = make_cfg(copy_lake(served_lake, tmp_path / "lake"), *FAST, "index.kind=hnsw")
    version, _ = _model_dir(cfg)
    old_index, old_meta = index_mod.load_index(cfg, version, AS_OF)

    class Stopped(BaseException):
        """The process stops here, as if killed."""

    def stop(*args, **kwargs):
        raise Stopped()

    monkeypatch.setattr(index_mod, "_write_whole", stop)
    with pytest.raises(Stopped):
        index_mod.build_index(cfg, spark, as_of=AS_OF)
    monkeypatch.undo()
    index, meta = index_mod.load_index(cfg, version, AS_OF)
    assert meta == old_meta and meta["kind"] == "flat" and index.ntotal == old_index.ntotal
    index_mod.build_index(cfg, spark, as_of=AS_OF)
    index, meta = index_mod.load_index(cfg, version, AS_OF)
    assert meta["kind"] == "hnsw"
    assert sorted(p.name for p in index_mod.index_dir(cfg, version).glob("items*.faiss")) == [meta["file"]]


# ---- one job that writes at a time --------------------------------------------------------------------


HOLDER = """
import sys, time
from hmrec.config import load_config
from hmrec.lake import lease
cfg = load_config(None, ["paths.lakehouse=" + sys.argv[1]])
with lease.hold(cfg, "run"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(lake: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the lakehouse's lease for ``seconds``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lake), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_job_exits_at_once_naming_the_holder(spark, small_lake, small_data, tmp_path, capsys):
    lake = copy_lake(small_lake, tmp_path / "lake")
    cfg = make_cfg(lake)
    before = view(cfg)
    holder = _holder(lake, 60)
    try:
        code, err = cli(capsys, "ingest", "--data", str(small_data), *lake_args(lake))
    finally:
        holder.kill()
        holder.wait()
    msg = error_line(err, "ingest")
    assert code == lease.BUSY_EXIT == 3
    assert f"the lakehouse {cfg.lakehouse} is busy: `hmrec run` (user " in msg
    assert f"on host {socket.gethostname()}, pid {holder.pid}, since " in msg and "--wait" in msg
    assert "[hmrec ingest] started" not in err
    assert view(cfg) == before


def test_wait_queues_behind_the_holder(small_lake, small_data, tmp_path, capsys):
    lake = copy_lake(small_lake, tmp_path / "lake")
    holder = _holder(lake, 3)
    code, err = cli(capsys, "ingest", "--data", str(small_data), "--wait", *lake_args(lake, "lease.heartbeat_s=0.2"))
    holder.wait()
    assert code == 0, err
    assert "waiting for `hmrec run` (user" in err and f"pid {holder.pid}" in err
    assert err.index("waiting for") < err.index("[hmrec ingest] started")
    assert not (lake / lease.LEASE_FILE).exists()


def _stale_lease(lake: Path, pid: int, host: str, age_s: float) -> None:
    path = lake / lease.LEASE_FILE
    path.write_text(json.dumps({"owner": "someone", "host": host, "pid": pid, "pid_started": None,
                                "command": "run", "started_at": "2020-01-01T00:00:00+00:00"}))
    then = time.time() - age_s
    os.utime(path, (then, then))


@pytest.mark.parametrize("why", ["dead pid on this host", "old heartbeat from another host"])
def test_a_stale_lease_is_taken_over_with_a_message(small_lake, small_data, tmp_path, capsys, why):
    lake = copy_lake(small_lake, tmp_path / "lake")
    if why.startswith("dead"):
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        _stale_lease(lake, gone.pid, socket.gethostname(), 1)
        reason = f"pid {gone.pid} no longer runs on this host"
    else:
        _stale_lease(lake, os.getpid(), "elsewhere", 1000)
        reason = "its last heartbeat was 1000 s ago, over lease.stale_after_s = 120"
    code, err = cli(capsys, "ingest", "--data", str(small_data), *lake_args(lake))
    assert code == 0, err
    assert "took over the stale lease of `hmrec run` (user someone" in err and reason in err
    assert not (lake / lease.LEASE_FILE).exists()


def test_the_lease_is_reentrant_refreshed_and_released(tmp_path):
    cfg = make_cfg(tmp_path / "lake", "lease.heartbeat_s=0.05")
    path = tmp_path / "lake" / lease.LEASE_FILE
    with lease.hold(cfg, "run"):
        holder = lease.read_holder(path)
        assert holder.pid == os.getpid() and holder.command == "run" and holder.host == socket.gethostname()
        assert lease.stale_reason(holder, cfg) is None
        with lease.hold(cfg, "score"):  # a stage inside the refresh
            assert lease.read_holder(path).command == "run"
        first = path.stat().st_mtime_ns
        deadline = time.time() + 30
        while path.stat().st_mtime_ns == first and time.time() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime_ns > first  # the heartbeat touched it
    assert not path.exists()
    assert lease_path_for("s3a://bucket/lake") is None


def lease_path_for(root: str):
    return lease.lease_path(load_config(None, [f"paths.lakehouse={root}"]))


def test_a_delta_commit_conflict_is_one_line_with_what_to_do(small_lake, capsys, monkeypatch):
    from delta.exceptions.captured import ConcurrentAppendException

    import hmrec.cli

    def conflict(args, cfg):
        raise ConcurrentAppendException(desc="[DELTA_CONCURRENT_APPEND] Files were added to the root of the table",
                                        stackTrace="")

    monkeypatch.setattr(hmrec.cli, "dispatch", conflict)
    code, err = cli(capsys, "split", "--as-of", AS_OF.isoformat(), *lake_args(small_lake))
    msg = error_line(err, "split")
    assert code == lease.BUSY_EXIT
    assert "another job committed to the same Delta table while this one was writing (ConcurrentAppendException)" in msg
    assert "then rerun this command" in msg
    assert lease.concurrent_commit_message(RuntimeError("[DELTA_CONSTRAINT_ALREADY_EXISTS] Constraint exists")) is not None
    assert lease.concurrent_commit_message(RuntimeError("disk full")) is None


# ---- kill -9 at every commit point (make test-faults) --------------------------------------------------


def spawn(tmp_path: Path, name: str, *argv: str) -> subprocess.Popen:
    """An ``hmrec`` process of this checkout in its own process group (so the kill takes its JVM too)."""
    out = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "hmrec.cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                            start_new_session=True)


def log_of(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.log").read_text()


def kill_when(proc: subprocess.Popen, ready, tmp_path: Path, name: str, timeout: float = 600) -> None:
    """SIGKILL the process group as soon as ``ready()`` holds; fail if the job ends first."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"{name} ended (status {proc.returncode}) before the kill point:\n{log_of(tmp_path, name)[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{name} never reached the kill point")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def commit_after(table_dir: Path, version: int):
    """Whether the Delta commit after ``version`` exists (a commit is its JSON file, renamed into place)."""
    target = table_dir / "_delta_log" / f"{version + 1:020d}.json"
    return target.exists


def new_file(directory: Path, pattern: str):
    before = set(directory.rglob(pattern)) if directory.exists() else set()
    return lambda: bool(set(directory.rglob(pattern)) - before) if directory.exists() else False


def reader_view(cfg) -> dict:
    """What every reader sees: every table, the registered models, the saved index and one served list."""
    out = view(cfg, [t for t in tables.ALL if t is not tables.STAGE_RUNS])
    version = registry.latest_version(cfg, AS_OF)
    out["model"] = version
    out["index"] = index_mod.load_index(cfg, version, AS_OF)[1]["sha256"]
    out["recommend"] = recommend(cfg, customer_id=cid(1), out=open(os.devnull, "w"))
    return out


def more_data(tmp_path: Path) -> Path:
    """New input: 40 more purchases and two bad rows (so every bronze table gets a commit)."""
    tx = tx_lines()
    extra = [line(f"2020-09-{1 + i % 20:02d}", cid(1 + i % N_CUSTOMERS), aid(1 + i % N_ARTICLES), "0.05", "1") for i in range(40)]
    bad = [line("2020-09-01", cid(1), aid(1), "abc", "1"), line("2020-09-01", cid(1), aid(99), "0.1", "1")]
    return variant(tmp_path, "more", transactions_train_csv=(TRANSACTION_NAMES, tx + extra + bad))


INGEST_POINTS = ["articles part file", tables.ARTICLES.name, tables.CUSTOMERS.name, tables.TRANSACTIONS.name,
                 tables.REJECTS.name]


@pytest.mark.faults
@pytest.mark.parametrize("point", INGEST_POINTS)
def test_kill_ingest_at_each_commit_point(spark, served_lake, tmp_path, capsys, point):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    before = reader_view(cfg)
    data = more_data(tmp_path)
    if point == "articles part file":
        ready = new_file(lake / tables.ARTICLES.name, "*.parquet")
        killed = None
    else:
        killed = tables.by_name(point)
        ready = commit_after(lake / point, storage.head_version(spark, cfg, killed))
    proc = spawn(tmp_path, "ingest", "ingest", "--data", str(data), *lake_args(lake))
    kill_when(proc, ready, tmp_path, "ingest")
    if killed is not None:
        assert storage.head_version(spark, cfg, killed) == before[killed.name][0] + 1  # the commit did land
    assert reader_view(cfg) == before
    assert (lake / lease.LEASE_FILE).exists()  # left by the killed job

    code, err = cli(capsys, "ingest", "--data", str(data), *lake_args(lake))
    assert code == 0, err
    assert f"pid {proc.pid} no longer runs on this host" in err
    after = view(cfg)
    assert after[tables.TRANSACTIONS.name][1] == N_TX + 40 and after[tables.REJECTS.name][1] == 2
    assert after[tables.INGEST_MANIFESTS.name][1] == before[tables.INGEST_MANIFESTS.name][1] + 1


def _served_intact(spark, cfg, before: dict) -> None:
    """The served lists and everything they were scored from read as before; every registered version loads."""
    assert reader_view(cfg) == before
    for v in registry.client(cfg).search_model_versions(f"name='{cfg.paths.registered_model}'"):
        registry.load_model(cfg, v.version)


@pytest.mark.faults
@pytest.mark.parametrize("point", ["checkpoint", "model artifact"])
def test_kill_train_at_each_commit_point(spark, served_lake, tmp_path, capsys, point):
    from hmrec.train.checkpoint import checkpoint_path

    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    before = reader_view(cfg)
    if point == "checkpoint":
        ckpt = Path(checkpoint_path(cfg, AS_OF))
        ready = ckpt.exists
    else:
        ready = new_file(lake / "mlartifacts", "model.pt")
    proc = spawn(tmp_path, "train", "train", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    kill_when(proc, ready, tmp_path, "train")
    if point == "checkpoint" or registry.latest_version(cfg, AS_OF) == before["model"]:
        _served_intact(spark, cfg, before)
    else:  # registered just before the kill landed: then whole, with its checksums
        registry.load_model(cfg, registry.latest_version(cfg, AS_OF))

    code, err = cli(capsys, "train", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    assert code == 0, err
    version = registry.latest_version(cfg, AS_OF)
    assert int(version) > int(before["model"])
    assert registry.load_model(cfg, version).version == version
    code, err = cli(capsys, "index", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    assert code == 0, err
    code, err = cli(capsys, "score", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    assert code == 0, err
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    assert {r[0] for r in recs.select("model_version").distinct().collect()} == {version}


@pytest.mark.faults
@pytest.mark.parametrize("point", ["item embeddings commit", "index file"])
def test_kill_index_at_each_commit_point(spark, served_lake, tmp_path, capsys, point):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    before = reader_view(cfg)
    version = before["model"]
    if point == "item embeddings commit":
        ready = commit_after(lake / tables.ITEM_EMBEDDINGS.name, storage.head_version(spark, cfg, tables.ITEM_EMBEDDINGS))
    else:
        ready = new_file(index_mod.index_dir(cfg, version), "items-*.faiss")
    proc = spawn(tmp_path, "index", "index", "--as-of", AS_OF.isoformat(), *lake_args(lake, "index.kind=ivf"))
    kill_when(proc, ready, tmp_path, "index")
    index, meta = index_mod.load_index(cfg, version, AS_OF)  # a whole pair: the old one or the new one
    assert meta["kind"] in ("flat", "ivf") and index.ntotal == N_ARTICLES
    after = reader_view(cfg)
    assert after["recommend"] == before["recommend"]
    assert contents(after)[tables.ITEM_EMBEDDINGS.name] == contents(before)[tables.ITEM_EMBEDDINGS.name]

    code, err = cli(capsys, "index", "--as-of", AS_OF.isoformat(), *lake_args(lake, "index.kind=ivf"))
    assert code == 0, err
    code, err = cli(capsys, "score", "--as-of", AS_OF.isoformat(), *lake_args(lake, "index.kind=ivf"))
    assert code == 0, err
    assert index_mod.load_index(cfg, version, AS_OF)[1]["kind"] == "ivf"


@pytest.mark.faults
def test_kill_score_while_it_writes(spark, served_lake, tmp_path, capsys):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    before = reader_view(cfg)
    ready = new_file(lake / tables.RECOMMENDATIONS.name, "*.parquet")
    proc = spawn(tmp_path, "score", "score", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    kill_when(proc, ready, tmp_path, "score")
    assert reader_view(cfg) == before
    code, err = cli(capsys, "score", "--as-of", AS_OF.isoformat(), *lake_args(lake))
    assert code == 0, err
    after = view(cfg, (tables.RECOMMENDATIONS,))[tables.RECOMMENDATIONS.name]
    assert after[0] == before[tables.RECOMMENDATIONS.name][0] + 1 and after[1] == N_CUSTOMERS * 12


@pytest.mark.faults
@pytest.mark.timeout(1800)  # whole refreshes, one after the other, on a loaded 2-core machine
def test_kill_a_refresh_then_the_same_command_resumes(spark, served_lake, tmp_path):
    from hmrec.train.checkpoint import checkpoint_path

    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    before = reader_view(cfg)
    data = more_data(tmp_path)
    # The gate's comparison with the champion rests on this tiny data's 7 held-out buyers, which a
    # change of features moves either way: this test is about resuming, so the gate only asks for a lift.
    run = ["run", "--data", str(data), "--as-of", AS_OF.isoformat(), *lake_args(lake, "gate.tolerance=1")]
    proc = spawn(tmp_path, "run1", *run)
    kill_when(proc, Path(checkpoint_path(cfg, AS_OF)).exists, tmp_path, "run1")
    after_kill = reader_view(cfg)
    assert after_kill["recommend"] == before["recommend"] and after_kill["model"] == before["model"]
    assert after_kill[tables.RECOMMENDATIONS.name] == before[tables.RECOMMENDATIONS.name]
    assert after_kill[tables.TRANSACTIONS.name][1] == N_TX + 40  # the ingest had finished

    again = spawn(tmp_path, "run2", *run)
    assert again.wait(timeout=900) == 0, log_of(tmp_path, "run2")[-3000:]
    out = log_of(tmp_path, "run2")
    assert f"pid {proc.pid} no longer runs on this host" in out
    for stage in ("features", "split", "popularity"):
        assert f"{stage}: already done for {AS_OF}" in out
    assert "ran train, index, candidates-fit, rank, candidates, gate, score, evaluate, card;" in out
    recs = view(cfg, (tables.RECOMMENDATIONS,))[tables.RECOMMENDATIONS.name]
    assert recs[0] == before[tables.RECOMMENDATIONS.name][0] + 1 and recs[1] == N_CUSTOMERS * 12


@pytest.mark.faults
@pytest.mark.timeout(1800)  # whole refreshes, one after the other, on a loaded 2-core machine
def test_two_refreshes_at_once(spark, served_lake, small_data, tmp_path):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    before = reader_view(cfg)
    run = ["run", "--data", str(small_data), "--as-of", AS_OF.isoformat(), *lake_args(lake)]
    first = spawn(tmp_path, "first", *run, "--force")
    deadline = time.time() + 120
    while not (lake / lease.LEASE_FILE).exists():
        assert first.poll() is None and time.time() < deadline, log_of(tmp_path, "first")
        time.sleep(0.01)
    second = spawn(tmp_path, "second", *run)
    waiting = spawn(tmp_path, "waiting", *run, "--wait")
    assert second.wait(timeout=120) == lease.BUSY_EXIT
    msg = error_line(log_of(tmp_path, "second"), "run")
    assert "is busy: `hmrec run` (user" in msg and f"pid {first.pid}," in msg
    assert "[hmrec run] started" not in log_of(tmp_path, "second")
    assert first.wait(timeout=900) == 0, log_of(tmp_path, "first")[-3000:]
    assert waiting.wait(timeout=900) == 0, log_of(tmp_path, "waiting")[-3000:]
    out = log_of(tmp_path, "waiting")
    assert "waiting for `hmrec run`" in out and "ran none;" in out  # the first one had done it all
    after = reader_view(cfg)
    assert after[tables.RECOMMENDATIONS.name][0] == before[tables.RECOMMENDATIONS.name][0] + 1
    assert contents(after)[tables.TRANSACTIONS.name] == contents(before)[tables.TRANSACTIONS.name]
    assert not (lake / lease.LEASE_FILE).exists()


@pytest.mark.faults
def test_an_as_of_after_the_last_purchase_publishes_whole_lists(spark, served_lake, tmp_path, capsys):
    lake = copy_lake(served_lake, tmp_path / "lake")
    cfg = make_cfg(lake, *FAST)
    late = dt.date(2020, 10, 15)  # the data ends 2020-09-20
    for stage in ("features", "split", "popularity", "train", "index", "score"):
        code, err = cli(capsys, stage, "--as-of", late.isoformat(), *lake_args(lake))
        assert code == 0, (stage, err[-3000:])
        if stage == "split":
            assert "this refresh has no holdout week" in err
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    assert {r[0] for r in recs.select("as_of").distinct().collect()} == {late}
    assert recs.count() == N_CUSTOMERS * 12
    per = recs.groupBy("customer_id").agg(F.countDistinct("article_id").alias("n"))
    assert per.count() == N_CUSTOMERS and per.where(F.col("n") != 12).count() == 0


@pytest.mark.faults
def test_a_validation_week_without_purchases_serves_the_blend_and_a_rerun_makes_nothing_again(spark, tmp_path, capsys):
    # no purchase from 2020-09-09 to 2020-09-15: nothing to train a ranker on, for the refresh at AS_OF
    kept = [t for t in tx_lines() if not ("2020-09-09" <= t[:10] < "2020-09-16")]
    assert 0 < len(kept) < N_TX
    data = variant(tmp_path, transactions_train_csv=(TRANSACTION_NAMES, kept))
    cfg = make_cfg(tmp_path / "lake", *FAST)
    results = pipeline.run(cfg, spark, data_dir=str(data), as_of=AS_OF)
    assert results["rank"]["skipped"] == "no validation week"
    assert results["candidates"]["skipped"] == "no ranker"
    assert storage.read(spark, cfg, tables.CANDIDATES).where(F.col("role") == "serve").count() == 0
    assert results["score"].get("method") != "ranker" and results["score"]["customers"] == N_CUSTOMERS  # the blend
    lists = storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, AS_OF).groupBy("customer_id").agg(
        F.countDistinct("article_id").alias("n")).collect()
    assert len(lists) == N_CUSTOMERS and {r["n"] for r in lists} == {cfg.score.k}
    capsys.readouterr()
    again = pipeline.run(cfg, spark, data_dir=str(data), as_of=AS_OF)
    assert set(again) == {"ingest"}, sorted(again)  # the fit candidates, the ranker and the list: all done
    assert "runs again" not in capsys.readouterr().err
