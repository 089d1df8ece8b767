"""What every benchmark shares: timing with peak memory, result files, generated data and prepared lakehouses.

Each stage is timed on its own and reported with rows/s and the peak resident
memory of this process plus its children (the Spark JVM and Python workers),
sampled every 0.2 s. Results are printed as a Markdown table and written to
``bench/results/<date>-<what>-scale<S>.json``.
"""
from __future__ import annotations

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
from hmrec.etl.features import build_features
from hmrec.etl.ingest import ingest
from hmrec.etl.popularity import popularity
from hmrec.etl.split import split
from hmrec.lake import storage, tables
from hmrec.lake.spark import get_spark
from hmrec.model.registry import latest_version
from hmrec.synth.generate import generate
from hmrec.train.job import train

RESULTS_DIR = Path("bench/results")
DATA_ROOT = Path("bench/out")
AS_OF = dt.date(2020, 9, 16)


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
    """The machine a result was measured on."""
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown(rows: list[dict]) -> str:
    """Result rows as a Markdown table."""
    cols = ["stage", "n", "seconds", "per_s", "peak_rss_mb"] + sorted(
        {k for r in rows for k in r} - {"stage", "n", "seconds", "per_s", "peak_rss_mb"}
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def report(what: str, scale: float, rows: list[dict], extra: dict | None = None) -> Path:
    """Print the rows and write them with the machine to bench/results/; returns the file."""
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
    """The benchmark's config: this scale's lakehouse under bench/out, then ``overrides``."""
    lake = DATA_ROOT / f"lake-scale{scale:g}"
    return load_config(None, [f"paths.lakehouse={lake}", *overrides])


def data_dir(cfg: Config, scale: float, seed: int, rows: list[dict], profile: str = "default") -> str:
    """Generated data for this scale (and profile), made once and reused by later benchmarks."""
    suffix = "" if profile == "default" else f"-{profile}"
    out = DATA_ROOT / f"data-scale{scale:g}-seed{seed}{suffix}"
    if not (out / "transactions_train.csv").exists():
        with timed(rows, f"generate{suffix}") as row:
            summary = generate(cfg, out=str(out), scale=scale, seed=seed, profile=profile)
            row["n"] = int(summary.get("transactions", 0))
    return str(out)


def prepared(scale: float, seed: int, overrides: list[str], rows: list[dict]):
    """(cfg, spark) with ingest → popularity done for AS_OF on this scale's data (reused when present)."""
    cfg = bench_cfg(scale, overrides)
    data = data_dir(cfg, scale, seed, rows)
    spark = get_spark(cfg)
    if not storage.has_as_of(spark, cfg, tables.POPULARITY, AS_OF):
        with timed(rows, "etl (ingest..popularity)"):
            ingest(cfg, spark, data_dir=data)
            build_features(cfg, spark, as_of=AS_OF)
            split(cfg, spark, as_of=AS_OF)
            popularity(cfg, spark, as_of=AS_OF)
    return cfg, spark


def trained(cfg, spark, rows: list[dict]) -> str:
    """The latest model version for AS_OF, training one epoch first if there is none."""
    version = latest_version(cfg, AS_OF)
    if version is None:
        with timed(rows, "train (1 epoch)"):
            version = train(cfg, spark, as_of=AS_OF)
    return version
