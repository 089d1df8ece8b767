"""Offline ranking metrics, in plain Python and numpy.

Conventions, shared by every function here:

- ``actual`` is what a customer bought in the holdout week; only its distinct
  items count. Customers whose ``actual`` is empty are left out of every mean
  (Kaggle's H&M evaluation does the same).
- ``predicted`` is a ranked list; only its first ``k`` entries count, and an
  item repeated in them counts once, at its first position (later copies are
  misses), so a list cannot score by repeating a hit.
- MAP@12 is Kaggle's H&M metric: AP@k = sum over positions i ≤ k of
  P(i)·rel(i), divided by min(number of distinct actual items, k).
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def _hits(actual: Sequence[Hashable], predicted: Sequence[Hashable], k: int) -> tuple[np.ndarray, int]:
    """rel(i) for the first k predictions (repeats count 0) and the distinct actual count."""
    truth = set(actual)
    seen: set = set()
    rel = np.zeros(min(k, len(predicted)), dtype=np.float64)
    for i, p in enumerate(predicted[:k]):
        if p in truth and p not in seen:
            rel[i] = 1.0
        seen.add(p)
    return rel, len(truth)


def average_precision(actual: Sequence[Hashable], predicted: Sequence[Hashable], k: int = 12) -> float:
    """AP@k of one customer as Kaggle's H&M competition defines it (0.0 when nothing was bought)."""
    rel, n_true = _hits(actual, predicted, k)
    if n_true == 0:
        return 0.0
    precision_at_i = np.cumsum(rel) / np.arange(1, len(rel) + 1)
    return float((precision_at_i * rel).sum() / min(n_true, k))


def recall(actual: Sequence[Hashable], predicted: Sequence[Hashable], k: int) -> float:
    """Share of the distinct actual items found in the first k predictions."""
    rel, n_true = _hits(actual, predicted, k)
    return float(rel.sum() / n_true) if n_true else 0.0


def ndcg(actual: Sequence[Hashable], predicted: Sequence[Hashable], k: int) -> float:
    """Binary-relevance NDCG@k; the ideal list puts min(#actual, k) hits first."""
    rel, n_true = _hits(actual, predicted, k)
    if n_true == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((rel * discounts[: len(rel)]).sum())
    idcg = float(discounts[: min(n_true, k)].sum())
    return dcg / idcg


def hit(actual: Sequence[Hashable], predicted: Sequence[Hashable], k: int) -> float:
    """1.0 when any of the first k predictions was bought, else 0.0."""
    rel, _ = _hits(actual, predicted, k)
    return float(rel.any())


def _mean_over_buyers(fn, actuals: Sequence[Sequence[Hashable]], predictions: Sequence[Sequence[Hashable]], k: int) -> float:
    if len(actuals) != len(predictions):
        raise ValueError(f"{len(actuals)} actual lists but {len(predictions)} prediction lists")
    values = [fn(a, p, k) for a, p in zip(actuals, predictions) if len(a) > 0]
    return float(np.mean(values)) if values else 0.0


def map_at_k(actuals: Sequence[Sequence[Hashable]], predictions: Sequence[Sequence[Hashable]], k: int = 12) -> float:
    """Mean AP@k over customers who bought something (Kaggle's MAP@12 for k=12)."""
    return _mean_over_buyers(average_precision, actuals, predictions, k)


def hitrate_at_k(actuals: Sequence[Sequence[Hashable]], predictions: Sequence[Sequence[Hashable]], k: int) -> float:
    """Share of customers who bought something with at least one hit in the first k."""
    return _mean_over_buyers(hit, actuals, predictions, k)


def coverage(predictions: Sequence[Sequence[Hashable]], catalogue_size: int, k: int | None = None) -> float:
    """Distinct items in the (first k of the) lists over the catalogue size."""
    if catalogue_size <= 0:
        raise ValueError(f"catalogue size must be positive, got {catalogue_size}")
    distinct = set()
    for p in predictions:
        distinct.update(p[:k] if k is not None else p)
    return len(distinct) / catalogue_size


def recall_curve(actuals: Sequence[Sequence[Hashable]], predictions: Sequence[Sequence[Hashable]], max_k: int) -> np.ndarray:
    """Mean Recall@K for K = 1..max_k in one pass, shape (max_k,).

    A list shorter than K counts what it has, so the curve is flat past the
    longest list.
    """
    total = np.zeros(max_k, dtype=np.float64)
    n = 0
    for a, p in zip(actuals, predictions):
        rel, n_true = _hits(a, p, max_k)
        if n_true == 0:
            continue
        found = np.zeros(max_k, dtype=np.float64)
        found[: len(rel)] = np.cumsum(rel)
        if len(rel) < max_k:
            found[len(rel):] = found[len(rel) - 1] if len(rel) else 0.0
        total += found / n_true
        n += 1
    return total / n if n else total


def metric_names(k: int) -> list[str]:
    """The metric names of one method's report, in report order."""
    return [f"recall@{k}", f"ndcg@{k}", f"map@{k}", f"hitrate@{k}", "coverage"]


