"""``python -m hmrec.bench etl``: generate, then ingest, features, split and popularity into a fresh lakehouse."""
from __future__ import annotations

import shutil

from hmrec.bench.common import AS_OF, bench_cfg, data_dir, report, timed
from hmrec.etl.features import build_features
from hmrec.etl.ingest import ingest
from hmrec.etl.popularity import popularity
from hmrec.etl.split import split
from hmrec.lake import storage, tables
from hmrec.lake.spark import get_spark


def bench_etl(scale: float, seed: int, overrides: list[str]) -> None:
    """Time each ETL stage on this scale's generated data, into a fresh lakehouse."""
    cfg = bench_cfg(scale, overrides)
    rows: list[dict] = []
    data = data_dir(cfg, scale, seed, rows)
    # A fresh lakehouse, so ingest really writes.
    shutil.rmtree(cfg.lakehouse, ignore_errors=True)
    spark = get_spark(cfg)
    with timed(rows, "ingest"):
        ingest(cfg, spark, data_dir=data)
    n_tx = storage.read(spark, cfg, tables.TRANSACTIONS).count()
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
