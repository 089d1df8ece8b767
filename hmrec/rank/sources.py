"""Candidate sources and ranking features of one batch of customers, as pandas transforms.

Everything here works on "long" frames, one row per (customer_idx,
article_idx), and reads only what it is given: a batch of customers, their
purchases before the cutoff (:func:`history_frame`, which drops anything on
or after it) and the item lookups of :class:`ItemTable`, all computed from
data before the cutoff. The candidates stage (:mod:`hmrec.rank.candidates`)
runs them in Spark's Python workers, one batch of customers at a time.

Sources, each a frame (customer_idx, article_idx, score, rank) with rank 1 the
source's best:

- ``retrieval``: the two-tower model's FAISS neighbours (inner product);
- ``repurchase``: the customer's own purchases, by a count decayed with a
  two-week half-life;
- ``colour``: other articles of the same ``product_code`` as a purchase
  (another colour or size of it), by the purchase's score times the
  variant's recent sales;
- ``popular``: the customer's age segment's popularity list (then the global one);
- ``trending``: the articles whose last week sold most above the three weeks
  before it, with time decay (one list for everyone).

:func:`union_sources` joins them into one row per candidate with every
source's ``<source>_score`` and ``<source>_rank`` (NaN where the source did
not propose it); :func:`add_features` adds the ranker's features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from hmrec.errors import HmrecError
from hmrec.lake import schemas

SOURCES = tuple(schemas.CANDIDATE_SOURCES)
# The name each source goes by in the served table's ``source`` column.
SERVED_NAME = {"retrieval": "model", "repurchase": "repurchase", "colour": "colour", "popular": "popular",
               "trending": "trending"}
HALF_LIFE_DAYS = 14.0  # of the repurchase score's decayed count

ITEM_COLUMNS = ("product_code", "product_type", "colour", "index_group", "sales_1d", "sales_7d", "sales_28d",
                "trend", "trending_score", "price_mean", "price_std", "buyer_age_mean", "days_since_first_sale")
USER_FEATURES = ("user_n_purchases", "user_days_since_last", "user_mean_price", "user_age")
PAIR_FEATURES = ("times_bought", "days_since_bought", "same_product_bought", "share_product_type", "share_colour",
                 "share_index_group", "price_vs_user", "n_sources", "age_vs_item_buyers")
ITEM_FEATURES = ("item_sales_1d", "item_sales_7d", "item_sales_28d", "item_trend", "item_price_mean",
                 "item_price_std", "item_buyer_age_mean", "item_days_since_first_sale")
SOURCE_COLUMNS = tuple(f"{s}_{c}" for s in SOURCES for c in ("score", "rank"))
# Every feature the ranker reads, in its column order (the columns of tables.CANDIDATES after the keys).
FEATURES = SOURCE_COLUMNS + PAIR_FEATURES + ITEM_FEATURES + USER_FEATURES
assert list(FEATURES) == schemas.CANDIDATE_FEATURES, "hmrec.lake.schemas.CANDIDATE_FEATURES is out of step"
# The features added after the first candidates tables were written. Rows written before them (an older
# gold/candidates partition, read after Delta's schema evolution added the columns) hold them as null; a
# booster trained before them reads only FIRST_FEATURES. A row written since has item_price_std wherever
# it has item_price_mean (both come from the article's sales before the cutoff), which tells the two apart.
ADDED_FEATURES = ("item_price_std", "item_buyer_age_mean", "age_vs_item_buyers")
FIRST_FEATURES = tuple(c for c in FEATURES if c not in ADDED_FEATURES)


@dataclass
class ItemTable:
    """Per-article lookups at a cutoff, each array indexed by article_idx (NaN / -1 for unknown articles)."""

    columns: dict[str, np.ndarray]  # ITEM_COLUMNS -> (max article_idx + 1,)
    variants: pd.DataFrame  # (product_code, article_idx, variant_sales): the articles of each product_code

    def get(self, name: str, idx: np.ndarray) -> np.ndarray:
        arr = self.columns[name]
        idx = np.asarray(idx, dtype=np.int64)
        inside = (idx >= 0) & (idx < len(arr))
        out = np.full(idx.shape, np.nan if arr.dtype.kind == "f" else -1, dtype=arr.dtype)
        out[inside] = arr[idx[inside]]
        return out


def item_table(stats: pd.DataFrame) -> ItemTable:
    """An :class:`ItemTable` from one row per article (article_idx and :data:`ITEM_COLUMNS`)."""
    missing = [c for c in ("article_idx", *ITEM_COLUMNS) if c not in stats.columns]
    if missing:
        raise HmrecError(f"item statistics lack columns {missing}: rebuild them with `hmrec candidates`")
    idx = stats["article_idx"].to_numpy(np.int64)
    size = int(idx.max()) + 1 if len(idx) else 0
    cols: dict[str, np.ndarray] = {}
    for c in ITEM_COLUMNS:
        integer = c in ("product_code", "product_type", "colour", "index_group")
        arr = np.full(size, -1 if integer else np.nan, dtype=np.int64 if integer else np.float64)
        arr[idx] = stats[c].fillna(-1 if integer else np.nan).to_numpy(np.int64 if integer else np.float64)
        cols[c] = arr
    variants = pd.DataFrame({"product_code": cols["product_code"][idx], "article_idx": idx,
                             "variant_sales": np.nan_to_num(cols["sales_28d"][idx])})
    variants = variants[variants["product_code"] >= 0]
    return ItemTable(cols, variants)


# ---- the customers' purchases ----------------------------------------------------------


def history_frame(users: pd.DataFrame) -> pd.DataFrame:
    """(customer_idx, article_idx, days, price): one row per purchase in the users' ``hist_*`` arrays.

    ``days`` counts days before the cutoff (1 = the day before it); rows at or
    after the cutoff (days < 1) are dropped, so nothing from the label period
    reaches a source or a feature.
    """
    lengths = users["hist_items"].map(lambda v: 0 if v is None else len(v)).to_numpy(np.int64)
    if lengths.sum() == 0:
        return pd.DataFrame({"customer_idx": pd.Series(dtype=np.int64), "article_idx": pd.Series(dtype=np.int64),
                             "days": pd.Series(dtype=np.int64), "price": pd.Series(dtype=np.float64)})
    keep = lengths > 0

    def flat(col: str, dtype) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=dtype) for v in users[col].to_numpy()[keep]])

    out = pd.DataFrame({
        "customer_idx": np.repeat(users["customer_idx"].to_numpy(np.int64), lengths),
        "article_idx": flat("hist_items", np.int64),
        "days": flat("hist_days", np.int64),
        "price": flat("hist_price", np.float64),
    })
    return out[out["days"] >= 1].reset_index(drop=True)


def _ranked(df: pd.DataFrame, by: list[str], ascending: list[bool], n: int) -> pd.DataFrame:
    """Each customer's first ``n`` rows in the order ``by``, with ``rank`` 1..n (ties: lower article_idx)."""
    df = df.sort_values(["customer_idx", *by, "article_idx"], ascending=[True, *ascending, True], kind="stable")
    df = df.assign(rank=df.groupby("customer_idx").cumcount() + 1)
    return df[df["rank"] <= n].reset_index(drop=True)