def all_metrics(
    actuals: Sequence[Sequence[Hashable]],
    predictions: Sequence[Sequence[Hashable]],
    k: int,
    catalogue_size: int,
) -> dict[str, float]:
    """Recall, NDCG, MAP, HitRate at k and coverage of one method on one group of customers."""
    if len(actuals) != len(predictions):
        raise ValueError(f"{len(actuals)} actual lists but {len(predictions)} prediction lists")
    r, nd, ap, h = [], [], [], []
    for a, p in zip(actuals, predictions):
        if len(a) == 0:
            continue
        r.append(recall(a, p, k))
        nd.append(ndcg(a, p, k))
        ap.append(average_precision(a, p, k))
        h.append(hit(a, p, k))
    mean = (lambda xs: float(np.mean(xs)) if xs else 0.0)
    return {
        f"recall@{k}": mean(r),
        f"ndcg@{k}": mean(nd),
        f"map@{k}": mean(ap),
        f"hitrate@{k}": mean(h),
        "coverage": coverage(predictions, catalogue_size, k),
    }


# ---- many customers at once --------------------------------------------------------------


def row_metrics(predicted: np.ndarray, actual: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """AP@k, recall@k, NDCG@k and hit@k of every row at once, with the conventions above.

    ``predicted`` (B, P) and ``actual`` (B, A) hold integer ids padded with -1
    (-1 never matches). Returns (B,) float arrays; rows with no actual item
    get 0 (leave them out of means, as :func:`map_at_k` does). The same
    values as :func:`average_precision`, :func:`recall`, :func:`ndcg` and
    :func:`hit` per row, for choices made over hundreds of thousands of
    customers.
    """
    pred = predicted[:, :k]
    b, kk = pred.shape
    truth = actual.copy()
    # distinct actual items: later repeats of an id in a row become -1
    if truth.shape[1] > 1:
        same = truth[:, :, None] == truth[:, None, :]
        truth = np.where((same & np.tril(np.ones((truth.shape[1],) * 2, dtype=bool), k=-1)).any(axis=2), -1, truth)
    n_true = (truth >= 0).sum(axis=1)  # (B,)
    rel = ((pred[:, :, None] == truth[:, None, :]) & (pred[:, :, None] >= 0)).any(axis=2)  # (B, K)
    if kk > 1:  # a repeated prediction counts once, at its first position
        earlier = (pred[:, :, None] == pred[:, None, :]) & np.tril(np.ones((kk, kk), dtype=bool), k=-1)
        rel &= ~earlier.any(axis=2)
    rel = rel.astype(np.float64)
    positions = np.arange(1, kk + 1)
    denom = np.minimum(n_true, k).astype(np.float64)
    safe = np.where(denom > 0, denom, 1.0)
    ap = np.where(n_true > 0, (np.cumsum(rel, axis=1) / positions * rel).sum(axis=1) / safe, 0.0)
    recall_ = np.where(n_true > 0, rel.sum(axis=1) / np.where(n_true > 0, n_true, 1), 0.0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    idcg = np.cumsum(discounts)[np.clip(np.minimum(n_true, k) - 1, 0, k - 1)]
    ndcg_ = np.where(n_true > 0, (rel * discounts[:kk]).sum(axis=1) / idcg, 0.0)
    return {f"map@{k}": ap, f"recall@{k}": recall_, f"ndcg@{k}": ndcg_, f"hitrate@{k}": rel.any(axis=1).astype(np.float64)}


# ---- bootstrap intervals over customers --------------------------------------------------

BOOTSTRAP_SAMPLES = 1000  # resamples of the customers behind each 95% interval
BOOTSTRAP_SEED = 0
_BOOTSTRAP_CELLS = 1 << 22  # resample counts held at once (32 MB)


def bootstrap_intervals(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                        level: float = 0.95) -> np.ndarray:
    """(M, 2) [low, high] percentile intervals of the means of the M rows of ``values`` (M, N), the N
    customers resampled with replacement, the same resamples for every row.

    Each row's interval is exactly :func:`bootstrap_interval` of that row (up to float rounding): the
    resamples are drawn from one seeded stream, in the same order, and each resample's means are its
    counts of every customer times the values.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))  # (M, N)
    m, n = values.shape
    if n == 0:
        return np.zeros((m, 2))
    rng = np.random.default_rng(seed)
    rows = max(1, min(samples, _BOOTSTRAP_CELLS // n))
    means = np.empty((m, samples))
    for start in range(0, samples, rows):
        c = min(rows, samples - start)
        draws = rng.integers(0, n, (c, n))  # (c, N) customers of c resamples
        counts = np.bincount((draws + (np.arange(c) * n)[:, None]).ravel(), minlength=c * n).reshape(c, n)
        means[:, start:start + c] = (values @ counts.T) / n  # (M, c)
    tail = (1 - level) / 2 * 100
    return np.round(np.stack([np.percentile(means, tail, axis=1), np.percentile(means, 100 - tail, axis=1)], axis=1), 6)


def bootstrap_interval(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.95) -> list[float]:
    """[low, high] percentile interval of the mean of per-customer ``values``, customers resampled with replacement."""
    low, high = bootstrap_intervals(np.asarray(values, dtype=np.float64)[None, :], samples, seed, level)[0]
    return [float(low), float(high)]


def group_intervals(values: dict[str, dict[str, np.ndarray]], groups: list[tuple[str, np.ndarray]],
                    metrics: Sequence[str]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{group: {method: {metric: [low, high]}}}: bootstrap 95% intervals over each group's customers of
    the mean of ``values`` ({method: {metric: (N,) per customer}}), ``groups`` as :func:`segment_groups`."""
    methods = list(values)
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, mask in groups:
        stacked = np.stack([values[m][metric][mask] for m in methods for metric in metrics])  # (methods x metrics, n)
        bounds = bootstrap_intervals(stacked)
        out[name] = {m: {metric: [float(x) for x in bounds[i * len(metrics) + j]] for j, metric in enumerate(metrics)}
                     for i, m in enumerate(methods)}
    return out
