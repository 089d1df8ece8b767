"""The blend of one batch of customers, as array operations: model candidates, recent purchases, popular fill.

Array operations on numpy and pandas, one row per customer and -1 for an
empty slot; the scoring job (:mod:`hmrec.serve.score`) runs them in Spark's
Python workers.
The popularity fallback rule (a segment's list, then the global list, then
filler, distinct) is :func:`segment_fallbacks`, which the scoring job and the
evaluation's baselines both use.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from hmrec.errors import HmrecError
from hmrec.etl.popularity import GLOBAL
from hmrec.lake import tables

# Source codes of a blended item, and their names in the ``source`` column.
SOURCES = np.array(["model", "repurchase", "popular"], dtype=object)
MODEL, REPURCHASE, POPULAR = 0, 1, 2

H = TypeVar("H", bound=Hashable)

# ---- ragged lists as padded matrices --------------------------------------------------


def pad_lists(values: Sequence[Any], width: int | None = None) -> np.ndarray:
    """Ragged lists of ints (None = empty) as a (B, width) int64 matrix padded with -1.

    ``width`` None: as wide as the longest list.
    """
    n = len(values)
    lengths = np.fromiter((0 if v is None else len(v) for v in values), dtype=np.int64, count=n)
    if width is None:
        width = int(lengths.max()) if n else 0
    out = np.full((n, max(width, 0)), -1, dtype=np.int64)
    if n == 0 or width <= 0:
        return out
    total = int(lengths.sum())
    if total == 0:
        return out
    flat = np.concatenate([np.asarray(v, dtype=np.int64) for v in values if v is not None and len(v)])
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = cols < width
    out[rows[keep], cols[keep]] = flat[keep]
    return out


def rows_isin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, X) bool: a[i, j] occurs in row i of b; -1 never matches."""
    if a.shape[1] == 0 or b.shape[1] == 0:
        return np.zeros(a.shape, dtype=bool)
    return (a[:, :, None] == b[:, None, :]).any(axis=2) & (a >= 0)


def drop_repeats(a: np.ndarray) -> np.ndarray:
    """Copy of ``a`` with every later repeat within a row set to -1."""
    if a.shape[1] < 2:
        return a.copy()
    same = a[:, :, None] == a[:, None, :]  # (B, X, X): same[i, j, l] = a[i, j] == a[i, l]
    earlier = np.tril(np.ones((a.shape[1], a.shape[1]), dtype=bool), k=-1)  # l < j
    repeat = (same & earlier).any(axis=2)
    return np.where(repeat, -1, a)


