"""``python -m hmrec.bench warm``: warm-started refreshes against cold retrains, week by week of a backtest.

    python -m hmrec.bench warm --scale 0.1 --as-of 2020-09-16 --weeks 4

Two backtests (:func:`hmrec.backtest.backtest`) run one after the other on
the same generated data, each in a new lakehouse:

- ``warm``: ``train.warm_start: auto`` (the default). The first cutoff has
  no champion and trains cold. Each later cutoff starts from the champion
  the refresh a week earlier left (a backtest publishes every week whatever
  its gate says, so that is the previous week's version) and trains
  ``train.warm_epochs`` on the last ``train.warm_train_days``.
- ``cold``: ``train.warm_start=off``, every cutoff retrained from nothing.

For each week it prints both served lists' MAP@12 and Recall@12 on the
7 days from the cutoff, the difference, how the warm refresh started (and
from which version), and each serve model's training seconds (from its
MLflow run). The weekly-refresh goal is warm within 0.005 MAP@12 of cold
each week. For each backtest it also prints the served (two-stage) list
against the evaluation's ``blend`` method, the list ``score.method: blend``
makes with the same version, week by week and on the mean, with the ratios
(the two-stage goal: 1.25x MAP@12, 1.1x Recall@12). The last cutoff is
judged on the week after the as-of: with the default 2020-09-16 that is
the last generated week, so it is a report and must not feed a choice.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from hmrec import backtest as bt
from hmrec.bench.common import DATA_ROOT, data_dir, report, timed
from hmrec.config import Config, load_config
from hmrec.lake.spark import get_spark
from hmrec.model import registry

GOAL = 0.005


def _week_figures(lake: Path, cutoff: dt.date) -> dict:
    """The served list's MAP@K and Recall@K on the week from ``cutoff``, from that refresh's metrics.json."""
    path = lake / "reports" / cutoff.isoformat() / "metrics.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    k = doc.get("k", 12)
    methods = doc.get("methods", {})
    model, blend = methods.get("model", {}), methods.get("blend", {})
    return {"k": k, "map": model.get(f"map@{k}"), "recall": model.get(f"recall@{k}"),
            "users": doc.get("users", {}).get("all"),
            "blend map": blend.get(f"map@{k}"), "blend recall": blend.get(f"recall@{k}")}


def _training(cfg: Config, cutoff: dt.date) -> dict:
    """How the serve model trained for ``cutoff`` started (warm or cold, from which version) and its seconds."""
    version = registry.latest_version(cfg, cutoff, role="serve")
    if version is None:
        return {"version": None, "start": "not trained", "seconds": None}
    meta = registry.load_model(cfg, version).meta
    warm = meta.get("warm_start") or {}
    start = warm.get("warm_start", "cold")
    if "warm_start_from" in warm and start == "warm":
        start = f"warm from v{warm['warm_start_from']}"
    run = registry.client(cfg).get_run(registry.model_version(cfg, version).run_id).info
    seconds = round((run.end_time - run.start_time) / 1000, 1) if run.end_time and run.start_time else None
    return {"version": version, "start": start, "why": warm.get("warm_start_why"), "seconds": seconds}


def week_rows(warm: dict[dt.date, dict], cold: dict[dt.date, dict]) -> list[dict]:
    """One row per cutoff judged by both backtests: each MAP and Recall, warm minus cold, and the goal."""
    rows = []
    for cutoff in sorted(set(warm) & set(cold)):
        w, c = warm[cutoff], cold[cutoff]
        if w["map"] is None or c["map"] is None:
            continue
        k = w["k"]
        diff = w["map"] - c["map"]
        rows.append({
            "stage": f"week from {cutoff}", "users": w["users"],
            f"warm map@{k}": round(w["map"], 5), f"cold map@{k}": round(c["map"], 5),
            "warm - cold": round(diff, 5), f"within {GOAL}": "yes" if diff >= -GOAL else "no",
            f"warm recall@{k}": round(w["recall"], 5), f"cold recall@{k}": round(c["recall"], 5),
            "warm start": w["start"], "warm train s": w["seconds"], "cold train s": c["seconds"],
        })
    return rows


def blend_rows(label: str, weeks: dict[dt.date, dict]) -> list[dict]:
    """The served list against the evaluation's ``blend`` method (the ``score.method: blend`` list of the same
    version) in each week of the backtest ``label`` that judged both, with the ratios, and their mean."""
    judged = [(c, f) for c, f in sorted(weeks.items()) if f["map"] is not None and f.get("blend map")]
    rows = []
    for which, figs in [*((f"week from {c}", [f]) for c, f in judged), ("mean", [f for _, f in judged])]:
        if not figs:
            continue
        k = figs[0]["k"]
        mean = {key: sum(f[key] for f in figs) / len(figs) for key in ("map", "blend map", "recall", "blend recall")}
        rows.append({
            "stage": f"{label}: served against blend, {which}", f"served map@{k}": round(mean["map"], 5),
            f"blend map@{k}": round(mean["blend map"], 5), "map ratio": round(mean["map"] / mean["blend map"], 3),
            f"served recall@{k}": round(mean["recall"], 5), f"blend recall@{k}": round(mean["blend recall"], 5),
            "recall ratio": round(mean["recall"] / mean["blend recall"], 3),
        })
    return rows


def bench_warm(scale: float, seed: int, overrides: list[str], as_of: dt.date, weeks: int) -> None:
    """Run the two backtests of the module notes and print them week by week."""
    timings: list[dict] = []
    root = DATA_ROOT / f"warm-scale{scale:g}-{as_of.isoformat()}-{weeks}w"
    if root.exists():
        shutil.rmtree(root)  # lakehouses of an earlier run would skip stages and time nothing
    base = load_config(None, [f"paths.lakehouse={root / 'warm'}", *overrides])
    data = data_dir(base, scale, seed, timings)
    spark = get_spark(base)
    figures: dict[str, dict[dt.date, dict]] = {}
    rows: list[dict] = []
    for label, extra in (("warm", []), ("cold", ["train.warm_start=off"])):
        cfg = load_config(None, [f"paths.lakehouse={root / label}", *overrides, *extra])
        with timed(timings, f"backtest {label}, {weeks} weeks to {as_of}"):
            bt.backtest(cfg, spark, data_dir=data, as_of=as_of, weeks=weeks)
        figures[label] = {c: {**_week_figures(root / label, c), **_training(cfg, c)} for c in bt.cutoffs(as_of, weeks)}
        rows = week_rows(figures["warm"], figures.get("cold", {}))
        rows += [row for arm, weeks_of in figures.items() for row in blend_rows(arm, weeks_of)]
        # after each backtest, so that a run stopped part way keeps the one it finished
        report("warm", scale, rows + timings, {
            "as_of": as_of.isoformat(), "weeks": weeks, "overrides": overrides, "goal": GOAL,
            "by_week": {label: {c.isoformat(): v for c, v in f.items()} for label, f in figures.items()},
        })
