"""The baseline methods' lists and the customer segments the evaluation reports by.

Baselines, each a ranked list per holdout customer:

- ``popularity``: the global popularity list (``tables.POPULARITY``, 'global');
- ``popularity_segment``: the list of the customer's age segment, then the
  global one (:func:`hmrec.serve.blend.segment_fallbacks`, the fallback the
  scoring job serves);
- ``repurchase``: the customer's distinct purchases before the as-of date, most
  recent first (ties: bought more often), then the global popularity list.

Customers are split by their history in ``tables.TRAIN``: ``cold`` (no
purchase before the as-of date), ``lapsed`` (last purchase more than
``evaluate.lapsed_days`` before it) and ``active`` (the rest); ``all`` is
everyone evaluated.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from hmrec.etl.popularity import GLOBAL
from hmrec.etl.segments import HISTORY_GROUPS, history_groups
from hmrec.serve.blend import fill_list, segment_fallbacks

BASELINES = ["popularity", "popularity_segment", "repurchase"]
SEGMENTS = list(HISTORY_GROUPS)
ALL = "all"


def customer_segments(last_purchase: pd.Series, as_of: dt.date, lapsed_days: int) -> pd.Series:
    """'cold' (no purchase before as_of), 'lapsed' (last one more than ``lapsed_days`` earlier) or 'active'."""
    last = pd.to_datetime(last_purchase)
    gap = (pd.Timestamp(as_of) - last).dt.days
    codes = history_groups(np.where(last.isna(), 0, 1), gap.to_numpy(dtype=np.float64, na_value=np.nan), lapsed_days)
    return pd.Series(np.array(HISTORY_GROUPS, dtype=object)[codes], index=last_purchase.index, dtype=object)


def baseline_lists(frame: pd.DataFrame, popularity: dict[str, list[str]], length: int) -> pd.DataFrame:
    """Add the baseline methods' lists to ``frame`` (columns ``age_segment``, ``history``).

    ``popularity`` maps each segment to its article_ids by rank; every list is
    at most ``length`` long. A customer whose age segment has no list gets the
    global one.
    """
    glob = popularity.get(GLOBAL, [])
    out = frame.copy()
    top = glob[:length]
    out["popularity"] = [top] * len(out)
    by_seg = segment_fallbacks(popularity, length)
    out["popularity_segment"] = [by_seg.get(s, top) for s in out["age_segment"]]
    out["repurchase"] = [fill_list(h, glob, length) for h in out["history"]]
    return out