def compact_left(a: np.ndarray, keep: np.ndarray, width: int, *more: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kept entries of each row moved to the front in their order, cut to ``width``; the rest -1 (0 for ``more``)."""
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
    kept = np.take_along_axis(keep, order, axis=1)
    out = [np.where(kept, np.take_along_axis(a, order, axis=1), -1)]
    out += [np.where(kept, np.take_along_axis(m, order, axis=1), 0) for m in more]
    if out[0].shape[1] < width:
        pad = width - out[0].shape[1]
        out = [np.pad(o, ((0, 0), (0, pad)), constant_values=-1 if i == 0 else 0) for i, o in enumerate(out)]
    return tuple(out)


# ---- the blend ----------------------------------------------------------------------------


def blend_batch(
    cand_idx: np.ndarray,
    cand_score: np.ndarray,
    rep_idx: np.ndarray,
    rep_score: np.ndarray,
    fill_idx: np.ndarray,
    fill_score: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    repurchase_first: bool | np.ndarray = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's final K items: (article_idx (B, K), score (B, K), source code (B, K)).

    ``cand_*`` are model candidates best first (-1 = none), ``rep_*`` the
    reserved recent purchases (distinct, at most K), ``fill_*`` the row's
    popularity list (distinct, long enough to fill K after removing what was
    chosen). Model candidates equal to a repurchase or in ``exclude`` are
    dropped; the reserved purchases and the best remaining candidates, K in
    all, are sorted by score; popular items fill what is left in list order.
    With ``repurchase_first`` the reserved purchases lead instead, in their
    given order (most recent first), and the candidates follow by score; it
    may be one flag for the batch or one per row (B,).
    """
    b = cand_idx.shape[0]
    rep_ok = rep_idx >= 0
    cand_ok = (cand_idx >= 0) & ~rows_isin(cand_idx, rep_idx)
    if exclude is not None:
        cand_ok &= ~rows_isin(cand_idx, exclude)
    quota = k - rep_ok.sum(axis=1)  # (B,)
    cand_ok &= np.cumsum(cand_ok, axis=1) <= quota[:, None]

    idx = np.concatenate([rep_idx, cand_idx], axis=1)
    score = np.concatenate([rep_score, cand_score], axis=1).astype(np.float64)
    src = np.concatenate([np.full(rep_idx.shape, REPURCHASE), np.full(cand_idx.shape, MODEL)], axis=1)
    ok = np.concatenate([rep_ok, cand_ok], axis=1)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        score = np.pad(score, ((0, 0), (0, pad)))
        src = np.pad(src, ((0, 0), (0, pad)), constant_values=MODEL)
        ok = np.pad(ok, ((0, 0), (0, pad)), constant_values=False)
    key = np.where(ok, -score, np.inf)
    first = np.broadcast_to(np.asarray(repurchase_first, dtype=bool), (b,))
    if first.any():
        # -inf for every kept repurchase of those rows: the stable sort keeps them first, in their given order
        r = rep_idx.shape[1]
        key[:, :r] = np.where(rep_ok & first[:, None], -np.inf, key[:, :r])
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    sel_idx = np.take_along_axis(idx, order, axis=1)
    sel_score = np.take_along_axis(score, order, axis=1)
    sel_src = np.take_along_axis(src, order, axis=1)
    sel_ok = np.take_along_axis(ok, order, axis=1)
    n_sel = sel_ok.sum(axis=1)  # kept items sit first: the sort put every dropped one last

    fill_ok = (fill_idx >= 0) & ~rows_isin(fill_idx, np.where(sel_ok, sel_idx, -1))
    f_idx, f_score = compact_left(fill_idx, fill_ok, k, fill_score.astype(np.float64))

    col = np.arange(k)[None, :]
    from_fill = col >= n_sel[:, None]
    fcol = np.clip(col - n_sel[:, None], 0, k - 1)
    rows = np.arange(b)[:, None]
    out_idx = np.where(from_fill, f_idx[rows, fcol], sel_idx)
    out_score = np.where(from_fill, f_score[rows, fcol], sel_score)
    out_src = np.where(from_fill, POPULAR, sel_src)
    return out_idx, out_score, out_src


# ---- popularity fallback ----------------------------------------------------------------


def fill_list(head: Sequence[H] | None, fallback: Sequence[H], n: int) -> list[H]:
    """``head`` then ``fallback``, distinct, first ``n`` (``head`` None counts as empty)."""
    out: list[H] = []
    seen: set[H] = set()
    for item in list(head if head is not None else []) + list(fallback):
        if item not in seen:
            seen.add(item)
            out.append(item)
            if len(out) == n:
                break
    return out


def segment_fallbacks(popularity: Mapping[str, Sequence[H]], n: int, filler: Sequence[H] = ()) -> dict[str, list[H]]:
    """Every segment's fallback list: its popularity list, then the global one, then ``filler``; distinct, first ``n``.

    ``popularity`` maps segment names (``GLOBAL`` among them) to their ranked
    lists; a missing global list counts as empty. Keys keep their order.
    """
    rest = [*popularity.get(GLOBAL, ()), *filler]
    return {seg: fill_list(items, rest, n) for seg, items in popularity.items()}


def fill_lists(popularity: pd.DataFrame, catalogue_idx: np.ndarray, k: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-segment fallback lists: (segment names, article_idx (S, T), score (S, T)); row 0 is 'global'.

    A segment's list is :func:`segment_fallbacks` of the popularity rankings
    (rows of ``tables.POPULARITY``) restricted to the catalogue, with the rest
    of the catalogue in article_idx order as filler, T = min(2K, catalogue
    size) long: with at most K items already chosen, at least K - chosen remain
    to fill with. An item's score is that of its first listing (0 for filler).
    """
    catalogue_idx = np.unique(np.asarray(catalogue_idx, dtype=np.int64))
    if len(catalogue_idx) < k:
        raise HmrecError(
            f"the catalogue has {len(catalogue_idx)} articles, fewer than score.k={k}: "
            f"lower score.k or index more articles ({tables.ITEM_EMBEDDINGS})"
        )
    width = min(2 * k, len(catalogue_idx))
    pop = popularity[popularity["article_idx"].isin(catalogue_idx)].sort_values(["segment", "rank"], kind="stable")
    by_segment = {seg: grp for seg, grp in pop.groupby("segment", sort=True)}
    if GLOBAL not in by_segment:
        raise HmrecError(
            f"{tables.POPULARITY} has no '{GLOBAL}' list (of articles in the catalogue) for this as-of; "
            "run `hmrec popularity` for it"
        )
    names = [GLOBAL] + [s for s in by_segment if s != GLOBAL]
    rest = catalogue_idx[: width * 3]  # enough filler even if every one of them is already listed
    ranked = {name: by_segment[name]["article_idx"].to_numpy(np.int64) for name in names}
    lists = segment_fallbacks(ranked, width, filler=rest)
    glob = by_segment[GLOBAL]
    idx = np.full((len(names), width), -1, dtype=np.int64)
    score = np.zeros((len(names), width), dtype=np.float64)
    for i, name in enumerate(names):
        grp = by_segment[name]
        first: dict[int, float] = {}
        for part in (grp, glob):
            for item, s in zip(part["article_idx"].to_numpy(np.int64), part["score"].to_numpy(np.float64)):
                first.setdefault(int(item), float(s))
        chosen = lists[name]
        idx[i, : len(chosen)] = chosen
        score[i, : len(chosen)] = [first.get(int(item), 0.0) for item in chosen]
    return names, idx, score