def _source(df: pd.DataFrame) -> pd.DataFrame:
    return df[["customer_idx", "article_idx", "score", "rank"]].astype(
        {"customer_idx": np.int64, "article_idx": np.int64, "score": np.float64, "rank": np.int64})


# ---- the sources --------------------------------------------------------------------


def repurchase_source(hist: pd.DataFrame, n: int) -> pd.DataFrame:
    """The customer's own purchases: score = sum over purchases of 0.5 ** (days / 14), best ``n``."""
    if hist.empty or n <= 0:
        return _source(pd.DataFrame(columns=["customer_idx", "article_idx", "score", "rank"]))
    w = hist.assign(score=np.power(0.5, hist["days"].to_numpy(np.float64) / HALF_LIFE_DAYS))
    per = w.groupby(["customer_idx", "article_idx"], as_index=False)["score"].sum()
    return _source(_ranked(per, ["score"], [False], n))


def colour_source(repurchase: pd.DataFrame, hist: pd.DataFrame, items: ItemTable, n: int) -> pd.DataFrame:
    """Other articles of the ``product_code`` of a repurchase candidate, never bought by the customer.

    score = the purchase's repurchase score × (1 + the variant's sales in the
    last 28 days); a variant reached from several purchases keeps its best.
    """
    if repurchase.empty or n <= 0:
        return _source(pd.DataFrame(columns=["customer_idx", "article_idx", "score", "rank"]))
    seeds = repurchase.assign(product_code=items.get("product_code", repurchase["article_idx"].to_numpy()))
    seeds = seeds[seeds["product_code"] >= 0][["customer_idx", "product_code", "score"]]
    out = seeds.merge(items.variants, on="product_code")
    out = out.assign(score=out["score"] * (1.0 + out["variant_sales"]))
    bought = hist[["customer_idx", "article_idx"]].drop_duplicates().assign(_bought=True)
    out = out.merge(bought, on=["customer_idx", "article_idx"], how="left")
    out = out[out["_bought"].isna()]
    out = out.groupby(["customer_idx", "article_idx"], as_index=False)["score"].max()
    return _source(_ranked(out, ["score"], [False], n))


