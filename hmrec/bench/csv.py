"""``python -m hmrec.bench csv``: each input file parsed line by line and whole (Spark's multiLine),
then the ingest job with the transactions file read each way."""
from __future__ import annotations

import os
import shutil
import time

from pyspark.sql import functions as F

from hmrec.bench.common import DATA_ROOT, bench_cfg, data_dir, report, timed
from hmrec.config import load_config
from hmrec.etl import ingest as ingest_job
from hmrec.etl.ingest import CORRUPT, input_uris, read_csv, read_header
from hmrec.lake.spark import get_spark


def bench_csv(scale: float, seed: int, overrides: list[str], rounds: int = 3, ingest_rounds: int = 2) -> None:
    """Parsing each input file both ways, alternated in one process, then the ingest job both ways.

    Each read parses every field (as ingest does) and counts rows and
    field-count failures. The VM's speed drifts, so the two ways take turns,
    ``rounds`` times, the order swapped every round.
    """
    rows: list[dict] = []
    cfg = bench_cfg(scale, overrides)
    data = data_dir(cfg, scale, seed, rows)
    spark = get_spark(cfg)
    for key, uri in input_uris(data).items():
        header = read_header(spark, uri)
        size = os.path.getsize(uri)
        times: dict[bool, list[float]] = {False: [], True: []}
        n = 0
        for r in range(rounds):
            for multi_line in ((False, True) if r % 2 == 0 else (True, False)):
                start = time.perf_counter()
                got = read_csv(spark, uri, header, multi_line).agg(
                    F.count(F.lit(1)), F.count(CORRUPT), F.max(F.length(header[-1]))).first()
                times[multi_line].append(time.perf_counter() - start)
                n = int(got[0])
        for multi_line, secs in times.items():
            row = {"stage": f"{key}: {'multiLine' if multi_line else 'line by line'}", "n": n,
                   "seconds": round(min(secs), 2), "per_s": round(n / min(secs), 1),
                   "mean_s": round(sum(secs) / len(secs), 2), "mb": round(size / 2**20)}
            rows.append(row)
            print(f"[bench] {row}", flush=True)
    default = ingest_job.MULTI_LINE_FILES
    for r in range(ingest_rounds):
        for whole in ((False, True) if r % 2 == 0 else (True, False)):
            lake = DATA_ROOT / f"lake-csv-scale{scale:g}-{'whole' if whole else 'lines'}"
            shutil.rmtree(lake, ignore_errors=True)
            icfg = load_config(None, [f"paths.lakehouse={lake}", *overrides])
            ingest_job.MULTI_LINE_FILES = default | {"transactions"} if whole else default
            try:
                with timed(rows, f"ingest job, transactions {'multiLine' if whole else 'line by line'}") as row:
                    row["n"] = ingest_job.ingest(icfg, spark, data_dir=data)["transactions_read"]
            finally:
                ingest_job.MULTI_LINE_FILES = default
            shutil.rmtree(lake, ignore_errors=True)
    report("csv", scale, rows, {"rounds": rounds, "ingest_rounds": ingest_rounds, "cores": os.cpu_count()})
