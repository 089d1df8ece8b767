"""The served lists of one as-of as a file: the H&M competition's submission, or one row per recommendation.

    hmrec export --as-of 2020-09-16 --format kaggle --out submission.csv

``kaggle`` writes ``customer_id,prediction``: one row for every customer of
``tables.CUSTOMERS`` (at the last complete ingest's version), ``prediction``
being 12 distinct ten-digit article ids separated by spaces, as in the
competition's ``sample_submission.csv``. The ids come from the lists
``hmrec score`` served for the as-of (``tables.RECOMMENDATIONS``, read by time
travel when a later refresh has replaced them), first 12 by rank. A list
shorter than 12 is filled from the global popularity list of the as-of
(``tables.POPULARITY``) without repeating an article, and a customer without a
served list gets the popularity list whole.

``csv`` writes ``customer_id,rank,article_id,score,source``: the served rows of
the as-of as stored, and for a customer without a served list the first
``score.k`` popular articles (source ``popular``, score their recent purchases,
as scoring fills them).

The join runs in Spark (1.37M customers at full scale); one task writes the
single CSV file, with its header, into a temporary directory beside ``--out``,
and the file is then renamed to ``--out``: an export that fails leaves no file,
or the previous one untouched. ``--out`` is a path on the local file system.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import storage, tables
from hmrec.progress import log, stage

STAGE = "export"
FORMATS = ("kaggle", "csv")
KAGGLE_K = 12  # the competition's MAP@12: every prediction holds 12 articles
KAGGLE_HEADER = ("customer_id", "prediction")
CSV_HEADER = ("customer_id", "rank", "article_id", "score", "source")
ARTICLE_ID_DIGITS = 10


def check_destination(fmt: str, out: str) -> Path:
    """``out`` as an absolute path, once the format is known and the directory to write into exists."""
    if fmt not in FORMATS:
        raise HmrecError(f"--format {fmt!r} is not an export format; use one of: {', '.join(FORMATS)}")
    path = Path(out).expanduser().resolve()
    if path.is_dir():
        raise HmrecError(f"--out {out} is a directory; give the path of the file to write, e.g. {Path(out) / 'submission.csv'}")
    if not path.parent.is_dir():
        raise HmrecError(f"--out {out}: the directory {path.parent} does not exist; create it first (mkdir -p {path.parent})")
    return path


def served_as_ofs(spark: SparkSession, cfg: Config) -> list[str]:
    """The as-of dates ``tables.RECOMMENDATIONS`` holds lists of, in its current version or its history."""
    if not storage.exists(spark, cfg, tables.RECOMMENDATIONS):
        return []
    from delta.tables import DeltaTable  # imported here: only this lookup needs the Delta API

    found: set[str] = set()
    for row in DeltaTable.forPath(spark, storage.path(cfg, tables.RECOMMENDATIONS)).history().select("userMetadata").collect():
        try:
            meta = json.loads(row["userMetadata"]) if row["userMetadata"] else {}
        except ValueError:
            continue
        if isinstance(meta, dict) and meta.get("as_of"):
            found.add(str(meta["as_of"]))
    return sorted(found)


def served_lists(spark: SparkSession, cfg: Config, as_of: dt.date) -> DataFrame:
    """The ``tables.RECOMMENDATIONS`` rows served for ``as_of``; none is an error naming the command that makes them."""
    recs = storage.read_as_of(spark, cfg, tables.RECOMMENDATIONS, as_of)
    if recs.limit(1).count() == 0:
        held = served_as_ofs(spark, cfg)
        where = f"{tables.RECOMMENDATIONS} at {storage.path(cfg, tables.RECOMMENDATIONS)}"
        known = f"it holds lists for {', '.join(held)}" if held else "it holds no lists"
        raise HmrecError(
            f"no served lists for as-of {as_of} in {where} ({known}); make them with "
            f"`hmrec run --data DIR --as-of {as_of}` (or `hmrec score --as-of {as_of}` after the earlier stages), "
            f"or export one of the as-ofs it holds"
        )
    return recs


def popular_articles(spark: SparkSession, cfg: Config, as_of: dt.date, n: int) -> list[tuple[str, float]]:
    """The first ``n`` distinct articles of the global popularity list of ``as_of``: (article_id, score) by rank.

    ``n`` of them fill any list to ``n`` without a repeat (its own articles, then the popular ones it
    lacks), so a catalogue of ``n`` articles is enough; fewer is an error."""
    rows = (storage.read_as_of(spark, cfg, tables.POPULARITY, as_of)
            .where(F.col("segment") == "global")
            .select("rank", "article_id", "score")
            .orderBy("rank", "article_id")
            .limit(4 * n)
            .collect())
    seen: dict[str, float] = {}
    for r in rows:
        seen.setdefault(r["article_id"], float(r["score"]))
    if len(seen) < n:
        raise HmrecError(
            f"{tables.POPULARITY} at {storage.path(cfg, tables.POPULARITY)} holds {len(seen)} distinct global articles "
            f"for as-of {as_of}, fewer than the {n} of one list, so lists cannot be filled to {n} distinct articles; "
            f"run `hmrec popularity --as-of {as_of}`"
        )
    return list(seen.items())[:n]


def customer_ids(spark: SparkSession, cfg: Config) -> DataFrame:
    """Every customer_id of ``tables.CUSTOMERS`` once (at the last complete ingest's version)."""
    return storage.read(spark, cfg, tables.CUSTOMERS).select("customer_id").dropDuplicates(["customer_id"])


def _padded(col: F.Column) -> F.Column:
    return F.lpad(col, ARTICLE_ID_DIGITS, "0")


def kaggle_rows(customers: DataFrame, recs: DataFrame, popular: list[str], k: int = KAGGLE_K) -> DataFrame:
    """``customer_id, prediction, served`` for every row of ``customers``: ``k`` distinct articles by rank, filled from
    ``popular`` (article ids, best first, at least ``k``) without repeats; ``served`` counts the ones from ``recs``."""
    per_customer = (recs.groupBy("customer_id")
                    .agg(F.array_sort(F.collect_list(F.struct("rank", _padded(F.col("article_id")).alias("a")))).alias("ranked"))
                    .select("customer_id",
                            F.slice(F.array_distinct(F.transform("ranked", lambda r: r["a"])), 1, k).alias("served")))
    fill = F.array(*[F.lit(a.zfill(ARTICLE_ID_DIGITS)) for a in popular])
    served = F.coalesce(F.col("served"), F.array().cast("array<string>"))
    full = F.slice(F.concat(served, F.filter(fill, lambda a: ~F.array_contains(served, a))), 1, k)
    return (customers.join(per_customer, "customer_id", "left")
            .select("customer_id", F.concat_ws(" ", full).alias("prediction"), F.size(served).alias("served")))


def csv_rows(customers: DataFrame, recs: DataFrame, popular: list[tuple[str, float]], k: int) -> DataFrame:
    """``customer_id, rank, article_id, score, source, served`` rows: the served rows of customers that have
    a list, the first ``k`` of ``popular`` for the others; ``served`` is 1 on a served row."""
    spark = customers.sparkSession
    served = (recs.join(customers, "customer_id", "left_semi")
              .select("customer_id", "rank", _padded(F.col("article_id")).alias("article_id"), "score", "source",
                      F.lit(1).alias("served")))
    fill = spark.createDataFrame([(i + 1, a.zfill(ARTICLE_ID_DIGITS), s) for i, (a, s) in enumerate(popular[:k])],
                                 "rank int, article_id string, score double")
    missing = customers.join(recs.select("customer_id").distinct(), "customer_id", "left_anti")
    filled = (missing.crossJoin(F.broadcast(fill))
              .select("customer_id", "rank", "article_id", "score", F.lit("popular").alias("source"), F.lit(0).alias("served")))
    return served.unionByName(filled)


def write_single_csv(df: DataFrame, out: Path, sort_by: list[str]) -> None:
    """Write ``df`` as one CSV file with a header at ``out``: in a temporary directory beside it, then renamed.

    Nothing is left at ``out`` (nor beside it) when the write fails; a file already at ``out`` stays as it was.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (df.repartition(1).sortWithinPartitions(*sort_by)
         .write.mode("overwrite").option("header", True).option("quote", '"').option("escape", '"')
         .csv(str(tmp / "spark")))
        os.replace(_single_part(tmp / "spark"), out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _single_part(directory: Path) -> Path:
    """The one part file Spark wrote into ``directory``."""
    parts = sorted(directory.glob("part-*.csv"))
    if len(parts) != 1:
        raise HmrecError(f"Spark wrote {len(parts)} part files into {directory}, not one; the export was not written")
    return parts[0]


def export(cfg: Config, spark: SparkSession, as_of: dt.date, fmt: str, out: str) -> dict:
    """Write the served lists of ``as_of`` for every customer to ``out`` in format ``fmt`` (see the module notes)."""
    path = check_destination(fmt, out)
    with stage(STAGE) as summary:
        summary["as_of"], summary["format"], summary["out"] = as_of.isoformat(), fmt, str(path)
        recs = served_lists(spark, cfg, as_of)
        k = KAGGLE_K if fmt == "kaggle" else cfg.score.k
        popular = popular_articles(spark, cfg, as_of, k)
        customers = customer_ids(spark, cfg)
        if fmt == "kaggle":
            rows = kaggle_rows(customers, recs, [a for a, _ in popular], k)
            columns, sort_by = list(KAGGLE_HEADER), ["customer_id"]
        else:
            rows = csv_rows(customers, recs, popular, k)
            columns, sort_by = list(CSV_HEADER), ["customer_id", "rank"]
        rows = rows.persist()
        try:
            started = time.perf_counter()
            if fmt == "kaggle":
                counts = rows.agg(F.count(F.lit(1)).alias("rows"),
                                  F.sum(F.when(F.col("served") == 0, 1).otherwise(0)).alias("from_popularity"),
                                  F.sum(F.when((F.col("served") > 0) & (F.col("served") < k), 1).otherwise(0)).alias("filled")).first()
                summary["customers"] = counts["rows"]
                summary["customers_without_list"] = counts["from_popularity"] or 0
                summary["lists_filled_from_popularity"] = counts["filled"] or 0
            else:
                counts = rows.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("customer_id").alias("customers"),
                                  F.countDistinct(F.when(F.col("served") == 0, F.col("customer_id"))).alias("missing")).first()
                summary["customers"], summary["rows"] = counts["customers"], counts["rows"]
                summary["customers_without_list"] = counts["missing"] or 0
            log(STAGE, f"{summary['customers']:,} customers joined to the lists of {as_of} in "
                       f"{time.perf_counter() - started:.1f} s ({summary['customers_without_list']:,} without a served list "
                       f"get the popularity list); writing {path}")
            write_single_csv(rows.select(*columns), path, sort_by)
        finally:
            rows.unpersist()
        summary["bytes"] = path.stat().st_size
    return dict(summary)
