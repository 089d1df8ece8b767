"""Ingest: the three H&M CSV files into the bronze Delta tables, bad rows into ``tables.REJECTS``.

    hmrec ingest --data DIR [--append]
    spark-submit jobs/ingest.py --data DIR      (with the Delta --packages shown in jobs/ingest.py)

The job, in order:

1. Every input file must exist and its header must name exactly the expected
   columns (any order); otherwise an :class:`InputError` names the file and the
   column, before anything is written.
2. A fingerprint of the inputs (path, size, modification time of each file,
   plus the settings that decide what is rejected) is compared with the one
   of the last ingest manifest (:mod:`hmrec.lake.manifest`); if it matches,
   nothing is written.
3. Each CSV is parsed once with an all-string schema and checked in pure
   ``DataFrame -> DataFrame`` transforms (:func:`check_articles`,
   :func:`check_customers`, :func:`check_transactions`) that mark a failing
   row with the rule it broke and a reason naming the column and the value.
   :func:`split_checked` turns a checked frame into typed good rows and reject
   rows; the ``validate_*`` functions chain the two for callers and tests.
4. The checked rows are persisted, so one action runs every check of every
   row (counting rows and rejects by file and rule) before the first write,
   and the writes read the cache instead of parsing the CSV again.
5. Guards (:func:`check_shrink`): an input that would replace a bronze table
   with fewer than ``ingest.min_keep_share`` of its rows (an empty or
   header-only file, a partial export), or whose rows are more than
   ``ingest.max_reject_share`` rejected (data of another period, another
   format), is refused before anything is written, naming the file, the row
   counts and the setting that allows it (``--allow-shrink``).
6. Each table is replaced by one atomic Delta overwrite whose commit carries
   the fingerprint; rows written come from the commit's operationMetrics.
   Last, one row appended to ``tables.INGEST_MANIFESTS`` records the version
   written of every table: readers see the new tables only from that commit
   on, all four at once, so a killed ingest changes nothing they read.

That is the whole ingest. When the last manifest kept per-date row counts
and checksums of the transactions (:func:`day_stats`) and the file still
matches them on every date ingested, or with ``--append`` (a directory
holding only a new batch), only the rows of later dates are checked and
appended, articles and customers are upserted with ``MERGE``, and the
manifest again commits last (:func:`_incremental`); a changed earlier date
sends the file down the whole path, after a line naming it. Files whose
bytes changed but which hold no new date and no changed catalogue row (rows
reordered, a batch of dates already ingested) write no rows: one manifest row
repeating the last one records their fingerprint
(:func:`_record_fingerprint`), so the next ingest of them skips at step 2.

articles.csv is parsed with ``multiLine`` (its free text, ``detail_desc``,
may hold quoted line breaks); the other two files line by line, which Spark
splits over every core. A quoted line break in those files, where no field
is free text, makes the rows around it field-count rejects that show the
raw text.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import uuid

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from hmrec.config import Config, ConfigError
from hmrec.errors import InputError
from hmrec.lake import manifest, schemas, storage, tables
from hmrec.lake.manifest import Manifest
from hmrec.lake.tables import Table
from hmrec.progress import log, stage

STAGE = "ingest"
CORRUPT = "_corrupt_record"
REJECT = "_reject"  # struct<rule, reason>; null for a row that passes every check

TABLES = {
    "articles": tables.ARTICLES,
    "customers": tables.CUSTOMERS,
    "transactions": tables.TRANSACTIONS,
}
REJECTS_TABLE = tables.REJECTS

# What must never enter bronze, whatever writes to it.
CONSTRAINTS: dict[Table, dict[str, str]] = {
    tables.TRANSACTIONS: {
        "price_non_negative": "price >= 0",
        "sales_channel_known": "sales_channel_id IN (1, 2)",
        "article_id_length": "length(article_id) = 10",
        "customer_id_length": "length(customer_id) = 64",
        "t_dat_present": "t_dat IS NOT NULL",
    },
    tables.ARTICLES: {"article_id_length": "length(article_id) = 10"},
    tables.CUSTOMERS: {"customer_id_length": "length(customer_id) = 64"},
}

ARTICLE_ID_RE = r"^[0-9]{10}$"
CUSTOMER_ID_RE = r"^[0-9a-f]{64}$"
DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
INTEGER_RE = r"^-?[0-9]+$"
NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# A comma outside double quotes: counts the fields of a malformed line.
FIELD_SEPARATOR_RE = r',(?=(?:[^"]*"[^"]*")*[^"]*$)'
SHOWN_VALUE_CHARS = 100  # long enough for a whole customer_id
# Files read whole (Spark's multiLine): their free text may hold quoted line breaks. The others are
# read line by line, in parallel tasks; read whole, a file is one task (docs/RELIABILITY.md, figures).
MULTI_LINE_FILES = frozenset({"articles"})
# Bumped when the same file would now be read into other rows, so an unchanged file is ingested again.
READER_VERSION = 2
ALLOW_SHRINK = "--allow-shrink"

Check = tuple[str, Column, Column]  # (rule, condition that fails the row, reason)


# ---- files and headers ---------------------------------------------------------


def input_uris(data_dir: str) -> dict[str, str]:
    """Location of each input file (key as in ``schemas.INPUT_FILES``) under ``data_dir``."""
    base = data_dir.rstrip("/")
    return {key: f"{base}/{name}" for key, (name, _) in schemas.INPUT_FILES.items()}


def stat_inputs(spark: SparkSession, data_dir: str, optional: tuple[str, ...] = ()) -> dict[str, dict]:
    """Qualified path, size and modification time of every input file.

    Asks the Hadoop FileSystem of each path, so a local directory, HDFS or an
    object store all work. A missing file is an :class:`InputError`, unless
    its key is in ``optional`` (then it is left out of the result).
    """
    jvm = spark.sparkContext._jvm
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    base = jvm.org.apache.hadoop.fs.Path(data_dir.rstrip("/") or "/")
    base_fs = base.getFileSystem(hadoop_conf)
    if not base_fs.exists(base) or base_fs.getFileStatus(base).isFile():
        what = "is a file" if base_fs.exists(base) else "does not exist"
        raise InputError(
            f"--data {data_dir} {what}; it must be the directory holding "
            f"{', '.join(name for name, _ in schemas.INPUT_FILES.values())} (make one with `hmrec generate --out DIR`)"
        )
    found: dict[str, dict] = {}
    missing: list[str] = []
    compressed: list[str] = []
    for key, uri in input_uris(data_dir).items():
        p = jvm.org.apache.hadoop.fs.Path(uri)
        fs = p.getFileSystem(hadoop_conf)
        if not fs.exists(p) or not fs.getFileStatus(p).isFile():
            if key in optional:
                continue
            missing.append(schemas.INPUT_FILES[key][0])
            for suffix in (".gz", ".zip", ".bz2", ".xz", ".zst"):
                if fs.exists(jvm.org.apache.hadoop.fs.Path(uri + suffix)):
                    compressed.append(schemas.INPUT_FILES[key][0] + suffix)
            continue
        status = fs.getFileStatus(p)
        found[key] = {
            "path": fs.makeQualified(p).toString(),
            "size": int(status.getLen()),
            "mtime": int(status.getModificationTime()),
        }
    if compressed:
        raise InputError(
            f"{', '.join(missing)} not found in {data_dir}, but {', '.join(compressed)} is there; hmrec reads plain "
            f"CSV files: decompress it (e.g. `gunzip -k {data_dir.rstrip('/')}/{compressed[0]}`) and rerun"
        )
    if missing:
        raise InputError(
            f"{', '.join(missing)} not found in {data_dir}; --data must be the directory holding "
            f"{', '.join(name for name, _ in schemas.INPUT_FILES.values())} "
            f"(make one with `hmrec generate --out DIR`)"
        )
    return found


def read_header(spark: SparkSession, uri: str) -> list[str]:
    """Column names on the first line of a CSV file, read through Spark."""
    rows = spark.read.text(uri).limit(1).collect()
    if not rows or rows[0][0] is None or not rows[0][0].strip():
        raise InputError(f"{uri}: the first line is empty; the file must start with its header line")
    line = rows[0][0].lstrip("\ufeff")
    try:
        return next(csv.reader([line]))
    except csv.Error as exc:
        raise InputError(
            f"{uri}: the first line is not a CSV header line ({exc}); the file must be a UTF-8 CSV file "
            f"starting with its header"
        ) from None


def check_header(file_name: str, found: list[str], expected: list[str]) -> None:
    """Raise :class:`InputError` unless ``found`` holds each expected column exactly once."""
    shown = ", ".join(found)
    duplicated = sorted({c for c in found if found.count(c) > 1})
    if duplicated:
        raise InputError(
            f"{file_name}: column '{duplicated[0]}' appears more than once in the header "
            f"(found: {shown}); each column must appear once"
        )
    missing = [c for c in expected if c not in found]
    if missing:
        what = (
            f"column '{missing[0]}' is missing"
            if len(missing) == 1
            else "columns " + ", ".join(f"'{c}'" for c in missing) + " are missing"
        )
        raise InputError(
            f"{file_name}: {what} (found: {shown}); fix the header line, it must name the columns "
            f"{', '.join(expected)}"
        )
    extra = [c for c in found if c not in expected]
    if extra:
        raise InputError(
            f"{file_name}: unexpected column '{extra[0]}' (found: {shown}); remove it, the file must "
            f"hold exactly the columns {', '.join(expected)}"
        )


def read_csv(spark: SparkSession, uri: str, header: list[str], multi_line: bool = False) -> DataFrame:
    """Parse a CSV file whose header is ``header``: every column a string, plus ``_corrupt_record``.

    ``_corrupt_record`` holds the line when it has too few or too many fields.
    Column pruning is off so that check holds whatever columns a query uses.
    ``multi_line`` reads quoted line breaks as part of their value; it reads
    the file in one task.
    """
    return (
        spark.read.schema(schemas.raw_schema([(c, None) for c in header]))
        .option("header", True)
        .option("enforceSchema", True)  # the header was checked by name already
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .option("columnPruning", False)
        .option("multiLine", multi_line)
        .option("quote", '"')
        .option("escape", '"')
        .option("encoding", "UTF-8")
        .csv(uri)
    )


# ---- checks (pure transforms) ----------------------------------------------------


def _blanks_to_nulls(raw: DataFrame, columns: list[str]) -> DataFrame:
    """An empty field is a missing value, whether Spark already made it null or not."""
    return raw.select(*[F.nullif(F.col(c), F.lit("")).alias(c) if c in columns else F.col(c) for c in raw.columns])


def _shown(c: Column) -> Column:
    cut = F.concat(F.substring(c, 1, SHOWN_VALUE_CHARS), F.lit("..."))
    return F.when(F.length(c) > SHOWN_VALUE_CHARS, cut).otherwise(c)


def _reason(column: str, problem: str) -> Column:
    """``<column> '<value>' <problem>``, or ``<column> is empty`` for a missing value."""
    c = F.col(column)
    problem = problem.replace("%", "%%")
    return F.when(c.isNull(), F.lit(f"{column} is empty")).otherwise(
        F.format_string(f"{column} '%s' {problem}", _shown(c))
    )


def _reject(rule: str, reason: Column) -> Column:
    return F.struct(F.lit(rule).alias("rule"), reason.alias("reason"))


def _first_failure(checks: list[Check]) -> Column:
    """The first failing check of a row as struct<rule, reason>, null when all pass."""
    expr = None
    for rule, failed, reason in checks:
        value = _reject(rule, reason)
        expr = F.when(failed, value) if expr is None else expr.when(failed, value)
    return expr


def _field_count_check(columns: list[str]) -> Check:
    corrupt = F.col(CORRUPT)
    fields = F.regexp_count(corrupt, F.lit(FIELD_SEPARATOR_RE)) + 1
    reason = F.format_string(
        f"wrong number of fields: %d (expected {len(columns)}: {', '.join(columns)})", fields
    )
    return ("field_count", corrupt.isNotNull(), reason)


def _article_id_check() -> Check:
    c = F.col("article_id")
    return ("article_id_format", c.isNull() | ~c.rlike(ARTICLE_ID_RE), _reason("article_id", "is not 10 digits"))


def _customer_id_check() -> Check:
    c = F.col("customer_id")
    return (
        "customer_id_format",
        c.isNull() | ~c.rlike(CUSTOMER_ID_RE),
        _reason("customer_id", "is not 64 lowercase hex characters"),
    )


def _reject_duplicates(checked: DataFrame, key: str, source_name: str) -> DataFrame:
    """Mark every valid row whose ``key`` an earlier valid row already has (column ``_row`` is the order)."""
    valid = F.col(REJECT).isNull()
    rank = F.row_number().over(Window.partitionBy(F.col(key), valid).orderBy(F.col("_row")))
    duplicate = _reject(
        f"duplicate_{key}",
        F.format_string(f"{key} '%s' appears more than once in {source_name} (the first row is kept)", F.col(key)),
    )
    return checked.withColumn(REJECT, F.when(valid & (rank > 1), duplicate).otherwise(F.col(REJECT))).drop("_row")


def _with_checks(raw: DataFrame, columns: list[str], checks: list[Check]) -> DataFrame:
    missing = [c for c in columns + [CORRUPT] if c not in raw.columns]
    if missing:
        raise ValueError(f"raw frame lacks columns {missing}; read it with read_csv")
    return _blanks_to_nulls(raw, columns).withColumn(REJECT, _first_failure([_field_count_check(columns)] + checks))


def check_articles(raw: DataFrame) -> DataFrame:
    """Mark each bad row of a raw articles frame in ``_reject`` (struct<rule, reason>).

    Rules: field count, article_id of 10 digits, integer codes (empty allowed),
    and a repeated article_id (the first row in the input's order is kept).
    """
    columns = [c for c, _ in schemas.ARTICLE_COLUMNS]
    integer_columns = [c for c, t in schemas.ARTICLE_COLUMNS if t == schemas.I]
    checks: list[Check] = [_article_id_check()]
    for name in integer_columns:
        c = F.col(name)
        checks.append(
            (
                f"{name}_not_integer",
                c.isNotNull() & (~c.rlike(INTEGER_RE) | c.try_cast("int").isNull()),
                _reason(name, "is not an integer"),
            )
        )
    # The row order is taken straight from the file scan, before any shuffle.
    ordered = raw.withColumn("_row", F.monotonically_increasing_id())
    return _reject_duplicates(_with_checks(ordered, columns, checks), "article_id", "articles.csv")


def check_customers(raw: DataFrame) -> DataFrame:
    """Mark each bad row of a raw customers frame in ``_reject`` (struct<rule, reason>).

    Rules: field count, customer_id of 64 lowercase hex characters, FN and
    Active 1, 1.0 or empty, age an integer in 0..120 or empty, and a repeated
    customer_id (the first row in the input's order is kept).
    """
    columns = [c for c, _ in schemas.CUSTOMER_COLUMNS]
    age = F.col("age")
    checks: list[Check] = [_customer_id_check()]
    for flag in ("FN", "Active"):
        c = F.col(flag)
        checks.append(
            (f"{flag.lower()}_invalid", c.isNotNull() & ~c.isin("1", "1.0"), _reason(flag, "is not 1, 1.0 or empty"))
        )
    checks.append(
        (
            "age_invalid",
            age.isNotNull() & (~age.rlike(r"^[0-9]+$") | age.try_cast("int").isNull() | (age.try_cast("int") > 120)),
            _reason("age", "is not an integer in 0..120"),
        )
    )
    ordered = raw.withColumn("_row", F.monotonically_increasing_id())
    return _reject_duplicates(_with_checks(ordered, columns, checks), "customer_id", "customers.csv")


def check_transactions(
    raw: DataFrame,
    articles: DataFrame,
    customers: DataFrame,
    max_price: float,
    min_date: dt.date,
    broadcast_customers: bool = False,
) -> DataFrame:
    """Mark each bad row of a raw transactions frame in ``_reject`` (struct<rule, reason>).

    Rules: field count; t_dat strictly yyyy-MM-dd between ``min_date`` and
    today; customer_id and article_id format; price a number in
    0..``max_price``; sales_channel_id 1 or 2; then article_id in
    ``articles`` and customer_id in ``customers`` (the valid catalogues; only
    their id column is used). Identical rows are all kept: they are repeat
    purchases. The articles are broadcast; the customers too when
    ``broadcast_customers``, else joined by a shuffle (sort-merge join).
    """
    columns = [c for c, _ in schemas.TRANSACTION_COLUMNS]
    t_dat, price, channel = F.col("t_dat"), F.col("price"), F.col("sales_channel_id")
    day = t_dat.try_cast("date")
    amount = price.try_cast("double")
    earliest = F.lit(min_date)
    checks: list[Check] = [
        (
            "t_dat_format",
            t_dat.isNull() | ~t_dat.rlike(DATE_RE) | day.isNull(),
            _reason("t_dat", "is not a date of the form yyyy-MM-dd"),
        ),
        (
            "t_dat_range",
            (day < earliest) | (day > F.current_date()),
            F.when(day < earliest, _reason("t_dat", f"is before {min_date.isoformat()}")).otherwise(
                _reason("t_dat", "is in the future")
            ),
        ),
        _customer_id_check(),
        _article_id_check(),
        (
            "price_not_numeric",
            price.isNull() | ~price.rlike(NUMBER_RE) | amount.isNull(),
            _reason("price", "is not a number"),
        ),
        ("price_negative", amount < 0, _reason("price", "is negative")),
        (
            "price_above_max",
            amount > F.lit(float(max_price)),
            _reason("price", f"is above ingest.max_price = {max_price}"),
        ),
        (
            "sales_channel_unknown",
            channel.isNull() | ~channel.isin("1", "2"),
            _reason("sales_channel_id", "is not 1 or 2"),
        ),
    ]
    checked = _with_checks(raw, columns, checks)

    # Distinct ids: a repeated catalogue id must never multiply a purchase.
    known_articles = F.broadcast(articles.select("article_id").distinct().withColumn("_known_article", F.lit(True)))
    known_customers = customers.select("customer_id").distinct().withColumn("_known_customer", F.lit(True))
    # Either way is chosen here, not by Spark's size estimate of a CSV-derived plan.
    known_customers = F.broadcast(known_customers) if broadcast_customers else known_customers.hint("merge")
    joined = checked.join(known_articles, "article_id", "left").join(known_customers, "customer_id", "left")
    catalogue = F.coalesce(
        F.col(REJECT),
        F.when(
            F.col("_known_article").isNull(),
            _reject("unknown_article", _reason("article_id", "is not in articles.csv")),
        ),
        F.when(
            F.col("_known_customer").isNull(),
            _reject("unknown_customer", _reason("customer_id", "is not in customers.csv")),
        ),
    )
    return joined.select(*[c for c in raw.columns], catalogue.alias(REJECT))


def _csv_field(name: str) -> Column:
    value = F.coalesce(F.col(name), F.lit(""))
    quoted = F.concat(F.lit('"'), F.regexp_replace(value, '"', '""'), F.lit('"'))
    return F.when(value.rlike('[",\r\n]'), quoted).otherwise(value)


def split_checked(
    checked: DataFrame, schema: StructType, source: str, ingested_at: dt.datetime
) -> tuple[DataFrame, DataFrame]:
    """Good rows cast to ``schema``, and reject rows (``schemas.REJECTS`` columns plus ``rule``).

    A reject's ``raw`` is the line as read when Spark flagged its field count,
    else its fields joined by commas (quoted where needed) in the file's order.
    """
    ok = F.col(REJECT).isNull()
    # Every value of a good row passed its check, so each cast succeeds.
    typed = [F.col(f.name) if f.dataType == schemas.S else F.col(f.name).try_cast(f.dataType) for f in schema.fields]
    good = checked.where(ok).select(*[c.alias(f.name) for c, f in zip(typed, schema.fields)])
    data_columns = [c for c in checked.columns if c not in (CORRUPT, REJECT)]
    raw_text = F.coalesce(F.col(CORRUPT), F.concat_ws(",", *[_csv_field(c) for c in data_columns]))
    rejects = checked.where(~ok).select(
        F.lit(source).alias("source"),
        raw_text.alias("raw"),
        F.col(f"{REJECT}.reason").alias("reason"),
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
        F.col(f"{REJECT}.rule").alias("rule"),
    )
    return good, rejects


def validate_articles(raw: DataFrame, source: str, ingested_at: dt.datetime) -> tuple[DataFrame, DataFrame]:
    """Raw articles frame -> (typed ``schemas.ARTICLES`` rows, reject rows)."""
    return split_checked(check_articles(raw), schemas.ARTICLES, source, ingested_at)


def validate_customers(raw: DataFrame, source: str, ingested_at: dt.datetime) -> tuple[DataFrame, DataFrame]:
    """Raw customers frame -> (typed ``schemas.CUSTOMERS`` rows, reject rows)."""
    return split_checked(check_customers(raw), schemas.CUSTOMERS, source, ingested_at)


def validate_transactions(
    raw: DataFrame,
    articles: DataFrame,
    customers: DataFrame,
    source: str,
    ingested_at: dt.datetime,
    max_price: float,
    min_date: dt.date,
    broadcast_customers: bool = False,
) -> tuple[DataFrame, DataFrame]:
    """Raw transactions frame -> (typed ``schemas.TRANSACTIONS`` rows, reject rows); see :func:`check_transactions`."""
    checked = check_transactions(raw, articles, customers, max_price, min_date, broadcast_customers)
    return split_checked(checked, schemas.TRANSACTIONS, source, ingested_at)


# ---- the job -------------------------------------------------------------------------


def fingerprint(cfg: Config, inputs: dict[str, dict], append: bool = False) -> dict:
    """What decides the bronze tables' content: the input files, the rejection settings and the reader."""
    fp = {
        "files": {key: inputs[key] for key in sorted(inputs)},
        "max_price": float(cfg.ingest.max_price),
        "min_date": cfg.ingest.min_date,
        "reader": READER_VERSION,
    }
    if append:
        fp["append"] = True
    return fp


def _last_ingests(spark: SparkSession, cfg: Config, which: list[Table]) -> dict[Table, dict | None]:
    """Commit metadata of each table's latest version (None: missing or not written by ingest)."""
    out: dict[Table, dict | None] = {}
    for table in which:
        meta = storage.last_metadata(spark, cfg, table)
        out[table] = meta if meta and meta.get("stage") == STAGE else None
    return out


def _settings(cfg: Config) -> tuple[dt.date, StorageLevel]:
    try:
        min_date = dt.date.fromisoformat(cfg.ingest.min_date)
    except ValueError:
        raise ConfigError(f"ingest.min_date '{cfg.ingest.min_date}' is not a date of the form YYYY-MM-DD") from None
    level = getattr(StorageLevel, cfg.ingest.persist_level, None)
    if not isinstance(level, StorageLevel):
        raise ConfigError(
            f"ingest.persist_level '{cfg.ingest.persist_level}' is not a Spark storage level; "
            f"use e.g. MEMORY_AND_DISK or DISK_ONLY"
        )
    return min_date, level


def ingest(cfg: Config, spark: SparkSession, data_dir: str, append: bool = False) -> dict:
    """Load the CSV files of ``data_dir`` into the bronze tables; return the summary.

    Without ``append`` the directory holds all three files. When the bronze
    tables' last manifest kept per-date checksums and every date of
    transactions_train.csv up to the last one ingested still matches them, only
    the rows of later dates are checked and appended, and articles and customers
    are upserted (:func:`_incremental`); otherwise the files are ingested whole.
    With ``append`` the directory holds a new batch of transactions (articles and
    customers optional), appended the same way; a date of the batch already
    ingested must match its recorded rows exactly, and is then left out.

    The summary holds ``skipped`` (nothing new since the last ingest) and
    ``found`` (when skipped, what the ingest found: unchanged files, or changed
    files with no new date, whose fingerprint is then recorded),
    ``mode`` (whole, grown, append or unchanged), ``manifest_id`` (the ingest
    manifest readers now see), ``<file>_read`` / ``_written`` / ``_rejected``
    per input (articles, customers, transactions; rows checked, rows written,
    rows rejected), ``<file>_inserted`` / ``_updated`` for an upsert,
    ``rejects_written``, ``seconds`` and ``rejected_by_reason``
    ({file name: {rule: rows}}).
    """
    min_date, level = _settings(cfg)
    by_reason: dict[str, dict[str, int]] = {}
    with stage(STAGE) as summary:
        inputs = stat_inputs(spark, data_dir, optional=("articles", "customers") if append else ())
        fp = fingerprint(cfg, inputs, append)
        has_manifests, current = manifest.read_latest(cfg, spark)
        if current is not None and current.fingerprint == manifest.fingerprint_json(fp):
            summary["skipped"] = True
            summary["mode"] = "unchanged"
            summary["manifest_id"] = current.manifest_id
            summary["found"] = "input files unchanged since the last ingest, nothing written"
            log(STAGE, f"input files in {data_dir} unchanged since the last ingest ({current.describe()}); nothing written")
        else:
            summary["skipped"] = False
            if append and current is None:
                raise InputError(
                    f"--append adds a batch to ingested data, but the lakehouse {cfg.lakehouse} holds no complete "
                    f"ingest; ingest the whole data first with `hmrec ingest --data DIR` (all three files)"
                )
            headers = {}
            for key in inputs:
                name, cols = schemas.INPUT_FILES[key]
                found = read_header(spark, inputs[key]["path"])
                check_header(name, found, [c for c, _ in cols])
                headers[key] = found
            whole = True
            if current is not None:
                try:
                    _incremental(cfg, spark, inputs, headers, fp, current, append, min_date, level, summary,
                                 by_reason)
                    whole = False
                except Whole as why:
                    log(STAGE, f"{why}; ingesting it whole")
            if whole:
                summary["mode"] = "whole"
                _load(cfg, spark, inputs, headers, fp, min_date, level, (has_manifests, current), summary, by_reason)
    return {**summary, "rejected_by_reason": by_reason}


# ---- per-date checksums ------------------------------------------------------------------

NO_DATE = "-"  # the day key of a row without a valid t_dat; sorts before every date
_MOD = 1 << 64


class Whole(Exception):
    """The incremental path does not apply to this input; the message says why (the input is ingested whole)."""


def day_key(t_dat: Column) -> Column:
    """The raw ``t_dat`` when it has the form yyyy-MM-dd and is not after today, else ``NO_DATE``.

    The key of per-date checksums. A date in the future is no day of the data
    (its rows are rejected), so it must not become the last date ingested.
    """
    today = F.date_format(F.current_date(), "yyyy-MM-dd")
    return F.when(t_dat.isNotNull() & t_dat.rlike(DATE_RE) & (t_dat <= today), t_dat).otherwise(F.lit(NO_DATE))


def day_stats(raw: DataFrame) -> dict[str, tuple[int, int]]:
    """{day key: (rows, checksum)} of a raw (or checked) transactions frame, in one aggregation.

    The checksum of a day is the sum, modulo 2^64, of every row's ``xxhash64``
    over its fields as text (an empty field and a missing one hash alike; a
    malformed line hashes its raw text). A sum does not depend on the order of
    the rows or on how Spark splits the file, so it is one partial aggregate
    per task with no sort and no shuffle of rows; and unlike XOR, a repeated
    identical row (a repeat purchase) counts twice. Rows are hashed as read,
    before any check, so a day compares equal only when its lines do.
    """
    fields = [F.coalesce(F.col(c), F.lit("")) for c, _ in schemas.TRANSACTION_COLUMNS]
    corrupt = [F.coalesce(F.col(CORRUPT), F.lit(""))] if CORRUPT in raw.columns else []
    digest = F.xxhash64(*fields, *corrupt).cast("decimal(20,0)")
    rows = (raw.groupBy(day_key(F.col("t_dat")).alias("day"))
            .agg(F.count(F.lit(1)).alias("n"), F.sum(digest).alias("s")).collect())
    return {r["day"]: (int(r["n"]), _signed(int(r["s"]))) for r in rows}


def _signed(value: int) -> int:
    """``value`` modulo 2^64 as a signed 64-bit integer (what a Delta bigint holds)."""
    value %= _MOD
    return value - _MOD if value >= _MOD // 2 else value


def _day_name(day: str) -> str:
    return "the rows without a valid t_dat" if day == NO_DATE else day


def first_changed_day(found: dict[str, tuple[int, int]], recorded: dict[str, tuple[int, int]],
                      last: str) -> str | None:
    """The first day up to ``last`` whose rows differ from ``recorded``, as a reason; None when all match."""
    for day in sorted(k for k in set(found) | set(recorded) if k <= last):
        got, had = found.get(day, (0, 0)), recorded.get(day, (0, 0))
        if got == had:
            continue
        if got[0] != had[0]:
            why = f"{got[0]:,} rows where {had[0]:,} were ingested"
        else:
            why = f"the same {got[0]:,} rows in number, but their checksum differs: a row's content changed"
        return f"{_day_name(day)} changed: {why}"
    return None


def _merged_days(recorded: dict[str, tuple[int, int]], added: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    out = dict(recorded)
    for day, (n, total) in added.items():
        had = out.get(day, (0, 0))
        out[day] = (had[0] + n, _signed(had[1] + total))
    return out


# ---- counting and guarding, before anything is written ----------------------------------


def tally(checked: dict[str, DataFrame]) -> dict[str, dict]:
    """Rows of each checked input (key as in ``TABLES``) by rule, in one Spark action.

    Returns {key: {"read": n, "good": n, "rules": {rule: n}, "examples": {rule: reason},
    "dates": {rule: (min t_dat, max t_dat)}}}; dates only for the transactions file.
    """
    parts = []
    for key, df in checked.items():
        t_dat = F.col("t_dat") if key == "transactions" else F.lit(None).cast("string")
        parts.append(df.select(
            F.lit(key).alias("key"), F.col(f"{REJECT}.rule").alias("rule"), F.col(f"{REJECT}.reason").alias("reason"),
            t_dat.alias("t_dat"),
        ))
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    rows = union.groupBy("key", "rule").agg(
        F.count(F.lit(1)).alias("n"), F.min("t_dat").alias("lo"), F.max("t_dat").alias("hi"),
        F.first("reason", ignorenulls=True).alias("example"),
    ).collect()
    out = {key: {"read": 0, "good": 0, "rules": {}, "examples": {}, "dates": {}} for key in checked}
    for row in rows:
        entry = out[row["key"]]
        entry["read"] += int(row["n"])
        if row["rule"] is None:
            entry["good"] += int(row["n"])
            continue
        entry["rules"][row["rule"]] = int(row["n"])
        entry["examples"][row["rule"]] = row["example"]
        if row["lo"] is not None:
            entry["dates"][row["rule"]] = (row["lo"], row["hi"])
    return out


def period_note(cfg: Config, counts: dict) -> str | None:
    """What the date rule rejected in the transactions file: the rule, the setting and the dates seen."""
    n = counts.get("rules", {}).get("t_dat_range")
    if not n:
        return None
    lo, hi = counts["dates"].get("t_dat_range", ("?", "?"))
    today = dt.date.today().isoformat()
    note = (f"rule t_dat_range rejected {n:,} rows with t_dat {lo} .. {hi}: dates must be on or after "
            f"ingest.min_date = {cfg.ingest.min_date} and not after today ({today})")
    if lo < cfg.ingest.min_date:
        note += f"; if that period is right, lower it with --set ingest.min_date={lo[:4]}-01-01"
    if hi > today:
        note += "; dates after today are never accepted: check the t_dat column"
    return note


def check_shrink(cfg: Config, counts: dict[str, dict], old_rows: dict[str, int | None]) -> None:
    """Refuse (before anything is written) an input that would wipe good data; see the module notes.

    ``counts`` is :func:`tally`'s result, ``old_rows`` the rows each bronze
    table holds now (by key; None when it does not exist yet).
    """
    problems: list[str] = []
    for key, c in counts.items():
        file_name = schemas.INPUT_FILES[key][0]
        table = TABLES[key]
        old = old_rows.get(key)
        rejected = c["read"] - c["good"]
        why = ""
        if rejected:
            rule, n = max(c["rules"].items(), key=lambda kv: kv[1])
            why = f" (most for {rule}: {n:,} rows, e.g. {c['examples'].get(rule)})"
            note = period_note(cfg, c) if key == "transactions" else None
            if note is not None and rule == "t_dat_range":
                why = f" ({note})"
        if c["read"] and rejected / c["read"] > cfg.ingest.max_reject_share:
            problems.append(
                f"{file_name}: {rejected:,} of its {c['read']:,} rows ({rejected / c['read']:.0%}) were rejected, more "
                f"than ingest.max_reject_share = {cfg.ingest.max_reject_share:g}{why}"
            )
        elif old and c["good"] < cfg.ingest.min_keep_share * old:
            what = "holds no rows (only its header)" if c["read"] == 0 else f"has {c['good']:,} valid rows"
            problems.append(
                f"{file_name} {what}, which would replace the {old:,} rows of {table}: fewer than "
                f"ingest.min_keep_share = {cfg.ingest.min_keep_share:g} of them{why}"
            )
    if problems:
        raise InputError(
            "; ".join(problems) + f"; nothing was written. If this input is meant to replace the tables, rerun with "
            f"{ALLOW_SHRINK} (or --set ingest.min_keep_share=0 --set ingest.max_reject_share=1)"
        )


def _current_rows(spark: SparkSession, cfg: Config, has_manifests: bool, current: Manifest | None) -> dict[str, int | None]:
    """Rows each bronze table holds as readers see it (None: nothing): from the manifest, else counted."""
    out: dict[str, int | None] = {}
    for key, table in TABLES.items():
        if has_manifests:
            out[key] = current.rows.get(table.name) if current is not None else None
        elif storage.exists(spark, cfg, table):
            out[key] = storage.read(spark, cfg, table).count()
        else:
            out[key] = None
    return out


def _adopt(spark: SparkSession, cfg: Config, old_rows: dict[str, int | None]) -> None:
    """Record the bronze tables of a lakehouse written before manifests as its first manifest."""
    versions, rows = {}, {}
    for key, table in [*TABLES.items(), ("rejects", REJECTS_TABLE)]:
        v = storage.head_version(spark, cfg, table)
        if v is None:
            continue
        versions[table.name] = v
        rows[table.name] = old_rows[key] if key in old_rows else storage.read(spark, cfg, table).count()
    if versions:
        adopted = commit_manifest(spark, cfg, versions, rows, "", 1)
        log(STAGE, f"recorded the bronze tables as they are as ingest manifest {adopted}, so a stopped ingest "
                   f"cannot change what readers see")


def commit_manifest(spark: SparkSession, cfg: Config, versions: dict[str, int], rows: dict[str, int],
                    fp_json: str, seq: int, days: dict[str, tuple[int, int]] | None = None,
                    batch: dict | None = None, manifest_id: str | None = None) -> str:
    """Append one manifest row to ``tables.INGEST_MANIFESTS`` (its own atomic commit); returns its id.

    ``days`` are the per-date row counts and checksums of every transactions
    row ingested so far (:func:`day_stats`), ``batch`` what this ingest added.
    ``manifest_id`` names the bronze data the row pins: a new one unless given
    (a row that only records a new fingerprint of the same data keeps the id
    of the manifest it repeats, so the stages built on that data stay done).
    """
    manifest_id = manifest_id or uuid.uuid4().hex[:12]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    days = days or {}
    row = (manifest_id, seq, now, versions, rows, fp_json, {d: n for d, (n, _) in days.items()},
           {d: c for d, (_, c) in days.items()}, json.dumps(batch or {}, sort_keys=True, default=str))
    # merge_schema: a manifest table made before the per-date columns existed gains them
    storage.write(spark.createDataFrame([row], tables.INGEST_MANIFESTS.schema), cfg, tables.INGEST_MANIFESTS,
                  mode="append", merge_schema=True)
    return manifest_id


# ---- loading -----------------------------------------------------------------------------


def _load(
    cfg: Config,
    spark: SparkSession,
    inputs: dict[str, dict],
    headers: dict[str, list[str]],
    fp: dict,
    min_date: dt.date,
    level: StorageLevel,
    state: tuple[bool, Manifest | None],
    summary: dict,
    by_reason: dict[str, dict[str, int]],
) -> None:
    has_manifests, current = state
    ingested_at = dt.datetime.now(dt.timezone.utc)
    sources = {key: inputs[key]["path"] for key in TABLES}
    raw = {key: read_csv(spark, sources[key], headers[key], multi_line=key in MULTI_LINE_FILES) for key in TABLES}
    persisted: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        persisted.append(df.persist(level))
        return df

    try:
        good: dict[str, DataFrame] = {}
        checked: dict[str, DataFrame] = {}
        rejected: list[DataFrame] = []
        for key, check in (("articles", check_articles), ("customers", check_customers)):
            checked[key] = keep(check(raw[key]))
            good[key], rej = split_checked(checked[key], TABLES[key].schema, sources[key], ingested_at)
            rejected.append(rej)
        valid_customers = good["customers"].count()
        broadcast_customers = valid_customers <= cfg.ingest.broadcast_max_customers
        log(
            STAGE,
            f"checking transactions against {valid_customers} valid customers "
            f"({'broadcast' if broadcast_customers else 'shuffle join'})",
        )
        checked["transactions"] = keep(
            check_transactions(
                raw["transactions"], good["articles"], good["customers"],
                cfg.ingest.max_price, min_date, broadcast_customers,
            )
        )
        good["transactions"], rej = split_checked(
            checked["transactions"], schemas.TRANSACTIONS, sources["transactions"], ingested_at
        )
        rejected.append(rej)
        rejects = rejected[0].unionByName(rejected[1]).unionByName(rejected[2])

        # This one action runs every check of every row (and fills the caches the
        # writes read from), so a failure here leaves every table untouched.
        counts = tally(checked)
        for key, c in counts.items():
            if c["rules"]:
                by_reason[schemas.INPUT_FILES[key][0]] = dict(c["rules"])
        note = period_note(cfg, counts["transactions"])
        if note is not None:
            log(STAGE, f"{schemas.INPUT_FILES['transactions'][0]}: {note}")
        old_rows = _current_rows(spark, cfg, has_manifests, current)
        check_shrink(cfg, counts, old_rows)
        days = day_stats(checked["transactions"])  # from the cache: the rows as read, before their checks

        # From here on tables are written; readers see none of it before the manifest commit.
        if not has_manifests:
            if any(v is not None for v in old_rows.values()):
                _adopt(spark, cfg, old_rows)
            else:
                # readers of a new lakehouse find "no complete ingest" until this one ends
                storage.ensure_table(spark, cfg, tables.INGEST_MANIFESTS)
        # A table in a manifest, or whose last commit is an ingest's, already has its constraints.
        known = set(current.versions) if current is not None else set()
        unknown = [t for t in [*TABLES.values(), REJECTS_TABLE] if t.name not in known]
        previous = _last_ingests(spark, cfg, unknown) if unknown else {}
        for table in [table for table, meta in previous.items() if meta is None]:
            storage.ensure_table(spark, cfg, table, constraints=CONSTRAINTS.get(table))
        fp_json = manifest.fingerprint_json(fp)
        meta = {"stage": STAGE, "fingerprint": fp}
        versions: dict[str, int] = {}
        rows: dict[str, int] = {}
        for key, table in TABLES.items():
            written, versions[table.name] = storage.commit(good[key], cfg, table, metadata=meta)
            rows[table.name] = written
            file_name = schemas.INPUT_FILES[key][0]
            n_rejected = counts[key]["read"] - counts[key]["good"]
            summary[f"{key}_read"] = counts[key]["read"]
            summary[f"{key}_written"] = written
            summary[f"{key}_rejected"] = n_rejected
            detail = ", ".join(f"{rule}={n}" for rule, n in sorted(by_reason.get(file_name, {}).items()))
            detail = f" ({detail})" if detail else ""
            log(STAGE, f"{file_name}: wrote {written} rows to {table}, rejected {n_rejected}{detail}")
        summary["rejects_written"], versions[REJECTS_TABLE.name] = storage.commit(
            rejects.select(*schemas.REJECTS.fieldNames()), cfg, REJECTS_TABLE, metadata=meta
        )
        rows[REJECTS_TABLE.name] = summary["rejects_written"]
        last = manifest.latest(cfg, spark)
        batch = _batch("whole", days, counts["transactions"]["read"], summary["transactions_written"])
        summary["manifest_id"] = commit_manifest(spark, cfg, versions, rows, fp_json, (last.seq if last else 0) + 1,
                                                 days=days, batch=batch)
    finally:
        for df in persisted:
            df.unpersist()


def _batch(mode: str, days: dict[str, tuple[int, int]], read: int, written: int, **upserts: int) -> dict:
    """The manifest's record of one ingest: mode, first and last date, rows read and written, per-date counts."""
    dates = sorted(d for d in days if d != NO_DATE)
    return {
        "mode": mode,
        "dates": [dates[0], dates[-1]] if dates else [],
        "rows": read,
        "written": written,
        "days": {d: list(v) for d, v in sorted(days.items())},
        **upserts,
    }


# ---- appending -----------------------------------------------------------------------------

CATALOGUE_KEYS = {"articles": "article_id", "customers": "customer_id"}


def _rebase(spark: SparkSession, cfg: Config, current: Manifest, which: list[Table]) -> None:
    """Restore each table of ``which`` to its version in ``current`` when a stopped ingest left a later one.

    An append or a MERGE builds on the table's latest version, so rows an
    ingest wrote before it was stopped (never seen by readers) would otherwise
    be kept.
    """
    for table in which:
        pinned = current.versions.get(table.name)
        head = storage.head_version(spark, cfg, table)
        if pinned is not None and head is not None and head != pinned:
            restored = storage.restore(spark, cfg, table, pinned)
            log(STAGE, f"{table}: version {head} was left by an ingest stopped before its manifest; restored the "
                       f"version of {current.describe()} (as version {restored}) before writing")


def _new_days(cfg: Config, spark: SparkSession, found: dict[str, tuple[int, int]], current: Manifest,
              append: bool) -> tuple[dict[str, tuple[int, int]], str | None]:
    """(the day stats of the rows to add, the last date already ingested) for the incremental path.

    Raises :class:`Whole` for a file whose earlier dates changed (without
    ``append``), :class:`InputError` for an append batch that repeats an
    ingested date with other rows.
    """
    tx_name = schemas.INPUT_FILES["transactions"][0]
    recorded = current.days
    last = max((d for d in recorded if d != NO_DATE), default=None)
    if not append:
        if last is None:
            raise Whole(f"{current.describe()} kept no per-date checksums of {tx_name} to compare it with (it was "
                        f"made before they were recorded)")
        changed = first_changed_day(found, recorded, last)
        if changed is not None:
            raise Whole(f"{tx_name}: rows of {changed} since {current.describe()}")
        return {d: v for d, v in found.items() if d > last}, last
    if last is None:  # a lakehouse ingested before per-date checksums were kept
        day = storage.read(spark, cfg, tables.TRANSACTIONS).agg(F.max("t_dat")).first()[0]
        last = day.isoformat() if day is not None else None
        overlap = sorted(d for d in found if d != NO_DATE and last is not None and d <= last)
        if overlap:
            raise InputError(
                f"{tx_name} (--append batch) holds rows of {overlap[0]} .. {overlap[-1]}, on or before {last}, the "
                f"last date in {tables.TRANSACTIONS}, and {current.describe()} kept no per-date checksums to compare "
                f"them with; nothing was written. Remove those rows from the batch, or ingest the whole file "
                f"without --append"
            )
    else:
        for d in sorted(d for d in found if d != NO_DATE and d <= last):
            changed = first_changed_day({d: found[d]}, {d: recorded.get(d, (0, 0))}, d)
            if changed is not None:
                raise InputError(
                    f"{tx_name} (--append batch): rows of {changed} by {current.describe()}; a batch may repeat an "
                    f"ingested date only with the same rows. Nothing was written. To replace ingested rows, put the "
                    f"whole transactions file with articles.csv and customers.csv in DIR and rerun without --append"
                )
    new = {d: v for d, v in found.items() if d != NO_DATE and (last is None or d > last)}
    if new and NO_DATE in found:  # rows of the batch without a valid date: checked with it, and rejected
        new[NO_DATE] = found[NO_DATE]
    return new, last


def _shown_path(uri: str) -> str:
    """A qualified local path without its ``file:`` scheme, for messages; other URIs as they are."""
    return uri.removeprefix("file://") if uri.startswith("file:///") else uri.removeprefix("file:")


def _record_fingerprint(spark: SparkSession, cfg: Config, current: Manifest, fp: dict, summary: dict,
                        found: str) -> None:
    """Input files whose bytes changed but which hold nothing new: record their fingerprint, write no rows.

    One manifest row repeats ``current`` (its table versions, row counts,
    per-date checksums and id) with the new fingerprint, so the next ingest of
    the same files stops at the fingerprint instead of scanning them again. It
    is the only commit, so a stopped ingest leaves ``current`` in force.
    """
    batch = _batch("unchanged", {}, 0, 0)
    commit_manifest(spark, cfg, dict(current.versions), dict(current.rows), manifest.fingerprint_json(fp),
                    current.seq + 1, days=current.days, batch=batch, manifest_id=current.manifest_id)
    summary.update(skipped=True, mode="unchanged", manifest_id=current.manifest_id,
                   found=f"{found}; recorded the files' new fingerprint, no rows written")
    log(STAGE, f"recorded the new fingerprint of the input files in ingest #{current.seq + 1} (the bronze tables of "
               f"{current.describe()}), so the next ingest of the same files skips them at once")


def _incremental(
    cfg: Config,
    spark: SparkSession,
    inputs: dict[str, dict],
    headers: dict[str, list[str]],
    fp: dict,
    current: Manifest,
    append: bool,
    min_date: dt.date,
    level: StorageLevel,
    summary: dict,
    by_reason: dict[str, dict[str, int]],
) -> None:
    """Append the transactions of dates after the last one ingested, upsert changed catalogue files.

    One scan of transactions_train.csv computes its per-date checksums
    (:func:`day_stats`) to compare with the manifest's; only rows of later
    dates are then checked (against the ingested catalogues plus the new valid
    rows), in one action with the catalogue files, before anything is written.
    Then: articles and customers are upserted by ``MERGE`` (only files whose
    fingerprint changed), the new transactions and rejects appended, one
    commit each, and the manifest committed last. Raises :class:`Whole` when
    the input must be ingested whole instead.
    """
    tx_name = schemas.INPUT_FILES["transactions"][0]
    ingested_at = dt.datetime.now(dt.timezone.utc)
    sources = {key: inputs[key]["path"] for key in inputs}
    raw_tx = read_csv(spark, sources["transactions"], headers["transactions"])
    found = day_stats(raw_tx)
    new_days, last = _new_days(cfg, spark, found, current, append)
    previous = json.loads(current.fingerprint).get("files", {}) if current.fingerprint else {}
    catalogues = [k for k in CATALOGUE_KEYS if k in inputs and previous.get(k) != inputs[k]]
    mode = "append" if append else "grown"
    if not new_days and not catalogues:
        upto = f" up to {last}" if last else ""
        log(STAGE, f"{tx_name}: no new rows (every date{upto} matches its recorded row count and checksum in "
                   f"{current.describe()}); no rows written")
        _record_fingerprint(spark, cfg, current, fp, summary,
                            f"no new dates: every date in {_shown_path(sources['transactions'])} is already ingested")
        return
    summary["mode"] = mode
    persisted: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        persisted.append(df.persist(level))
        return df

    try:
        checked: dict[str, DataFrame] = {}
        good: dict[str, DataFrame] = {}
        rejected: list[DataFrame] = []
        for key, check in (("articles", check_articles), ("customers", check_customers)):
            if key in catalogues:
                raw = read_csv(spark, sources[key], headers[key], multi_line=key in MULTI_LINE_FILES)
                checked[key] = keep(check(raw))
                good[key], rej = split_checked(checked[key], TABLES[key].schema, sources[key], ingested_at)
                rejected.append(rej)

        def known(key: str) -> DataFrame:
            ids = storage.read(spark, cfg, TABLES[key]).select(CATALOGUE_KEYS[key])
            return ids.unionByName(good[key].select(CATALOGUE_KEYS[key])) if key in good else ids

        key_col = day_key(F.col("t_dat"))
        wanted = F.lit(True) if last is None else (key_col > F.lit(last))
        if append and last is not None:
            wanted = wanted | (key_col == F.lit(NO_DATE))
        if not new_days:
            wanted = F.lit(False)
        n_customers = current.rows.get(tables.CUSTOMERS.name) or 0
        checked["transactions"] = keep(check_transactions(
            raw_tx.where(wanted), known("articles"), known("customers"), cfg.ingest.max_price, min_date,
            n_customers <= cfg.ingest.broadcast_max_customers,
        ))
        good["transactions"], rej = split_checked(checked["transactions"], schemas.TRANSACTIONS,
                                                  sources["transactions"], ingested_at)
        rejected.append(rej)

        counts = tally(checked)  # every check of every new row, before anything is written
        for key, c in counts.items():
            if c["rules"]:
                by_reason[schemas.INPUT_FILES[key][0]] = dict(c["rules"])
        note = period_note(cfg, counts["transactions"])
        if note is not None:
            log(STAGE, f"{tx_name}: {note}")
        if not append:
            # a catalogue file of a whole data set much smaller than its table: the whole ingest's guards judge it
            shrinking = [schemas.INPUT_FILES[k][0] for k in catalogues
                         if current.rows.get(TABLES[k].name) and
                         counts[k]["good"] < cfg.ingest.min_keep_share * current.rows[TABLES[k].name]]
            if shrinking:
                raise Whole(f"{', '.join(shrinking)} holds fewer than ingest.min_keep_share = "
                            f"{cfg.ingest.min_keep_share:g} of the rows of its table")
        check_shrink(cfg, counts, {key: None for key in counts})  # the reject share of the new rows

        # Only what differs from bronze is written: catalogue rows not already there as they are, rejects
        # not already recorded (a whole catalogue file repeats its bad rows each time).
        changes = {key: keep(good[key].subtract(storage.read(spark, cfg, TABLES[key]))) for key in catalogues}
        rejects = rejected[0]
        for part in rejected[1:]:
            rejects = rejects.unionByName(part)
        recorded_rejects = storage.read(spark, cfg, REJECTS_TABLE).select("raw", "reason")
        rejects = keep(rejects.select(*schemas.REJECTS.fieldNames()).join(recorded_rejects, ["raw", "reason"],
                                                                             "left_anti"))
        n_changes = {key: df.count() for key, df in changes.items()}
        n_rejects = rejects.count()
        if not new_days and not any(n_changes.values()) and not n_rejects:
            upto = f" up to {last}" if last else ""
            files = " and ".join(schemas.INPUT_FILES[k][0] for k in catalogues)
            log(STAGE, f"no new rows: every date of {tx_name}{upto} matches its recorded row count and "
                       f"checksum, and {files} hold no row that differs from {current.describe()}; no rows written")
            _record_fingerprint(spark, cfg, current, fp, summary,
                                f"no new dates: every date in {_shown_path(sources['transactions'])} is already "
                                f"ingested, and {files} hold no changed row")
            return

        # From here on tables are written; readers see none of it before the manifest commit.
        merged = [k for k in catalogues if n_changes[k]]
        written_tables = [TABLES[k] for k in merged] + ([tables.TRANSACTIONS] if new_days else []) + (
            [REJECTS_TABLE] if n_rejects else [])
        _rebase(spark, cfg, current, written_tables)
        meta = {"stage": STAGE, "fingerprint": fp, "mode": mode}
        versions, rows = dict(current.versions), dict(current.rows)
        upserts: dict[str, int] = {}
        for key in ("articles", "customers", "transactions"):
            file_name = schemas.INPUT_FILES[key][0]
            c = counts.get(key, {"read": 0, "good": 0})
            summary[f"{key}_read"], summary[f"{key}_rejected"] = c["read"], c["read"] - c["good"]
            table = TABLES[key]
            detail = ", ".join(f"{rule}={n}" for rule, n in sorted(by_reason.get(file_name, {}).items()))
            detail = f" ({detail})" if detail else ""
            if key in catalogues:
                inserted = updated = 0
                if n_changes[key]:
                    inserted, updated, versions[table.name] = storage.upsert(changes[key], cfg, table,
                                                                             CATALOGUE_KEYS[key], metadata=meta)
                rows[table.name] = (rows.get(table.name) or 0) + inserted
                summary[f"{key}_written"] = inserted + updated
                summary[f"{key}_inserted"] = upserts[f"{key}_inserted"] = inserted
                summary[f"{key}_updated"] = upserts[f"{key}_updated"] = updated
                log(STAGE, f"{file_name}: merged into {table}: {inserted} new, {updated} changed, "
                           f"rejected {c['read'] - c['good']}{detail}")
            elif key == "transactions" and new_days:
                written, versions[table.name] = storage.commit(good[key], cfg, table, mode="append", metadata=meta)
                rows[table.name] = (rows.get(table.name) or 0) + written
                summary[f"{key}_written"] = written
                dates = sorted(d for d in new_days if d != NO_DATE)
                log(STAGE, f"{file_name}: appended {written} rows of {dates[0]} .. {dates[-1]} to {table} "
                           f"(dates up to {last or '-'} already ingested), rejected {c['read'] - c['good']}{detail}")
            else:
                summary[f"{key}_written"] = 0
        summary["rejects_written"] = 0
        if n_rejects:
            summary["rejects_written"], versions[REJECTS_TABLE.name] = storage.commit(
                rejects, cfg, REJECTS_TABLE, mode="append", metadata=meta
            )
            rows[REJECTS_TABLE.name] = (rows.get(REJECTS_TABLE.name) or 0) + summary["rejects_written"]
        batch = _batch(mode, new_days, counts["transactions"]["read"], summary["transactions_written"], **upserts)
        summary["manifest_id"] = commit_manifest(
            spark, cfg, versions, rows, manifest.fingerprint_json(fp), current.seq + 1,
            days=_merged_days(current.days, new_days), batch=batch,
        )
    finally:
        for df in persisted:
            df.unpersist()
