"""Synthetic data in the H&M Kaggle schema, with structure planted for a model to find.

``hmrec generate --out DIR`` writes ``articles.csv``, ``customers.csv`` and
``transactions_train.csv`` exactly as the Kaggle files are laid out, plus the
ground truth in ``DIR/planted/``. docs/DATA.md describes the formats and the
planted structure; the short version:

* 30 style clusters of articles, each tied to an index, sections, product
  types, a colour palette and print styles, so the cluster shows in the
  attributes and not only in the ids;
* 12 customer taste segments, three per age band, each buying mostly from
  three clusters: per-age popularity cannot tell the segments of a band apart;
* articles launch over the two years and sell for a few months (rise, then
  decay), with Zipf popularity inside a cluster, so recent sales matter;
* repeat purchases from a ring of each customer's recent articles, heavy-tailed
  purchase counts, active periods, customers who never buy, per-customer
  online share, per-article prices with markdowns.

Everything is vectorised numpy. Transactions are simulated day by day (a
customer's repeat purchases depend on what they bought before) and written one
calendar month at a time, so memory stays bounded at full scale. Every file is
written as ``<name>.tmp`` and renamed only when all of them are complete.

This module is the entry point and its settings checks; the parts are
:mod:`~hmrec.synth.vocab` (fixed vocabularies), :mod:`~hmrec.synth.params`
(tuning constants), :mod:`~hmrec.synth.world` (clusters, segments, catalogue,
customers), :mod:`~hmrec.synth.simulate` (calendar, purchase plan, purchases)
and :mod:`~hmrec.synth.files` (encoding and writing).
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np

from hmrec.config import Config, GenerateConfig
from hmrec.errors import HmrecError
from hmrec.progress import log, stage
from hmrec.synth.files import (OUTPUT_FILES, STAGE, tmp_path, write_articles, write_customers, write_planted,
                               write_transactions)
from hmrec.synth.params import PROFILE_SETTINGS, Params, resolve_profile
from hmrec.synth.simulate import Simulation, day_weights, plan_purchases
from hmrec.synth.world import CLUSTERS, SEGMENTS, catalogue, customers

# The Kaggle data set's sizes: scale 1.0.
FULL_ARTICLES = 105_542
FULL_CUSTOMERS = 1_371_980
FULL_TRANSACTIONS = 31_788_324
# The six-digit product codes (vocab.PRODUCT_CODE_RANGE) bound the catalogue,
# and with it the scale.
MAX_SCALE = 10.0


# ---- public entry point --------------------------------------------------------


def generate(cfg: Config, out: str, scale: float | None = None, seed: int | None = None,
             profile: str = "default") -> dict:
    """Write articles.csv, customers.csv, transactions_train.csv and planted/ into ``out``.

    ``scale`` 1.0 is the Kaggle data set's size; ``None`` takes ``cfg.generate.scale``
    (and ``seed`` ``cfg.generate.seed``). ``profile`` names the shape of the
    data (:data:`hmrec.synth.params.PROFILES`); its settings win over the
    config's. The same scale, seed and profile give byte-identical files.
    Returns rows per file and the elapsed seconds.
    """
    g, p = resolve_profile(profile, cfg.generate)
    scale = g.scale if scale is None else float(scale)
    seed = g.seed if seed is None else int(seed)
    start, end = _date_range(g.start_date, g.end_date)
    _check_settings(g, p, profile, scale, seed)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise HmrecError(f"--out {out} is a file; give a directory for the generated CSV files")
    (out_dir / "planted").mkdir(parents=True, exist_ok=True)

    n_articles, n_customers, n_transactions = _sizes(scale, g, p)
    n_days = (end - start).days + 1
    rng = np.random.default_rng(seed)
    # Nothing is renamed into place before every file is complete, so a failed
    # run leaves the previous data set (if any) whole, plus no *.tmp files.
    written: list[Path] = []
    finished = False
    try:
        with stage(STAGE) as summary:
            log(STAGE, f"profile {profile}, scale {scale}, seed {seed}: {n_articles} articles, "
                       f"{n_customers} customers, {n_transactions} transactions, {start} .. {end}, into {out_dir}")
            _log_profile(profile, cfg.generate, g)
            days = day_weights(start, n_days, p)
            cat, rows = catalogue(rng, n_articles, n_days, p)
            written.append(write_articles(out_dir / "articles.csv", rows, cat.file_order))
            del rows  # the text columns are written; only the arrays are needed from here on
            cust = customers(rng, n_customers, p)
            written.append(write_customers(out_dir / "customers.csv", cust, g.chunk_rows))
            plan = plan_purchases(rng, cust, n_transactions, days, g, p)
            sim = Simulation(rng, cat, cust, plan, days, start, g, p)
            path, n_rows = write_transactions(out_dir / "transactions_train.csv", sim.months(), cat, cust.hex_id,
                                              start, n_days, g.chunk_rows)
            planned = int(plan.n_items.sum())
            if n_rows != planned:
                raise HmrecError(f"transactions_train.csv: wrote {n_rows} rows but planned {planned}; "
                                 f"this is a bug in hmrec.synth, please report it with the scale and seed")
            written.extend(write_planted(out_dir / "planted", cat, cust, scale, seed, start, end, g, p, profile,
                                         {"articles": n_articles, "customers": n_customers,
                                          "transactions": n_rows}))
            # transactions_train.csv last: its presence means the data set is complete
            written.append(path)
            for tmp in written:
                os.replace(tmp, tmp.with_suffix(""))
            finished = True
            summary["profile"] = profile
            summary["articles"] = n_articles
            summary["customers"] = n_customers
            summary["transactions"] = n_rows
            summary["buyers"] = int((plan.n_items > 0).sum())
            summary["out"] = str(out_dir)
        return dict(summary)
    finally:
        if not finished:
            for name in OUTPUT_FILES:
                tmp_path(out_dir / name).unlink(missing_ok=True)


# ---- settings ---------------------------------------------------------------------


def _date_range(start_text: str, end_text: str) -> tuple[dt.date, dt.date]:
    # both are dates of the form YYYY-MM-DD: the config checks that when it loads
    dates = [dt.date.fromisoformat(start_text), dt.date.fromisoformat(end_text)]
    if (dates[1] - dates[0]).days < 28:
        raise HmrecError(f"generate.start_date {dates[0]} .. generate.end_date {dates[1]} spans less than "
                         f"28 days; the simulation needs at least four weeks")
    return dates[0], dates[1]


def _log_profile(profile: str, configured: GenerateConfig, g: GenerateConfig) -> None:
    # A profile's settings replace the config's; say so where they differ, so
    # that a --set the profile overrides does not vanish silently.
    for key in PROFILE_SETTINGS:
        ours, theirs = getattr(g, key), getattr(configured, key)
        if ours != theirs:
            log(STAGE, f"profile {profile} sets generate.{key}={ours} (the config has {theirs})")


def _check_settings(g: GenerateConfig, p: Params, profile: str, scale: float, seed: int) -> None:
    if not (0.0 < scale <= MAX_SCALE):
        raise HmrecError(f"scale {scale} is out of range: use 0 < scale <= {MAX_SCALE} "
                         f"(1.0 is the Kaggle data set's size)")
    if scale * p.article_factor > MAX_SCALE:
        raise HmrecError(f"profile {profile} makes {p.article_factor:g} times the articles per unit of scale, "
                         f"too many at scale {scale}: use scale <= {MAX_SCALE / p.article_factor:g}")
    if seed < 0:
        raise HmrecError(f"seed {seed} is negative; use a seed >= 0")
    checks = [
        ("generate.chunk_rows", g.chunk_rows, g.chunk_rows >= 1000, "at least 1000"),
        ("generate.min_articles", g.min_articles, g.min_articles >= 3 * len(CLUSTERS),
         f"at least {3 * len(CLUSTERS)} (three per style cluster)"),
        ("generate.min_customers", g.min_customers, g.min_customers >= len(SEGMENTS), f"at least {len(SEGMENTS)}"),
        ("generate.repeat_share", g.repeat_share, 0.0 <= g.repeat_share < 0.9, "in [0, 0.9)"),
        ("generate.explore_share", g.explore_share, 0.0 <= g.explore_share <= 1.0, "in [0, 1]"),
        ("generate.never_buy_share", g.never_buy_share, 0.0 <= g.never_buy_share < 1.0, "in [0, 1)"),
    ]
    for key, value, ok, need in checks:
        if not ok:
            raise HmrecError(f"config key {key} is {value}; it must be {need} (--set {key}=...)")


def _sizes(scale: float, g: GenerateConfig, p: Params) -> tuple[int, int, int]:
    n_articles = max(g.min_articles, round(FULL_ARTICLES * scale * p.article_factor))
    n_customers = max(g.min_customers, round(FULL_CUSTOMERS * scale))
    # Below the customer floor the transactions would thin out to a couple per
    # customer; min_transactions_per_customer (ten by default) keeps the
    # planted structure visible.
    n_transactions = max(p.min_transactions_per_customer * n_customers,
                         round(FULL_TRANSACTIONS * scale * p.transaction_factor))
    return n_articles, n_customers, n_transactions

