"""``python -m hmrec.bench pairs``: what the co-purchase source's article pairs cost, window by window.

    python -m hmrec.bench pairs --scale 1.0 --as-of 2020-09-16 --windows 7,28,56

The pairs (:func:`hmrec.rank.candidates.copurchase_pairs`) are computed
once per candidates stage from the purchases of the ``candidates.copurchase_days``
days before its cutoff, then collected to the driver and broadcast. This
benchmark reads the generated data's ``transactions_train.csv`` (made once
under ``bench/out``), keeps the rows of the longest window before the as-of
with integer keys (a hash of ``customer_id``; ``article_id`` as a number),
and caches them: that read is timed as a stage of its own, so the rows after
it time the pairs alone, as the candidates stage pays them. Each window of
``--windows`` (default: the setting's value) is timed ``--rounds`` times (the
first also pays Spark's warm-up) and reported with its purchases, the
pairs, the articles that have any and the peak memory. No lakehouse is
written.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import functions as F

from hmrec.bench.common import bench_cfg, data_dir, report, timed
from hmrec.lake import schemas
from hmrec.lake.spark import get_spark
from hmrec.rank.candidates import copurchase_pairs


def bench_pairs(scale: float, seed: int, overrides: list[str], as_of: dt.date, windows: list[int] | None,
                rounds: int) -> None:
    """Time the co-purchase pairs of each window before ``as_of`` on this scale's generated data."""
    cfg = bench_cfg(scale, overrides)
    windows = windows or [cfg.candidates.copurchase_days]
    if min(windows) < 1 or rounds < 1:
        raise SystemExit(f"--windows must be positive day counts (got {windows}) and --rounds at least 1")
    rows: list[dict] = []
    path = f"{data_dir(cfg, scale, seed, rows)}/{schemas.INPUT_FILES['transactions'][0]}"
    spark = get_spark(cfg)
    start = as_of - dt.timedelta(days=max(windows))
    purchases = (
        spark.read.option("header", True).csv(path)
        .where((F.col("t_dat") >= start.isoformat()) & (F.col("t_dat") < as_of.isoformat()))
        .select(F.to_date("t_dat").alias("t_dat"),
                (F.xxhash64("customer_id") % (1 << 31)).cast("int").alias("customer_idx"),
                F.col("article_id").cast("int").alias("article_idx"))
    )
    with timed(rows, f"read and cache {max(windows)} days before {as_of}") as row:
        purchases = purchases.cache()
        row["n"] = purchases.count()
    try:
        for days in windows:
            n = purchases.where(F.col("t_dat") >= F.lit(as_of - dt.timedelta(days=days))).count()
            for turn in range(1, rounds + 1):
                with timed(rows, f"pairs of {days} days, round {turn}") as row:
                    pairs = copurchase_pairs(purchases, as_of, days).toPandas()
                    row.update(n=n, pairs=len(pairs), articles=int(pairs["article_idx"].nunique()))
    finally:
        purchases.unpersist()
    report("pairs", scale, rows, {"as_of": as_of.isoformat(), "windows": windows, "rounds": rounds,
                                  "overrides": overrides})
