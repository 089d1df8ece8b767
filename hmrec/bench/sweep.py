"""``python -m hmrec.bench sweep``: one setting's values, each refreshed and judged on the same week.

    python -m hmrec.bench sweep --scale 0.1 --as-of 2020-09-09 --grid train.train_days=30,60,90,180

A typed-in default is chosen on a week before the week the README reports
(2020-09-16 .. 2020-09-22): with ``--as-of 2020-09-09`` every value is judged
on 2020-09-09 .. 2020-09-15. The values run one after another on one
lakehouse, so each reruns only the stages the setting reaches (the stage
fingerprints); every method's figures on that week are printed per value.
Each value trains cold (``train.warm_start=off``, unless the grid is that
setting): a warm start would begin from the previous value's champion, so the
values would not be compared on their own. Every value is scored and judged
whatever the gate decides (as the backtest does); the gate's decision is
printed with its figures.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from hmrec import pipeline
from hmrec.bench.common import DATA_ROOT, data_dir, report, timed
from hmrec.config import load_config
from hmrec.lake.spark import get_spark


def parse_grid(grid: str) -> tuple[str, list[str]]:
    """``key=a,b,c`` as (key, [a, b, c])."""
    key, _, values = grid.partition("=")
    if not key or not values:
        raise SystemExit(f"--grid {grid!r}: give key=value1,value2,...")
    return key.strip(), [v.strip() for v in values.split(",") if v.strip()]


def bench_sweep(scale: float, seed: int, overrides: list[str], as_of: dt.date, grid: str) -> None:
    """Refresh at ``as_of`` once per value of the grid's setting and print each value's figures."""
    key, values = parse_grid(grid)
    lake = DATA_ROOT / f"lake-sweep-scale{scale:g}-{as_of.isoformat()}"
    rows: list[dict] = []
    timings: list[dict] = []
    for value in values:
        cold = [] if key == "train.warm_start" else ["train.warm_start=off"]
        cfg = load_config(None, [f"paths.lakehouse={lake}", *cold, *overrides, f"{key}={value}"])
        data = data_dir(cfg, scale, seed, timings)
        spark = get_spark(cfg)
        with timed(timings, f"hmrec run, {key}={value}"):
            results = pipeline.run(cfg, spark, data_dir=data, as_of=as_of, enforce_gate=False)
        doc = json.loads((Path(cfg.lakehouse) / "reports" / as_of.isoformat() / "metrics.json").read_text())
        k = doc["k"]
        for method, values_ in doc["methods"].items():
            rows.append({"stage": f"{key}={value}", "method": method,
                         **{m: round(values_[m], 5) for m in (f"recall@{k}", f"ndcg@{k}", f"map@{k}")}})
        groups = doc.get("validation", {}).get("groups", {})
        gate = results.get("gate")
        verdict = "not run" if not gate else "passed" if gate.get("passed") else f"failed: {gate.get('reason')}"
        rows.append({"stage": f"{key}={value}", "method": "(plans chosen)",
                     "plans": "; ".join(f"{g}: {v['chosen']}" for g, v in groups.items()), "gate": verdict})
    report(f"sweep-{key}", scale, rows, {"as_of": as_of.isoformat(), "judged_on": f"{as_of} .. {as_of + dt.timedelta(days=6)}",
                                        "timings": timings, "overrides": overrides})
