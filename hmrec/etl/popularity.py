"""The popularity job: the most bought articles, globally and per age segment.

    hmrec popularity --as-of YYYY-MM-DD

writes the as-of partition of ``tables.POPULARITY``: for segment ``global`` and
for every age segment of :func:`hmrec.etl.segments.segment_labels`, the ``top_n``
articles ranked by purchases in the ``window_days`` days before the as-of
(ties by article_id). A segment with fewer items bought in the window is
filled from its purchases over all history before the as-of, then from the
global list; the global list itself is filled from all history, then from the
rest of the catalogue by article_id. So every segment holds ``top_n`` items
whenever the catalogue has that many. ``score`` is always the item's purchases
in the window within the segment (0 for filled items); ``rank`` is the order.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.etl.segments import UNKNOWN_SEGMENT, customer_segments, segment_labels
from hmrec.etl.split import window
from hmrec.lake import schemas, storage, tables
from hmrec.progress import stage

GLOBAL = "global"


def segment_purchases(interactions: DataFrame, segments: DataFrame, broadcast_segments: bool) -> DataFrame:
    """t_dat, article_idx and the buyer's segment of every interaction (unknown buyer: 'age_unknown')."""
    seg = F.broadcast(segments) if broadcast_segments else segments
    return interactions.select("t_dat", "customer_idx", "article_idx").join(seg, "customer_idx", "left").select(
        "t_dat", "article_idx", F.coalesce(F.col("segment"), F.lit(UNKNOWN_SEGMENT)).alias("segment")
    )


def _tiered(df: DataFrame, filler_key: Column) -> DataFrame:
    """Add the sort columns of :func:`_rank` to rows holding ``w`` (window) and ``h`` (history) counts.

    Tier 0: bought in the window, by window count; tier 1: bought only before
    it, by all-history count; tier 2: filler, by ``filler_key`` (descending).
    """
    tier = F.when(F.col("w") > 0, 0).when(F.col("h") > 0, 1).otherwise(2)
    key = F.when(tier == 0, F.col("w")).when(tier == 1, F.col("h")).otherwise(filler_key)
    return df.withColumn("tier", tier).withColumn("key", key.cast("long"))


def _rank(df: DataFrame, top_n: int) -> DataFrame:
    """The ``top_n`` rows per segment by (tier, key descending, article_id), numbered from 1."""
    order = Window.partitionBy("segment").orderBy(F.col("tier"), F.col("key").desc(), F.col("article_id"))
    return df.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= top_n)


def _top(df: DataFrame, top_n: int, columns: list[str]) -> DataFrame:
    """The ``top_n`` rows of one list by (tier, key descending, article_id): ``rank`` (from 1) and ``columns``.

    A distributed top-N (each partition keeps its best ``top_n``, then those are
    merged), numbered from a sorted array of the few rows left: a window would
    have to be unpartitioned here, as the list is one group.
    """
    best = df.orderBy(F.col("tier"), F.col("key").desc(), F.col("article_id")).limit(top_n)
    ordered = best.agg(F.sort_array(F.collect_list(
        F.struct("tier", (-F.col("key")).alias("negated_key"), "article_id", *[c for c in columns if c != "article_id"])
    )).alias("top"))
    return ordered.select(F.posexplode("top").alias("pos", "row")).select(
        (F.col("pos") + 1).alias("rank"), *[F.col(f"row.{c}").alias(c) for c in columns]
    )


