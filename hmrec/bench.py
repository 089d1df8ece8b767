"""Benchmarks that print figures: ``python -m hmrec.bench {etl,train,score} --scale S``.

Each stage is timed on its own and reported with rows/s and the peak resident
memory of this process plus its children (the Spark JVM and Python workers),
sampled every 0.2 s. Results are printed as a Markdown table and written to
``bench/results/<date>-<what>-scale<S>.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from hmrec.config import Config, load_config

RESULTS_DIR = Path("bench/results")
DATA_ROOT = Path("bench/out")


class TreeMemory:
    """Samples the summed RSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@contextmanager
def timed(rows: list[dict], name: str) -> Iterator[dict]:
    """Time a block and append a result row (``n`` set by the block gives rows/s)."""
    row: dict = {"stage": name}
    with TreeMemory() as mem:
        start = time.perf_counter()
        yield row
        secs = time.perf_counter() - start
    row["seconds"] = round(secs, 2)
    if "n" in row and secs > 0:
        row["per_s"] = round(row["n"] / secs, 1)
    row["peak_rss_mb"] = round(mem.peak / 2**20)
    rows.append(row)
    print(f"[bench] {row}", flush=True)


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown(rows: list[dict]) -> str:
    cols = ["stage", "n", "seconds", "per_s", "peak_rss_mb"] + sorted(
        {k for r in rows for k in r} - {"stage", "n", "seconds", "per_s", "peak_rss_mb"}
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def report(what: str, scale: float, rows: list[dict], extra: dict | None = None) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{dt.date.today().isoformat()}-{what}-scale{scale:g}.json"
    payload = {"what": what, "scale": scale, "machine": machine(), "rows": rows, **(extra or {})}
    out.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\n## bench {what}, scale {scale:g} ({payload['machine']['cores']} cores, "
          f"{payload['machine']['memory_gib']} GiB)\n")
    print(markdown(rows))
    print(f"\nwritten to {out}")
    return out


def bench_cfg(scale: float, overrides: list[str]) -> Config:
    lake = DATA_ROOT / f"lake-scale{scale:g}"
    return load_config(None, [f"paths.lakehouse={lake}", *overrides])


def data_dir(cfg: Config, scale: float, seed: int, rows: list[dict]) -> str:
    """Generated data for this scale, made once and reused by later benchmarks."""
    from hmrec.generate import generate

    out = DATA_ROOT / f"data-scale{scale:g}-seed{seed}"
    if not (out / "transactions_train.csv").exists():
        with timed(rows, "generate") as row:
            summary = generate(cfg, out=str(out), scale=scale, seed=seed)
            row["n"] = int(summary.get("transactions", 0))
    return str(out)


AS_OF = dt.date(2020, 9, 16)


def bench_etl(scale: float, seed: int, overrides: list[str]) -> None:
    from hmrec import storage
    from hmrec.features import build_features
    from hmrec.ingest import ingest
    from hmrec.popularity import popularity
    from hmrec.spark import get_spark
    from hmrec.split import split

    cfg = bench_cfg(scale, overrides)
    rows: list[dict] = []
    data = data_dir(cfg, scale, seed, rows)
    # A fresh lakehouse, so ingest really writes.
    import shutil

    shutil.rmtree(cfg.lakehouse, ignore_errors=True)
    spark = get_spark(cfg)
    with timed(rows, "ingest"):
        ingest(cfg, spark, data_dir=data)
    n_tx = storage.read(spark, cfg, "bronze/transactions").count()
    rows[-1]["n"] = n_tx
    rows[-1]["per_s"] = round(n_tx / rows[-1]["seconds"], 1)
    for name, fn in [
        ("features", lambda: build_features(cfg, spark, as_of=AS_OF)),
        ("split", lambda: split(cfg, spark, as_of=AS_OF)),
        ("popularity", lambda: popularity(cfg, spark, as_of=AS_OF)),
    ]:
        with timed(rows, name) as row:
            fn()
            row["n"] = n_tx
    total = sum(r["seconds"] for r in rows if r["stage"] != "generate")
    rows.append({"stage": "ingest+features+split+popularity", "n": n_tx, "seconds": round(total, 2),
                 "per_s": round(n_tx / total, 1), "peak_rss_mb": max(r["peak_rss_mb"] for r in rows)})
    report("etl", scale, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hmrec.bench", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["etl", "train", "score"])
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.what == "etl":
        bench_etl(args.scale, args.seed, args.overrides)
    elif args.what == "train":
        bench_train(args.scale, args.seed, args.overrides)
    else:
        bench_score(args.scale, args.seed, args.overrides)


if __name__ == "__main__":
    main()