def list_source(customers: pd.DataFrame, lists: dict[str, tuple[np.ndarray, np.ndarray]], key: str | None,
                n: int, default: str) -> pd.DataFrame:
    """A ranked list given to each customer: the one of its ``key`` column's value (``default``'s when it
    has none, or when ``key`` is None), its first ``n`` items with their scores."""
    if n <= 0 or customers.empty:
        return _source(pd.DataFrame(columns=["customer_idx", "article_idx", "score", "rank"]))
    if default not in lists:
        raise HmrecError(f"no {default!r} list among {sorted(lists)}: rerun `hmrec popularity`")
    labels = customers[key].to_numpy(dtype=object) if key else np.full(len(customers), default, dtype=object)
    labels = np.array([v if v in lists else default for v in labels], dtype=object)
    parts = []
    for label in pd.unique(labels):
        ids = customers["customer_idx"].to_numpy(np.int64)[labels == label]
        idx, score = lists[label]
        idx, score = idx[:n], score[:n]
        parts.append(pd.DataFrame({"customer_idx": np.repeat(ids, len(idx)), "article_idx": np.tile(idx, len(ids)),
                                   "score": np.tile(score, len(ids)),
                                   "rank": np.tile(np.arange(1, len(idx) + 1), len(ids))}))
    return _source(pd.concat(parts, ignore_index=True))


