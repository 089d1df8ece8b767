"""The purchase simulation: the calendar, each customer's purchase plan, and the purchases day by day.

Each customer's repeat purchases depend on what they bought before, so the
days are simulated in order; the transactions come out one calendar month at a
time (:meth:`Simulation.months`), which keeps memory bounded at full scale.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from hmrec.config import GenerateConfig
from hmrec.synth.params import Params
from hmrec.synth.vocab import DISCOUNT_PROBS, DISCOUNTS
from hmrec.synth.world import CLUSTERS, SEGMENTS, Catalogue, Customers

# ---- calendar -------------------------------------------------------------------


@dataclass(frozen=True)
class Days:
    """Calendar of the simulated period: relative daily volume and its running sum."""

    weight: np.ndarray  # (n_days,)
    cum: np.ndarray  # (n_days + 1,), cum[d] = weight of the days before d
    doy: np.ndarray  # (n_days,) day of year, 1-based


def day_weights(start: dt.date, n_days: int, p: Params) -> Days:
    """Relative volume of each of ``n_days`` days from ``start``: weekday, yearly wave, growth."""
    d = np.arange(n_days)
    weekday = (start.weekday() + d) % 7
    doy = np.array([(start + dt.timedelta(days=int(i))).timetuple().tm_yday for i in d])
    lo, hi = p.trend
    w = (np.asarray(p.weekday_weights)[weekday]
         * (1.0 + p.yearly_amplitude * np.cos(2 * np.pi * (doy - p.yearly_peak_doy) / 365.25))
         * (lo + (hi - lo) * d / max(n_days - 1, 1)))
    return Days(weight=w, cum=np.concatenate([[0.0], np.cumsum(w)]), doy=doy)


# ---- purchase plan ----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much and when each customer buys, and how likely a purchase re-buys."""

    first_day: np.ndarray  # (n,) int32, active period (inclusive)
    last_day: np.ndarray
    n_items: np.ndarray  # (n,) int64 purchases over the whole period
    p_repeat: np.ndarray  # (n,) chance a purchase re-buys a recent article


def plan_purchases(rng: np.random.Generator, cust: Customers, n_transactions: int, days: Days,
                   g: GenerateConfig, p: Params) -> Plan:
    """Split ``n_transactions`` over the customers' active periods, and draw their repeat propensity."""
    n = len(cust.segment)
    n_days = len(days.weight)

    joined = rng.random(n) < p.joined_before_share
    first_day = np.where(joined, 0, rng.integers(0, n_days - 1, n))
    life_min, life_mean = p.lifetime_days
    last_day = np.minimum(first_day + life_min + rng.exponential(life_mean, n).astype(np.int64), n_days - 1)

    buys = rng.random(n) >= g.never_buy_share
    n_buyers = int(buys.sum())
    if n_buyers > n_transactions:
        buys[np.flatnonzero(buys)[n_transactions:]] = False
        n_buyers = n_transactions
    # Clipped so that at tiny scales a single customer does not dominate the data.
    sigma = p.activity_sigma
    rate = np.exp(np.minimum(rng.normal(0.0, sigma, n), 2.5 * sigma)) * np.where(cust.fn, p.fn_activity, 1.0)
    window = days.cum[last_day + 1] - days.cum[first_day]
    n_items = buys.astype(np.int64)
    if n_buyers:
        # multinomial over the buyers only: a never-buyer cannot get a purchase
        # through numpy giving the last category 1 - sum(others)
        w = (rate * window)[buys]
        n_items[buys] += rng.multinomial(n_transactions - n_buyers, w / w.sum())
    # A customer's first visit (1 / new_visit_prob items on average) has nothing
    # to re-buy; the mean chance is raised by that share of all purchases so
    # that re-buys come out near repeat_share overall.
    first_visit = np.minimum(n_items, 1.0 / p.new_visit_prob).sum() / max(n_items.sum(), 1)
    mean_rep = min(0.95, g.repeat_share / max(1.0 - first_visit, 0.05))
    conc_rep = 6.0
    p_repeat = rng.beta(max(mean_rep * conc_rep, 1e-3), max((1 - mean_rep) * conc_rep, 1e-3), n)
    return Plan(first_day=first_day.astype(np.int32), last_day=last_day.astype(np.int32), n_items=n_items,
                p_repeat=p_repeat)


# ---- purchases ------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """One calendar month of transactions, date-ordered: indices into the encoding tables."""

    label: str
    day: np.ndarray  # day index
    customer: np.ndarray  # customer index
    article: np.ndarray  # internal article index
    level: np.ndarray  # discount level (0 = full price)
    channel: np.ndarray  # 1 store, 2 online


