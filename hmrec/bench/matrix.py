"""``python -m hmrec.bench matrix``: the refresh on every generator profile, one table of every method.

Each profile (``hmrec generate --profile``, see docs/DATA.md) is generated at
the same scale and seed into its own lakehouse and refreshed with the same
configuration (no per-profile settings): ``hmrec run --as-of 2020-09-16``,
judged on the week from it. The table gives each method's MAP@K and
Recall@K per profile, the best baseline, and the plans chosen on each
profile's validation week.
"""
from __future__ import annotations

import json
from pathlib import Path

from hmrec import pipeline
from hmrec.bench.common import AS_OF, DATA_ROOT, data_dir, report, timed
from hmrec.config import load_config
from hmrec.errors import GateFailed
from hmrec.evaluation.baselines import BASELINES
from hmrec.lake.spark import get_spark
from hmrec.synth.params import PROFILES


def matrix_rows(docs: dict[str, dict], k: int) -> list[dict]:
    """One row per profile: every method's map@k and recall@k, the best baseline and whether the model reaches it."""
    rows = []
    for profile, doc in docs.items():
        methods = doc.get("methods", {})
        row = {"stage": profile, **({"gate failed": doc["gate_failed"]} if "gate_failed" in doc else {})}
        for method, values in methods.items():
            row[f"{method} map@{k}"] = round(values[f"map@{k}"], 5)
            row[f"{method} recall@{k}"] = round(values[f"recall@{k}"], 5)
        baselines = {m: methods[m][f"map@{k}"] for m in BASELINES if m in methods}
        best = max(baselines, key=baselines.get) if baselines else None
        row["best baseline"] = best
        if best is not None and "model" in methods:
            row[f"model / best baseline map@{k}"] = round(methods["model"][f"map@{k}"] / max(baselines[best], 1e-12), 3)
        groups = doc.get("validation", {}).get("groups", {})
        row["plans"] = "; ".join(f"{g}: {v['chosen']}" for g, v in groups.items())
        rows.append(row)
    return rows


def bench_matrix(scale: float, seed: int, overrides: list[str], profiles: list[str]) -> None:
    """Refresh every profile in ``profiles`` with the same settings and print the method-by-profile table."""
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise SystemExit(f"unknown profile {unknown[0]!r}; the profiles are: {', '.join(PROFILES)}")
    timings: list[dict] = []
    docs: dict[str, dict] = {}
    k = 12
    for profile in profiles:
        lake = DATA_ROOT / f"lake-matrix-scale{scale:g}-{profile}"
        cfg = load_config(None, [f"paths.lakehouse={lake}", *overrides])
        k = cfg.evaluate.k
        data = data_dir(cfg, scale, seed, timings, profile)
        spark = get_spark(cfg)
        try:
            with timed(timings, f"hmrec run, {profile}"):
                pipeline.run(cfg, spark, data_dir=data, as_of=AS_OF)
        except GateFailed as exc:
            # nothing was published for this profile: its row says why, and the other profiles still run
            print(f"[bench] {profile}: {exc}", flush=True)
            docs[profile] = {"gate_failed": str(exc)}
            continue
        docs[profile] = json.loads((Path(cfg.lakehouse) / "reports" / AS_OF.isoformat() / "metrics.json").read_text())
    rows = matrix_rows(docs, k)
    report("matrix", scale, rows, {"timings": timings, "as_of": AS_OF.isoformat(), "overrides": overrides})