def rank_popularity(
    purchases: DataFrame,
    catalogue: DataFrame,
    as_of: dt.date,
    window_days: int,
    top_n: int,
    labels: list[str],
) -> DataFrame:
    """Ranked popular items (schemas.POPULARITY) for 'global' and each segment of ``labels``.

    ``purchases`` holds (t_dat, article_idx, segment); only rows before
    ``as_of`` count. ``catalogue`` holds (article_id, article_idx) of the
    articles that may be ranked; purchases of other articles are ignored.
    """
    t = F.col("t_dat")
    window_start = F.lit(as_of - dt.timedelta(days=window_days))
    catalogue = catalogue.select("article_id", "article_idx")
    counts = (
        purchases.where(t < F.lit(as_of))
        .groupBy("segment", "article_idx")
        .agg(F.sum(F.when(t >= window_start, 1).otherwise(0)).alias("w"), F.count(F.lit(1)).alias("h"))
        .join(F.broadcast(catalogue), "article_idx")
    )

    # Global: every catalogue article, so the unsold ones fill up by article_id.
    totals = counts.groupBy("article_idx").agg(F.sum("w").alias("w"), F.sum("h").alias("h"))
    everything = catalogue.join(totals, "article_idx", "left").select(
        F.lit(GLOBAL).alias("segment"), "article_id", "article_idx",
        F.coalesce("w", F.lit(0)).alias("w"), F.coalesce("h", F.lit(0)).alias("h"),
    )
    top_global = _top(_tiered(everything, F.lit(0)), top_n, ["article_id", "article_idx", "w"]).select(
        "article_id", "article_idx", "w", F.col("rank").alias("grank")
    )

    # Segments: their own purchases, plus the global list as the last tier.
    names = purchases.sparkSession.createDataFrame([(s,) for s in labels], "segment string")
    fill = names.crossJoin(top_global.select("article_id", "article_idx", "grank"))
    candidates = (
        counts.select("segment", "article_id", "article_idx", "w", "h")
        .join(fill, ["segment", "article_id", "article_idx"], "full_outer")
        .select(
            "segment", "article_id", "article_idx",
            F.coalesce("w", F.lit(0)).alias("w"), F.coalesce("h", F.lit(0)).alias("h"), "grank",
        )
    )
    # Negated: 'key descending' then walks the global list from its top.
    per_segment = _rank(_tiered(candidates, -F.col("grank")), top_n)
    out = per_segment.select("segment", "rank", "article_id", "article_idx", "w").unionByName(
        top_global.select(
            F.lit(GLOBAL).alias("segment"), F.col("grank").alias("rank"), "article_id", "article_idx", "w"
        )
    )
    return schemas.conform(out.withColumn("as_of", F.lit(as_of)).withColumn("score", F.col("w")), schemas.POPULARITY)


def popularity(cfg: Config, spark: SparkSession, as_of: dt.date) -> dict:
    """Write the ``as_of`` partition of the popularity table; returns the stage summary."""
    pc = cfg.popularity
    buckets = cfg.features.age_buckets
    with stage("popularity") as summary:
        interactions = storage.read(spark, cfg, tables.INTERACTIONS)
        customers = storage.read(spark, cfg, tables.CUSTOMERS)
        customer_index = storage.read(spark, cfg, tables.CUSTOMER_INDEX)
        articles = storage.read(spark, cfg, tables.ARTICLES)
        article_index = storage.read(spark, cfg, tables.ARTICLE_INDEX)

        before = window(interactions, as_of)
        summary["rows_in"] = before.count()
        summary["as_of"] = as_of.isoformat()
        n_customers = customer_index.count()
        segments = customer_segments(customers, customer_index, buckets)
        purchases = segment_purchases(
            before, segments, broadcast_segments=n_customers <= cfg.features.broadcast_max_customers
        )
        catalogue = articles.select("article_id").distinct().join(article_index, "article_id")
        ranked = rank_popularity(purchases, catalogue, as_of, pc.window_days, pc.top_n, segment_labels(buckets))
        summary["rows_written"] = storage.write_partition(
            ranked, cfg, tables.POPULARITY, as_of, metadata={"as_of": as_of.isoformat()}
        )
        # The list lengths need the written rows themselves: one small aggregate over this partition.
        written = storage.read_as_of(spark, cfg, tables.POPULARITY, as_of)
        per_segment = {r["segment"]: r["count"] for r in written.groupBy("segment").count().collect()}
        summary["segments"] = len(per_segment)
        summary["min_items_per_segment"] = min(per_segment.values(), default=0)
    return dict(summary)