def retrieval_source(customer_idx: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    """FAISS results (B, N) (ids = article_idx, -1 = none, best first) as a source frame."""
    b, n = ids.shape
    out = pd.DataFrame({"customer_idx": np.repeat(np.asarray(customer_idx, dtype=np.int64), n),
                        "article_idx": ids.ravel().astype(np.int64), "score": scores.ravel().astype(np.float64),
                        "rank": np.tile(np.arange(1, n + 1), b)})
    out = out[out["article_idx"] >= 0]
    # a repeated id (approximate indexes) keeps its first, best, position
    out = out.drop_duplicates(["customer_idx", "article_idx"], keep="first")
    return _ranked(out, ["rank"], [True], n)


def union_sources(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (customer_idx, article_idx) any source proposed, with every source's score and rank (NaN: not proposed)."""
    wide = None
    for name in SOURCES:
        f = frames.get(name)
        if f is None:
            f = _source(pd.DataFrame(columns=["customer_idx", "article_idx", "score", "rank"]))
        f = f.rename(columns={"score": f"{name}_score", "rank": f"{name}_rank"})
        f = f.astype({f"{name}_rank": np.float64})
        wide = f if wide is None else wide.merge(f, on=["customer_idx", "article_idx"], how="outer")
    return wide.sort_values(["customer_idx", "article_idx"], kind="stable").reset_index(drop=True)


# ---- the features ---------------------------------------------------------------------


def _share(hist_attr: pd.DataFrame, cands: pd.DataFrame, attr: str, n_hist: pd.Series) -> np.ndarray:
    """Share of each candidate's customer's purchases whose ``attr`` equals the candidate's."""
    counts = hist_attr.groupby(["customer_idx", attr]).size().rename("_n").reset_index()
    m = cands[["customer_idx", attr]].merge(counts, on=["customer_idx", attr], how="left")
    denom = cands["customer_idx"].map(n_hist).to_numpy(np.float64)
    return np.where(denom > 0, m["_n"].fillna(0).to_numpy(np.float64) / np.where(denom > 0, denom, 1), 0.0)


def add_features(cands: pd.DataFrame, hist: pd.DataFrame, users: pd.DataFrame, items: ItemTable) -> pd.DataFrame:
    """``cands`` (from :func:`union_sources`) with every feature of :data:`FEATURES`.

    ``hist`` is :func:`history_frame` of ``users`` (purchases before the
    cutoff only), ``users`` the batch's customers with ``age``.
    """
    out = cands.copy()
    a = out["article_idx"].to_numpy(np.int64)
    for name in ("product_code", "product_type", "colour", "index_group"):
        out[name] = items.get(name, a)
    # user x item: this article
    pair = hist.groupby(["customer_idx", "article_idx"]).agg(times_bought=("days", "size"),
                                                             days_since_bought=("days", "min")).reset_index()
    out = out.merge(pair, on=["customer_idx", "article_idx"], how="left")
    out["times_bought"] = out["times_bought"].fillna(0).astype(np.float64)
    out["days_since_bought"] = out["days_since_bought"].astype(np.float64)
    # user x item: the article's product, type, colour and index group among the customer's purchases
    h = hist.assign(**{name: items.get(name, hist["article_idx"].to_numpy(np.int64))
                       for name in ("product_code", "product_type", "colour", "index_group")})
    n_hist = h.groupby("customer_idx").size()
    same = h.groupby(["customer_idx", "product_code"]).size().rename("same_product_bought").reset_index()
    out = out.merge(same, on=["customer_idx", "product_code"], how="left")
    out["same_product_bought"] = out["same_product_bought"].fillna(0).astype(np.float64)
    out["share_product_type"] = _share(h, out, "product_type", n_hist)
    out["share_colour"] = _share(h, out, "colour", n_hist)
    out["share_index_group"] = _share(h, out, "index_group", n_hist)
    # user
    per_user = h.groupby("customer_idx").agg(user_n_purchases=("days", "size"), user_days_since_last=("days", "min"),
                                             user_mean_price=("price", "mean"))
    ages = users.set_index("customer_idx")["age"] if "age" in users.columns else pd.Series(dtype=np.float64)
    cust = out["customer_idx"]
    out["user_n_purchases"] = cust.map(per_user["user_n_purchases"]).fillna(0).to_numpy(np.float64)
    out["user_days_since_last"] = cust.map(per_user["user_days_since_last"]).to_numpy(np.float64)
    out["user_mean_price"] = cust.map(per_user["user_mean_price"]).to_numpy(np.float64)
    out["user_age"] = pd.to_numeric(cust.map(ages), errors="coerce").to_numpy(np.float64)
    # item
    for name in ("sales_1d", "sales_7d", "sales_28d", "trend", "price_mean", "price_std", "buyer_age_mean",
                 "days_since_first_sale"):
        out[f"item_{name}"] = items.get(name, a)
    out["price_vs_user"] = out["item_price_mean"] / out["user_mean_price"]
    # NaN when the customer's age or every buyer's age is unknown
    out["age_vs_item_buyers"] = out["user_age"] - out["item_buyer_age_mean"]
    out["n_sources"] = out[[f"{s}_rank" for s in SOURCES]].notna().sum(axis=1).astype(np.float64)
    for c in FEATURES:
        out[c] = out[c].astype(np.float64)
    return out.drop(columns=["product_code", "product_type", "colour", "index_group"])


def missing_features(frame: pd.DataFrame, features: Sequence[str]) -> list[str]:
    """The columns of ``features`` that the candidate rows ``frame`` cannot give: absent columns, and the
    :data:`ADDED_FEATURES` among ``features`` when some row was written before they existed."""
    absent = [c for c in features if c not in frame.columns]
    added = [c for c in ADDED_FEATURES if c in features and c not in absent]
    if added and {"item_price_mean", "item_price_std"} <= set(frame.columns):
        if (frame["item_price_mean"].notna() & frame["item_price_std"].isna()).any():
            absent += added
    return absent


def primary_source(frame: pd.DataFrame) -> np.ndarray:
    """The served name of the source that proposed each candidate: the first of :data:`SOURCES` that did."""
    out = np.full(len(frame), "", dtype=object)
    for name in reversed(SOURCES):
        out = np.where(frame[f"{name}_rank"].notna().to_numpy(), SERVED_NAME[name], out)
    return out
