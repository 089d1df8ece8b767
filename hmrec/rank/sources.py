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
  before it, with time decay (one list for everyone);
- ``copurchase``: the articles bought by the same customers as a purchase, in
  the weeks before the cutoff (item-to-item), by the purchase's score times the
  share of its buyers who bought them.

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
               "trending": "trending", "copurchase": "copurchase"}
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
# The co-purchase source came later still: the commits that wrote rows before it record their features
# (hmrec.rank.candidates.written_features), which lack its columns.
LATER_SOURCE_COLUMNS = ("copurchase_score", "copurchase_rank")
FIRST_FEATURES = tuple(c for c in FEATURES if c not in ADDED_FEATURES and c not in LATER_SOURCE_COLUMNS)


@dataclass
class ItemTable:
    """Per-article lookups at a cutoff, each array indexed by article_idx (NaN / -1 for unknown articles)."""

    columns: dict[str, np.ndarray]  # ITEM_COLUMNS -> (max article_idx + 1,)
    variants: "Related"  # product_code -> its articles, weight 1 + the article's sales in the last 28 days

    def get(self, name: str, idx: np.ndarray) -> np.ndarray:
        arr = self.columns[name]
        idx = np.asarray(idx, dtype=np.int64)
        inside = (idx >= 0) & (idx < len(arr))
        if inside.all():
            return arr[idx]
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
    code = cols["product_code"][idx]
    known = code >= 0
    variants = Related.of(code[known], idx[known], 1.0 + np.nan_to_num(cols["sales_28d"][idx][known]))
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


# ---- pair keys: the per-customer joins as sorts and binary searches ---------------------------------

_LOW = np.int64(2**31)  # shifts a signed 32-bit value into the key's unsigned low half
_LOW_MASK = np.int64(2**32 - 1)