class Simulation:
    """Day-by-day purchase simulation; yields one calendar month at a time."""

    def __init__(self, rng: np.random.Generator, cat: Catalogue, cust: Customers, plan: Plan, days: Days,
                 start: dt.date, g: GenerateConfig, p: Params) -> None:
        self.rng, self.cat, self.cust, self.plan, self.days, self.start = rng, cat, cust, plan, days, start
        self.p = p
        self.explore = g.explore_share
        n = len(cust.segment)
        r = p.history_size
        self.ring = np.full((n, r), -1, dtype=np.int32)  # last r articles bought, circular
        self.pushed = np.zeros(n, dtype=np.int64)  # articles pushed into the ring so far
        self.remaining = plan.n_items.copy()
        self.seg_clusters = np.array([s.clusters for s in SEGMENTS], dtype=np.int64)
        peak = np.array([c.season[0] for c in CLUSTERS])[:, None]
        amp = np.array([c.season[1] for c in CLUSTERS])[:, None]
        self.season = 1.0 + amp * np.cos(2 * np.pi * (days.doy[None, :] - peak) / 365.25)  # (clusters, days)

    def months(self) -> Iterator[Chunk]:
        """Chunks of transactions, one per calendar month, in date order."""
        n_days = len(self.days.weight)
        d = 0
        while d < n_days:
            first = self.start + dt.timedelta(days=d)
            nxt = (first.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
            m1 = min(n_days, (nxt - self.start).days)
            yield self._month(d, m1, first.strftime("%Y-%m"))
            d = m1

    def _month(self, m0: int, m1: int, label: str) -> Chunk:
        rng, cust, plan, cum = self.rng, self.cust, self.plan, self.days.cum
        # Each customer's remaining purchases are split over the remaining months
        # of their active period in proportion to daily volume: a binomial draw
        # per month, which sums to exactly n_items over the whole period.
        idx = np.flatnonzero((self.remaining > 0) & (plan.first_day < m1))
        lo = np.maximum(plan.first_day[idx], m0)
        hi = np.minimum(plan.last_day[idx] + 1, m1)
        here = np.maximum(cum[hi] - cum[lo], 0.0)
        left = cum[plan.last_day[idx] + 1] - cum[lo]
        prob = np.clip(np.divide(here, left, out=np.zeros_like(here), where=left > 0), 0.0, 1.0)
        k = rng.binomial(self.remaining[idx], prob)
        self.remaining[idx] -= k
        keep = k > 0
        idx, lo, hi, k = idx[keep], lo[keep], hi[keep], k[keep]

        # Items -> visits (baskets) -> a day and a channel per visit.
        owner = np.repeat(np.arange(len(idx)), k)
        first_item = np.ones(len(owner), dtype=bool)
        first_item[1:] = owner[1:] != owner[:-1]
        new_visit = first_item | (rng.random(len(owner)) < self.p.new_visit_prob)
        visit = np.cumsum(new_visit) - 1
        v_owner = owner[new_visit]
        x = cum[lo[v_owner]] + rng.random(len(v_owner)) * (cum[hi[v_owner]] - cum[lo[v_owner]])
        v_day = np.clip(np.searchsorted(cum, x, side="right") - 1, lo[v_owner], hi[v_owner] - 1)
        v_channel = np.where(rng.random(len(v_owner)) < cust.online[idx[v_owner]], 2, 1).astype(np.int8)

        customer = idx[owner]
        day = v_day[visit]
        # Kaggle order: by date, then customer id; a visit's items stay together.
        order = np.argsort(day.astype(np.int64) * len(cust.segment) + customer, kind="stable")
        customer, day, visit = customer[order], day[order], visit[order]
        channel = v_channel[visit]
        article = np.empty(len(order), dtype=np.int32)
        level = np.empty(len(order), dtype=np.int8)
        bounds = np.searchsorted(day, np.arange(m0, m1 + 1))
        for d in range(m0, m1):
            a, b = bounds[d - m0], bounds[d - m0 + 1]
            if b > a:
                article[a:b], level[a:b] = self._day(d, customer[a:b], visit[a:b])
        return Chunk(label, day, customer, article, level, channel)

    def _day(self, d: int, c: np.ndarray, visit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng, cat, cust, p = self.rng, self.cat, self.cust, self.p
        n = len(c)
        r = self.ring.shape[1]
        # Sales weight of every article today: Zipf base x sales life x season.
        age = d - cat.launch
        life = np.where(age < 0, 0.0,
                        np.minimum(1.0, (age + 1.0) / cat.ramp) * np.exp(-np.maximum(age - cat.ramp, 0.0) / cat.decay)
                        + p.life_floor)
        w = cat.base * life * self.season[cat.cluster, d]
        cum = np.cumsum(w)
        starts = cat.cluster_start
        c_lo = np.concatenate([[0.0], cum])[starts[:-1]]
        c_hi = cum[starts[1:] - 1]

        pushed = self.pushed[c]
        filled = np.minimum(pushed, p.repeat_from_last)
        is_rep = (filled > 0) & (rng.random(n) < self.plan.p_repeat[c])

        # Re-buys: one of the last `filled` articles, the recent ones more likely.
        slot = np.minimum((filled * rng.random(n) ** p.repeat_recency_power).astype(np.int64),
                          np.maximum(filled - 1, 0))
        pos = (pushed - 1 - slot) % r
        article = np.where(is_rep, self.ring[c, pos], 0)

        # New articles: from one of the customer's own clusters, or from the
        # whole catalogue (explore). Each draw is a range of the cumulative
        # weights (and of article indices) to sample in.
        new = np.flatnonzero(~is_rep)
        m = len(new)
        explore = rng.random(m) < self.explore
        clusters = self.seg_clusters[cust.segment[c[new]]]  # (m, 3)
        cw = np.cumsum(cust.cluster_w[c[new]] * self.season[clusters, d], axis=1)
        u = rng.random(m) * cw[:, -1]
        cl = clusters[np.arange(m), np.minimum((u >= cw[:, 0]).astype(np.int64) + (u >= cw[:, 1]), 2)]
        lo_v = np.where(explore, 0.0, c_lo[cl])
        hi_v = np.where(explore, cum[-1], c_hi[cl])
        lo_i = np.where(explore, 0, starts[cl])
        hi_i = np.where(explore, len(cum), starts[cl + 1])

        def draw(rows: np.ndarray) -> np.ndarray:
            target = lo_v[rows] + rng.random(len(rows)) * (hi_v[rows] - lo_v[rows])
            return np.clip(np.searchsorted(cum, target, side="right"), lo_i[rows], hi_i[rows] - 1)

        article[new] = draw(np.arange(m))
        # A new purchase is an article the customer has not bought recently
        # (with exclude_same_day, nor earlier today): redraw (in the same
        # range) the few that hit. Heavy buyers in a small catalogue can
        # exhaust a cluster's best sellers; explore_retries more draws look in
        # the whole catalogue, and the last chance is a uniform draw among the
        # range's articles on sale. Only a redrawn row can newly hit the
        # history (it does not change here); a same-day hit can be any row.
        n_tries = p.exclude_retries + p.explore_retries
        hit = np.arange(m)
        for attempt in range(n_tries + 1):
            hit = hit[(self.ring[c[new[hit]]] == article[new[hit], None]).any(axis=1)]
            if p.exclude_same_day:
                hit = np.union1d(hit, np.flatnonzero(_repeated(c, article)[new]))
            if len(hit) == 0:
                break
            if attempt == p.exclude_retries and p.explore_retries:
                lo_v[hit], hi_v[hit], lo_i[hit], hi_i[hit] = 0.0, cum[-1], 0, len(cum)
            if attempt < n_tries:
                article[new[hit]] = draw(hit)
            else:
                on_sale = np.concatenate([[0], np.cumsum(w > 0)])
                first = on_sale[lo_i[hit]]
                count = on_sale[hi_i[hit]] - first
                k = (rng.random(len(hit)) * count).astype(np.int64)
                article[new[hit]] = np.searchsorted(on_sale, first + k + 1, side="left") - 1

        # Markdowns get likelier as an article ages (not for evergreen basics).
        a_age = np.maximum(d - cat.launch[article], 0.0)
        base_md, max_md, tau_md = p.markdown
        p_md = base_md + np.where(cat.evergreen[article], 0.0, max_md * (1.0 - np.exp(-a_age / tau_md)))
        level = np.where(rng.random(n) < p_md,
                         1 + np.searchsorted(np.cumsum(DISCOUNT_PROBS), rng.random(n) * DISCOUNT_PROBS.sum(),
                                             side="right"), 0)
        level = np.minimum(level, len(DISCOUNTS) - 1).astype(np.int8)

        # Two of the same item in one visit: identical rows, as in the Kaggle file.
        if n > 1:
            dup = np.zeros(n, dtype=bool)
            dup[1:] = (visit[1:] == visit[:-1]) & (rng.random(n - 1) < p.same_day_duplicate)
            dup[1:] &= ~dup[:-1]
            j = np.flatnonzero(dup)
            article[j] = article[j - 1]
            level[j] = level[j - 1]

        # Push today's articles into each customer's ring (rows of a customer are
        # contiguous: the day is sorted by customer).
        head = np.ones(n, dtype=bool)
        head[1:] = c[1:] != c[:-1]
        group = np.cumsum(head) - 1
        heads = np.flatnonzero(head)
        rank = np.arange(n) - heads[group]
        self.ring[c, (pushed + rank) % r] = article
        self.pushed[c[heads]] += np.diff(np.append(heads, n))
        return article, level


def _repeated(c: np.ndarray, article: np.ndarray) -> np.ndarray:
    """Rows whose (customer, article) pair occurs in an earlier row."""
    order = np.lexsort((np.arange(len(c)), article, c))
    same = (c[order][1:] == c[order][:-1]) & (article[order][1:] == article[order][:-1])
    out = np.zeros(len(c), dtype=bool)
    out[order[1:][same]] = True
    return out
