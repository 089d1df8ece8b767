"""``python -m hmrec.bench weekly``: the refresh after one new week, beside the full refresh it replaces.

    python -m hmrec.bench weekly --scale 0.1 --as-of 2020-09-09

On this scale's generated data, cut at the as-of D (every transaction before
D), three refreshes run one after another, each timed stage by stage:

1. ``full at D``: a new lakehouse, ``hmrec run --as-of D`` (cold training);
   its version becomes the champion.
2. ``weekly at D+7``: the new rows appended to that lakehouse
   (``hmrec run --append --as-of D+7``): only they are ingested, the model
   is warm-started from the champion (``train.warm_start: auto``), and every
   later stage runs at D+7 through scoring, the gate and the evaluation.
3. ``full at D+7``: a second new lakehouse refreshed from nothing on the
   same data with ``train.warm_start=off``: what the weekly refresh replaces.

The batch appended holds the weeks [D, D+7) and [D+7, D+14): the refresh at
D+7 trains on rows before D+7 only, and the second week is its holdout week,
so both refreshes at D+7 are judged on it and their MAP@12 compares the
warm-started model with the cold retrain on the same data (a scheduled
refresh appends one week; the second only makes the judging possible, and
costs the append a second week's rows). With the default as-of 2020-09-09
that week is 2020-09-16 .. 2020-09-22, the last week of the generated data;
pass an earlier as-of to keep that week out of a choice.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from hmrec import pipeline
from hmrec.bench.common import DATA_ROOT, data_dir, report, timed
from hmrec.config import load_config
from hmrec.lake.spark import get_spark
from hmrec.progress import log

WEEK = dt.timedelta(days=7)
FILES = ("articles.csv", "customers.csv")


def cut_transactions(src: Path, out: Path, start: dt.date | None, end: dt.date) -> int:
    """Copy the header and the rows of ``src`` with ``start <= t_dat < end`` (ISO dates compare as text)
    into ``out``; returns the rows written."""
    lo, hi = (start.isoformat() if start else ""), end.isoformat()
    rows = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as g:
        g.write(f.readline())
        for line in f:
            day = line[:10]
            if lo <= day < hi:
                g.write(line)
                rows += 1
    os.replace(tmp, out)
    return rows


def _data_until(full: Path, out: Path, end: dt.date, start: dt.date | None = None, with_files: bool = True) -> int:
    """A data directory at ``out``: the transactions of ``full`` in [start, end), with articles and
    customers linked from ``full`` when ``with_files``; made once (reused when its transactions exist)."""
    target = out / "transactions_train.csv"
    if with_files:
        for name in FILES:
            link = out / name
            if not link.exists():
                out.mkdir(parents=True, exist_ok=True)
                link.symlink_to((full / name).resolve())
    if target.exists():
        with open(target, encoding="utf-8") as f:
            return sum(1 for _ in f) - 1
    return cut_transactions(full / "transactions_train.csv", target, start, end)


def _stage_rows(label: str, results: dict, total: float) -> list[dict]:
    """One row per stage that ran and returned its summary (with its seconds), the rest of the wall time
    (the train stages, which return their model version, and the run's own work), then the wall time."""
    rows = []
    for name, summary in results.items():
        if isinstance(summary, dict) and "seconds" in summary and not summary.get("skipped"):
            rows.append({"stage": f"{label}: {name}", "seconds": summary["seconds"]})
    rest = total - sum(r["seconds"] for r in rows)
    rows.append({"stage": f"{label}: the rest (train-fit, train, the run's own work)", "seconds": round(rest, 1)})
    rows.append({"stage": f"{label}: total (wall)", "seconds": round(total, 1)})
    return rows


def _quality(lake: Path, as_of: dt.date, label: str) -> dict:
    """The served list's MAP@12 / Recall@12 on the week from ``as_of``, from the refresh's report."""
    doc = json.loads((lake / "reports" / as_of.isoformat() / "metrics.json").read_text())
    k = doc["k"]
    model = doc.get("methods", {}).get("model", {})
    return {"stage": f"{label}: served list on {as_of} .. {as_of + WEEK - dt.timedelta(days=1)}",
            f"map@{k}": round(model.get(f"map@{k}", float("nan")), 5),
            f"recall@{k}": round(model.get(f"recall@{k}", float("nan")), 5), "users": doc.get("users", {}).get("all")}


def bench_weekly(scale: float, seed: int, overrides: list[str], as_of: dt.date) -> None:
    """Run the three refreshes of the module notes and print their stage times and quality side by side."""
    timings: list[dict] = []
    root = DATA_ROOT / f"weekly-scale{scale:g}-{as_of.isoformat()}"
    if root.exists():
        shutil.rmtree(root)  # each run measures from nothing: lakehouses of an earlier run would skip stages
    base = load_config(None, [f"paths.lakehouse={root / 'lake'}", *overrides])
    full = Path(data_dir(base, scale, seed, timings))
    nxt = as_of + WEEK
    before = _data_until(full, root / "data-before", as_of)
    end = nxt + WEEK
    week = _data_until(full, root / "data-week", end, start=as_of, with_files=False)
    _data_until(full, root / "data-upto", end)
    log("bench weekly", f"{before:,} transactions before {as_of}, {week:,} appended ({as_of} .. "
                        f"{end - dt.timedelta(days=1)})")

    rows: list[dict] = []
    spark = get_spark(base)
    runs = [("full at D", root / "lake", root / "data-before", as_of, False, []),
            ("weekly at D+7", root / "lake", root / "data-week", nxt, True, []),
            ("full at D+7", root / "lake-cold", root / "data-upto", nxt, False, ["train.warm_start=off"])]
    for done, (label, lake, data, at, append, extra) in enumerate(runs, start=1):
        cfg = load_config(None, [f"paths.lakehouse={lake}", *overrides, *extra])
        with timed(timings, f"{label} ({at})"):
            results = pipeline.run(cfg, spark, data_dir=str(data), as_of=at, append=append)
        rows += _stage_rows(label, results, row_seconds(timings))
        if at == nxt:  # the first refresh's data ends at D: it has no holdout week to judge
            rows.append(_quality(lake, at, label))
        # after each refresh, so that a long run stopped part way keeps the refreshes it finished
        report("weekly", scale, rows, {"as_of": as_of.isoformat(), "appended": [as_of.isoformat(), end.isoformat()],
                                       "transactions_before": before, "transactions_appended": week,
                                       "overrides": overrides, "timings": timings,
                                       "finished": [r[0] for r in runs[:done]]})


def row_seconds(timings: list[dict]) -> float:
    """The seconds of the last timed block."""
    return float(timings[-1]["seconds"])