def _pair_keys(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """One int64 key per pair (left, right) of 32-bit integers (customer_idx with article_idx or with an
    article's attribute, -1 included), in the pairs' order: sorting the keys sorts by left, then right."""
    left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    for v in (left, right):
        if len(v) and (v.min() < -_LOW or v.max() >= _LOW):
            raise HmrecError(f"an index or article attribute beyond 32 bits ({v.min()}..{v.max()})")
    return (left << 32) | (right + _LOW)


def _split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (left, right) int64 arrays that :func:`_pair_keys` made ``keys`` from."""
    return keys >> 32, (keys & _LOW_MASK) - _LOW


def _find(keys: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of ``keys`` is in ``table`` (sorted, unique): its position there, and whether it is there."""
    if not len(table):
        return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return pos, table[pos] == keys


def _take(values: np.ndarray, where: tuple[np.ndarray, np.ndarray], missing: float = np.nan) -> np.ndarray:
    """``values`` (as float64) at the positions :func:`_find` found, ``missing`` for the keys it did not."""
    pos, found = where
    out = np.full(len(pos), missing, dtype=np.float64)
    out[found] = values[pos[found]]
    return out


def _run_positions(sorted_keys: np.ndarray) -> np.ndarray:
    """Each element's position (0, 1, ...) in its run of equal values of ``sorted_keys``."""
    idx = np.arange(len(sorted_keys))
    starts = np.ones(len(sorted_keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


# ---- the sources --------------------------------------------------------------------


def repurchase_source(hist: pd.DataFrame, n: int) -> pd.DataFrame:
    """The customer's own purchases: score = sum over purchases of 0.5 ** (days / 14), best ``n``."""
    if hist.empty or n <= 0:
        return _empty_source()
    w = hist.assign(score=np.power(0.5, hist["days"].to_numpy(np.float64) / HALF_LIFE_DAYS))
    per = w.groupby(["customer_idx", "article_idx"], as_index=False)["score"].sum()
    return _source(_ranked(per, ["score"], [False], n))


@dataclass
class Related:
    """Articles related to a key (a ``product_code``, an ``article_idx``), with a weight each, as runs of
    equal keys: ``keys`` sorted, ``article_idx`` and ``weight`` in the same order."""

    keys: np.ndarray
    article_idx: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(cls, keys, article_idx, weight) -> "Related":
        keys = np.asarray(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], np.asarray(article_idx, dtype=np.int64)[order],
                   np.asarray(weight, dtype=np.float64)[order])

    @classmethod
    def empty(cls) -> "Related":
        return cls.of(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))

    def __len__(self) -> int:
        return len(self.keys)


def _empty_source() -> pd.DataFrame:
    return _source(pd.DataFrame(columns=["customer_idx", "article_idx", "score", "rank"]))


def _expand(seeds: pd.DataFrame, seed_keys: np.ndarray, related: Related, hist: pd.DataFrame, n: int) -> pd.DataFrame:
    """The articles ``related`` to each seed (a row of ``seeds``: customer_idx, score) through its key in
    ``seed_keys`` (-1: none), never bought by the customer (in ``hist``), as a source frame.

    score = the seed's score x the related article's weight; an article reached from several seeds keeps
    its best; each customer's best ``n``, ties to the lower article_idx.
    """
    known = np.asarray(seed_keys, dtype=np.int64) >= 0
    seed_customer = seeds["customer_idx"].to_numpy(np.int64)[known]
    seed_score = seeds["score"].to_numpy(np.float64)[known]
    seed_keys = np.asarray(seed_keys, dtype=np.int64)[known]
    # each seed's related articles: the run of its key
    first = np.searchsorted(related.keys, seed_keys, side="left")
    count = np.searchsorted(related.keys, seed_keys, side="right") - first
    seed = np.repeat(np.arange(len(seed_keys)), count)
    at = np.repeat(first, count) + _run_positions(seed)
    customer = seed_customer[seed]
    article = related.article_idx[at]
    score = seed_score[seed] * related.weight[at]
    bought = np.unique(_pair_keys(hist["customer_idx"].to_numpy(), hist["article_idx"].to_numpy()))
    key = _pair_keys(customer, article)
    fresh = ~np.isin(key, bought)
    key, score = key[fresh], score[fresh]
    # an article reached from several seeds keeps its best score: the first of its rows by score
    order = np.lexsort((-score, key))
    best = order[_run_positions(key[order]) == 0]
    customer, article = _split_keys(key[best])
    score = score[best]
    # each customer's articles by score, best first (ties: lower article_idx), as _ranked orders them
    order = np.lexsort((article, -score, customer))
    customer, article, score = customer[order], article[order], score[order]
    rank = _run_positions(customer) + 1
    keep = rank <= n
    return pd.DataFrame({"customer_idx": customer[keep], "article_idx": article[keep], "score": score[keep],
                         "rank": rank[keep]})


def colour_source(repurchase: pd.DataFrame, hist: pd.DataFrame, items: ItemTable, n: int) -> pd.DataFrame:
    """Other articles of the ``product_code`` of a repurchase candidate, never bought by the customer.

    score = the purchase's repurchase score × (1 + the variant's sales in the
    last 28 days); a variant reached from several purchases keeps its best.
    """
    if repurchase.empty or n <= 0:
        return _empty_source()
    return _expand(repurchase, items.get("product_code", repurchase["article_idx"].to_numpy()), items.variants,
                   hist, n)


def copurchase_source(repurchase: pd.DataFrame, hist: pd.DataFrame, pairs: Related, n: int) -> pd.DataFrame:
    """The articles bought with a repurchase candidate by the same customers (``pairs``, from
    :func:`hmrec.rank.candidates.copurchase_pairs`: article_idx -> the articles its buyers also bought,
    weight = the share of its buyers who did), never bought by the customer.

    score = the purchase's repurchase score × that share; an article reached from several purchases keeps
    its best.
    """
    if repurchase.empty or n <= 0 or not len(pairs):
        return _empty_source()
    return _expand(repurchase, repurchase["article_idx"].to_numpy(np.int64), pairs, hist, n)


def list_source(customers: pd.DataFrame, lists: dict[str, tuple[np.ndarray, np.ndarray]], key: str | None,
                n: int, default: str) -> pd.DataFrame:
    """A ranked list given to each customer: the one of its ``key`` column's value (``default``'s when it
    has none, or when ``key`` is None), its first ``n`` items with their scores."""
    if n <= 0 or customers.empty:
        return _empty_source()
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
    """One row per (customer_idx, article_idx) any source proposed, with every source's score and rank (NaN: not proposed).

    The rows come sorted by (customer_idx, article_idx). A pair that one source gives more than once
    keeps that source's best (lowest) rank.
    """
    keys = {name: _pair_keys(frames[name]["customer_idx"].to_numpy(), frames[name]["article_idx"].to_numpy())
            for name in SOURCES if frames.get(name) is not None}
    union, inverse = np.unique(np.concatenate([np.zeros(0, dtype=np.int64), *keys.values()]), return_inverse=True)
    customer, article = _split_keys(union)
    out = {"customer_idx": customer, "article_idx": article}
    # the union's row of every row of each source: its stretch of the concatenated keys' inverse
    ends = np.cumsum([len(k) for k in keys.values()], dtype=np.int64)
    rows = {name: inverse.ravel()[end - len(k):end] for (name, k), end in zip(keys.items(), ends)}
    for name in SOURCES:
        score, rank = np.full(len(union), np.nan), np.full(len(union), np.nan)
        if name in rows:
            at = rows[name]
            given_score = frames[name]["score"].to_numpy(np.float64)
            given_rank = frames[name]["rank"].to_numpy(np.float64)
            if len(at) and np.bincount(at).max() > 1:
                first = np.lexsort((given_rank, at))
                first = first[_run_positions(at[first]) == 0]
                at, given_score, given_rank = at[first], given_score[first], given_rank[first]
            score[at], rank[at] = given_score, given_rank
        out[f"{name}_score"], out[f"{name}_rank"] = score, rank
    return pd.DataFrame(out)


# ---- the features ---------------------------------------------------------------------


def _counts(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted unique :func:`_pair_keys` of the pairs (left, right) and how often each occurs."""
    return np.unique(_pair_keys(left, right), return_counts=True)


def add_features(cands: pd.DataFrame, hist: pd.DataFrame, users: pd.DataFrame, items: ItemTable) -> pd.DataFrame:
    """``cands`` (from :func:`union_sources`) with every feature of :data:`FEATURES`.

    ``hist`` is :func:`history_frame` of ``users`` (purchases before the
    cutoff only), ``users`` the batch's customers with ``age``.
    """
    out = cands.reset_index(drop=True)
    c = out["customer_idx"].to_numpy(np.int64)
    a = out["article_idx"].to_numpy(np.int64)
    hc = hist["customer_idx"].to_numpy(np.int64)
    ha = hist["article_idx"].to_numpy(np.int64)
    days = hist["days"].to_numpy(np.int64)
    f: dict[str, np.ndarray] = {}
    # user x item: this article; each pair's purchases sorted by days, so its first has the least
    key = _pair_keys(hc, ha)
    order = np.lexsort((days, key))
    first = order[_run_positions(key[order]) == 0]
    pairs, times = np.unique(key, return_counts=True)  # pairs == key[first]
    pair = _find(_pair_keys(c, a), pairs)
    f["times_bought"] = _take(times, pair, 0.0)
    f["days_since_bought"] = _take(days[first], pair)
    # per customer: purchases, the latest one's days, the mean price (pandas' grouped mean: its
    # compensated sum, which a plain numpy sum does not match to the last bit)
    per_user = hist.groupby("customer_idx").agg(n=("days", "size"), least=("days", "min"), price=("price", "mean"))
    user = _find(c, per_user.index.to_numpy(np.int64))
    n_hist = _take(per_user["n"].to_numpy(), user, 0.0)
    # user x item: the article's product, type, colour and index group among the customer's purchases.
    # An attribute that is unknown (-1: an article missing from the items, or a null code in the
    # catalogue) matches nothing: two articles of unknown colour are not of one colour.
    for name, feature in (("product_code", "same_product_bought"), ("product_type", "share_product_type"),
                          ("colour", "share_colour"), ("index_group", "share_index_group")):
        known, count = _counts(hc, items.get(name, ha))
        attr = items.get(name, a)
        same = np.where(attr >= 0, _take(count, _find(_pair_keys(c, attr), known), 0.0), 0.0)
        if name == "product_code":
            f[feature] = same
        else:
            f[feature] = np.where(n_hist > 0, same / np.where(n_hist > 0, n_hist, 1), 0.0)
    # user
    f["user_n_purchases"] = n_hist
    f["user_days_since_last"] = _take(per_user["least"].to_numpy(), user)
    f["user_mean_price"] = _take(per_user["price"].to_numpy(np.float64), user)
    if "age" in users.columns:
        ids = users["customer_idx"].to_numpy(np.int64)
        by_id = np.argsort(ids, kind="stable")
        ages = pd.to_numeric(users["age"], errors="coerce").to_numpy(np.float64)
        f["user_age"] = _take(ages[by_id], _find(c, ids[by_id]))
    else:
        f["user_age"] = np.full(len(c), np.nan)
    # item
    for name in ("sales_1d", "sales_7d", "sales_28d", "trend", "price_mean", "price_std", "buyer_age_mean",
                 "days_since_first_sale"):
        f[f"item_{name}"] = items.get(name, a).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # inf or NaN, as pandas divides
        f["price_vs_user"] = f["item_price_mean"] / f["user_mean_price"]
    # NaN when the customer's age or every buyer's age is unknown
    f["age_vs_item_buyers"] = f["user_age"] - f["item_buyer_age_mean"]
    f["n_sources"] = np.sum([out[f"{s}_rank"].notna().to_numpy() for s in SOURCES], axis=0).astype(np.float64)
    # the frame built at once from its columns, without gathering them into one block (a copy of them all:
    # its rows go to Arrow a column at a time)
    columns = {col: out[col].to_numpy(np.float64) if col in SOURCE_COLUMNS else out[col].to_numpy()
               for col in out.columns}
    return pd.DataFrame({**columns, **f}, copy=False)


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
