"""Customer segments: age buckets and their labels, history groups and sales channels, one definition each.

A customer's age falls in bucket i (1..n) when ``buckets[i-1] <= age <
buckets[i]`` (``features.age_buckets``), and in bucket 0 when it is unknown or
outside them. Bucket i is labelled ``age_<lo>_<hi-1>``, bucket 0
``age_unknown``. Popularity is counted per label, scoring falls back to the
label's list and evaluation reports by it. The buckets are checked when the
config loads (``features.age_buckets``).

The evaluation also reports by age band (:func:`age_band`: the same buckets,
named ``age:<lo>-<hi-1>`` or ``age:unknown``) and by sales channel
(:func:`main_channel`: ``channel:store``, ``channel:online`` or
``channel:none``), beside the history groups at the end of this module.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

AGE_BAND = "age:"  # prefix of the evaluation's age band segments
CHANNEL = "channel:"  # prefix of the evaluation's sales channel segments


UNKNOWN_SEGMENT = "age_unknown"


def age_bucket(age_col: Column, buckets: list[int]) -> Column:
    """Bucket code of an age: i (1..len(buckets)-1) when buckets[i-1] <= age < buckets[i], else 0."""
    expr = None
    for i in range(1, len(buckets)):
        cond = (age_col >= F.lit(buckets[i - 1])) & (age_col < F.lit(buckets[i]))
        expr = F.when(cond, F.lit(i)) if expr is None else expr.when(cond, F.lit(i))
    # A null age makes every condition null, which falls through to 0 (unknown).
    return expr.otherwise(F.lit(0)).cast("int")


def segment_labels(buckets: list[int]) -> list[str]:
    """Segment label of every age bucket code, indexed by code: ['age_unknown', 'age_0_24', ...]."""
    return [UNKNOWN_SEGMENT] + [f"age_{lo}_{hi - 1}" for lo, hi in zip(buckets, buckets[1:])]


def age_segment(age_bucket_col: Column, buckets: list[int]) -> Column:
    """Label of an age bucket code: 'age_<lo>_<hi-1>' for codes 1..n, 'age_unknown' for 0 (or any other)."""
    labels = segment_labels(buckets)
    expr = None
    for code in range(1, len(labels)):
        cond = age_bucket_col == F.lit(code)
        expr = F.when(cond, F.lit(labels[code])) if expr is None else expr.when(cond, F.lit(labels[code]))
    return expr.otherwise(F.lit(UNKNOWN_SEGMENT))


def customer_segments(customers: DataFrame, customer_index: DataFrame, age_buckets: list[int]) -> DataFrame:
    """customer_idx and the age segment label of every customer in ``customers``."""
    return (
        customers.dropDuplicates(["customer_id"])
        .join(customer_index.select("customer_id", "customer_idx"), "customer_id")
        .select("customer_idx", age_segment(age_bucket(F.col("age"), age_buckets), age_buckets).alias("segment"))
    )


def age_labels(ages: pd.Series, buckets: list[int]) -> pd.Series:
    """The segment label of each age of a pandas Series (NaN and out-of-range ages: 'age_unknown')."""
    labels = np.array(segment_labels(buckets), dtype=object)
    values = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=float)
    code = np.searchsorted(np.asarray(buckets, dtype=float), values, side="right")
    inside = np.isfinite(values) & (code >= 1) & (code < len(buckets))
    return pd.Series(np.where(inside, labels[np.where(inside, code, 0)], UNKNOWN_SEGMENT), index=ages.index, dtype=object)


def age_bands(buckets: list[int]) -> list[str]:
    """The evaluation's age band segment names, in band order, then the unknown one:
    ['age:0-24', 'age:25-34', ..., 'age:unknown']."""
    return [f"{AGE_BAND}{lo}-{hi - 1}" for lo, hi in zip(buckets, buckets[1:])] + [f"{AGE_BAND}unknown"]


def age_band(ages: pd.Series, buckets: list[int]) -> pd.Series:
    """The age band segment name of each age (as :func:`age_labels` buckets it; a missing or out-of-range
    age: 'age:unknown')."""
    names = dict(zip(segment_labels(buckets)[1:], age_bands(buckets)))
    return age_labels(ages, buckets).map(lambda label: names.get(label, f"{AGE_BAND}unknown")).astype(object)


# ---- sales channel: where most of a customer's purchases were made ---------------------------

# sales_channel_id as the H&M data codes it (ingest rejects any other value)
CHANNELS = {1: "store", 2: "online"}
NO_CHANNEL = "none"  # no purchase, or as many in store as online


def channel_names() -> list[str]:
    """The evaluation's sales channel segment names, in report order: store, online, none."""
    return [f"{CHANNEL}{name}" for name in (*CHANNELS.values(), NO_CHANNEL)]


def main_channel(purchases: DataFrame) -> DataFrame:
    """(customer_id, channel): the sales channel of most of each customer's rows of ``purchases``
    (``customer_id``, ``sales_channel_id``), as a segment name: 'channel:store' (1), 'channel:online' (2),
    'channel:none' on a tie. Customers without a row are absent: they are 'channel:none' too."""
    counts = purchases.groupBy("customer_id").agg(
        *[F.sum(F.when(F.col("sales_channel_id") == code, 1).otherwise(0)).alias(name)
          for code, name in CHANNELS.items()])
    store, online = (F.col(name) for name in CHANNELS.values())
    return counts.select(
        "customer_id",
        F.when(store > online, F.lit(f"{CHANNEL}store")).when(online > store, F.lit(f"{CHANNEL}online"))
        .otherwise(F.lit(f"{CHANNEL}{NO_CHANNEL}")).alias("channel"))


# ---- history groups: cold, lapsed, active ------------------------------------------------------

# By a customer's purchases before the cutoff: none (cold), the last one more
# than ``evaluate.lapsed_days`` before it (lapsed), or a recent one (active).
# Scoring chooses each group's list on the validation week; evaluation reports by them.
HISTORY_GROUPS = ("cold", "lapsed", "active")
COLD, LAPSED, ACTIVE = 0, 1, 2


def history_masks(group: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """("all", every row), then (name, its rows) of each history group present in ``group`` (B,) codes of
    :data:`HISTORY_GROUPS`: the groups figures and intervals are reported for."""
    group = np.asarray(group)
    masks = [("all", np.ones(len(group), dtype=bool))]
    return masks + [(name, group == g) for g, name in enumerate(HISTORY_GROUPS) if (group == g).any()]


def history_groups(n_purchases: np.ndarray, days_since_last: np.ndarray, lapsed_days: int) -> np.ndarray:
    """(B,) group codes (COLD, LAPSED, ACTIVE) from purchase counts and days since the last purchase."""
    n = np.asarray(n_purchases, dtype=np.float64)
    days = np.asarray(days_since_last, dtype=np.float64)
    return np.where(~(n > 0), COLD, np.where(days > lapsed_days, LAPSED, ACTIVE)).astype(np.int64)


def days_since_last(days_since_last_log: np.ndarray) -> np.ndarray:
    """Whole days since the last purchase from ``tables.USER_FEATURES``' days_since_last_log (log1p of the days)."""
    return np.rint(np.expm1(np.asarray(days_since_last_log, dtype=np.float64)))
