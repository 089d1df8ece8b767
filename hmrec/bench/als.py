"""Spark MLlib ALS with implicit feedback: the model a Spark user would otherwise reach for.

Used by the peer benchmark (``python -m hmrec.bench all``) on the same
training window, K and fallback as the two-tower model.
"""
from __future__ import annotations

import datetime as dt

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hmrec.config import Config
from hmrec.etl.split import training_window


def purchase_counts(train: DataFrame) -> DataFrame:
    """(customer_idx, article_idx, purchases): the implicit ratings ALS trains on."""
    return train.groupBy("customer_idx", "article_idx").agg(F.count(F.lit(1)).cast("float").alias("purchases"))


def fit_als(ratings: DataFrame, rank: int, max_iter: int = 10, reg: float = 0.1, alpha: float = 40.0,
            seed: int = 7) -> ALSModel:
    """Fit implicit-preference ALS on purchase counts."""
    als = ALS(
        rank=rank,
        maxIter=max_iter,
        regParam=reg,
        alpha=alpha,
        implicitPrefs=True,
        userCol="customer_idx",
        itemCol="article_idx",
        ratingCol="purchases",
        coldStartStrategy="drop",
        seed=seed,
    )
    return als.fit(ratings)


def als_top_k(model: ALSModel, k: int) -> DataFrame:
    """(customer_idx, article_idx, rank, score) from ``recommendForAllUsers``."""
    recs = model.recommendForAllUsers(k)
    exploded = recs.select("customer_idx", F.posexplode("recommendations").alias("pos", "rec"))
    return exploded.select(
        "customer_idx",
        F.col("rec.article_idx").alias("article_idx"),
        (F.col("pos") + 1).alias("rank"),
        F.col("rec.rating").cast("double").alias("score"),
    )


def train_als(cfg: Config, spark: SparkSession, as_of: dt.date, rank: int | None = None,
              max_iter: int = 10) -> ALSModel:
    """ALS at the two-tower model's embedding size on the two-tower model's training rows for ``as_of``.

    Those are the as-of's training rows, limited to the last ``train.train_days``
    days when that is set, so both models learn from the same window.
    """
    train = training_window(spark, cfg, as_of)
    ratings = purchase_counts(train).cache()
    try:
        return fit_als(ratings, rank or cfg.train.embedding_dim, max_iter=max_iter, seed=cfg.train.seed)
    finally:
        ratings.unpersist()
