"""Benchmarks that print figures: ``python -m hmrec.bench {etl,train,score,all,csv} --scale S``.

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
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psutil

from hmrec.config import Config, load_config
from hmrec.lake import tables

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
    from hmrec.synth.generate import generate

    out = DATA_ROOT / f"data-scale{scale:g}-seed{seed}"
    if not (out / "transactions_train.csv").exists():
        with timed(rows, "generate") as row:
            summary = generate(cfg, out=str(out), scale=scale, seed=seed)
            row["n"] = int(summary.get("transactions", 0))
    return str(out)


AS_OF = dt.date(2020, 9, 16)


def bench_etl(scale: float, seed: int, overrides: list[str]) -> None:
    from hmrec.lake import storage
    from hmrec.etl.features import build_features
    from hmrec.etl.ingest import ingest
    from hmrec.etl.popularity import popularity
    from hmrec.lake.spark import get_spark
    from hmrec.etl.split import split

    cfg = bench_cfg(scale, overrides)
    rows: list[dict] = []
    data = data_dir(cfg, scale, seed, rows)
    # A fresh lakehouse, so ingest really writes.
    import shutil

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


def prepared(scale: float, seed: int, overrides: list[str], rows: list[dict]):
    """(cfg, spark) with ingest → popularity done for AS_OF on this scale's data (reused when present)."""
    from hmrec.lake import storage
    from hmrec.etl.features import build_features
    from hmrec.etl.ingest import ingest
    from hmrec.etl.popularity import popularity
    from hmrec.lake.spark import get_spark
    from hmrec.etl.split import split

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


def bench_train(scale: float, seed: int, overrides: list[str]) -> None:
    from hmrec.lake import storage
    from hmrec.model.registry import load_model
    from hmrec.bench.probes import loader_throughput, synthetic_model_args, trainer_throughput
    from hmrec.train.job import train
    from hmrec.train.step import compute_dtype_name

    rows: list[dict] = []
    # one epoch over the whole training window unless --set train.train_days=N says otherwise
    cfg, spark = prepared(scale, seed, ["train.epochs=1", "train.train_days=0", *overrides], rows)
    n_users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF).count()
    n_items = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, AS_OF).count()
    with timed(rows, "petastorm loader alone") as loader:
        loader["per_s"] = round(loader_throughput(cfg, spark, AS_OF, max_batches=10**9), 1)
    with timed(rows, "trainer from memory") as trainer:
        args = synthetic_model_args(cfg, n_users, n_items)
        trainer["per_s"] = round(trainer_throughput(args, n_steps=200, batch_size=cfg.train.batch_size, cfg=cfg), 1)
        trainer["n"] = 200 * cfg.train.batch_size
    with timed(rows, "train job, 1 epoch (loader + trainer + registry)") as job:
        job["model_version"] = train(cfg, spark, as_of=AS_OF)
    # the rows trained and the epoch's own figures, as the train job registered them
    meta = load_model(cfg, job["model_version"]).meta
    n_train, epoch = meta["train_rows"], meta["history"][0]
    job.update(n=n_train, per_s=round(n_train / job["seconds"], 1))
    rows.append({"stage": "the epoch alone (training loop fed by the loader)", "n": epoch["samples"],
                 "seconds": round(epoch["seconds"], 2), "per_s": round(epoch["samples_per_s"], 1)})
    tc = cfg.train
    report("train", scale, rows, {"train_rows": n_train, "users": n_users, "items": n_items,
                                  "loader_over_trainer": round(loader["per_s"] / trainer["per_s"], 1),
                                  "batch_size": tc.batch_size, "random_negatives": tc.random_negatives,
                                  "compute_dtype": compute_dtype_name(tc), "train_days": tc.train_days})


def trained(cfg, spark, rows: list[dict]) -> str:
    """The latest model version for AS_OF, training one epoch first if there is none."""
    from hmrec.model.registry import latest_version
    from hmrec.train.job import train

    version = latest_version(cfg, AS_OF)
    if version is None:
        with timed(rows, "train (1 epoch)"):
            version = train(cfg, spark, as_of=AS_OF)
    return version


def bench_score(scale: float, seed: int, overrides: list[str], job_kinds: tuple[str, ...] = ("hnsw", "flat")) -> None:
    import numpy as np

    from hmrec.lake import storage
    from hmrec.bench.serving import embed_throughput, search_throughput
    from hmrec.serve.embedders import ModelEmbedder
    from hmrec.serve.index import build_index, load_index
    from hmrec.model.registry import load_model
    from hmrec.serve.score import score, score_customers

    rows: list[dict] = []
    cfg, spark = prepared(scale, seed, ["train.epochs=1", *overrides], rows)
    version = trained(cfg, spark, rows)
    embedder = ModelEmbedder.from_loaded(load_model(cfg, version))
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF).where("n_purchases > 0")
    sample = users.limit(200_000).toPandas()
    items = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, AS_OF).toPandas()
    with timed(rows, "user embedding (1 process)") as row:
        res = embed_throughput(embedder, sample, cfg.score.batch_size)
        row["n"], row["per_s"] = res["users"], res["users_per_s"]
    user_emb = np.concatenate([embedder.embed_users(sample.iloc[i:i + 8192]) for i in range(0, len(sample), 8192)])
    item_emb = embedder.embed_items(items)
    search = search_throughput(item_emb, user_emb, ["flat", "hnsw", "ivf"], cfg.score.k, cfg.index)
    for kind, res in search.items():
        rows.append({"stage": f"faiss {kind} search", "n": len(user_emb), "seconds": res["search_s"],
                     "per_s": res["queries_per_s"], f"recall@{cfg.score.k}": res[f"recall@{cfg.score.k}"],
                     "build_s": res["build_s"]})
        print(f"[bench] {rows[-1]}", flush=True)
    n_customers = storage.read(spark, cfg, tables.CUSTOMERS).count()
    for kind in job_kinds:
        kcfg = bench_cfg(scale, ["train.epochs=1", f"index.kind={kind}", *overrides])
        with timed(rows, f"index job ({kind})"):
            build_index(kcfg, spark, as_of=AS_OF, model_version=version)
        # The job with and without its pre-publish check, taking turns twice (the VM's speed drifts).
        for checked in (False, True, True, False):
            name = f"score job, every customer ({kind})" if checked else f"score job without the pre-publish check ({kind})"
            with timed(rows, name) as row:
                if checked:
                    summary = score(kcfg, spark, as_of=AS_OF, model_version=version)
                    row["check_s"] = summary.get("check_s")
                else:
                    index, meta = load_index(kcfg, version, AS_OF)
                    score_customers(kcfg, spark, AS_OF, ModelEmbedder.from_loaded(load_model(kcfg, version)), index,
                                    index_meta=meta, verify=False)
                row["n"] = n_customers
    report("score", scale, rows, {"model_version": version, "customers": n_customers})


def bench_all(scale: float, seed: int, overrides: list[str], kinds: tuple[str, ...] = ("flat", "hnsw")) -> None:
    """hmrec (with each index kind in ``kinds``) against Spark ALS, popularity and repurchase on one split."""
    import shutil

    from pyspark.sql import functions as F

    from hmrec.lake import storage
    from hmrec.bench.als import als_top_k, train_als
    from hmrec.evaluation.baselines import baseline_lists, customer_segments
    from hmrec.evaluation.evaluate import METHODS, compute_metrics, gather_holdout, lists_by_customer
    from hmrec.serve.blend import fill_list
    from hmrec.serve.index import build_index
    from hmrec.serve.score import score
    from hmrec.train.job import train

    rows: list[dict] = []
    cfg = bench_cfg(scale, overrides)
    shutil.rmtree(cfg.lakehouse, ignore_errors=True)
    k = cfg.score.k
    run_start = time.perf_counter()
    cfg, spark = prepared(scale, seed, overrides, rows)
    with timed(rows, "hmrec train") as row:
        version = train(cfg, spark, as_of=AS_OF)
    lists: dict[str, dict] = {}
    for kind in kinds:
        kcfg = bench_cfg(scale, [f"index.kind={kind}", *overrides])
        with timed(rows, f"hmrec index+score ({kind})"):
            build_index(kcfg, spark, as_of=AS_OF, model_version=version)
            score(kcfg, spark, as_of=AS_OF, model_version=version)
        if not lists:
            # holdout, histories and popularity once; each later kind only re-reads its served lists
            frame, _, popularity, catalogue = gather_holdout(kcfg, spark, AS_OF, k, version)
            holdout_ids = F.broadcast(spark.createDataFrame(frame[["customer_id"]]))
            served = frame
        else:
            recs = storage.read(spark, cfg, tables.RECOMMENDATIONS).where(F.col("as_of") == F.lit(AS_OF))
            served = lists_by_customer(recs.join(holdout_ids, "customer_id"), "rank", "article_id", "model").toPandas()
        lists[f"hmrec_{kind}"] = dict(zip(served["customer_id"], served["model"]))
    rows.append({"stage": "hmrec run, ingest to scoring", "seconds": round(time.perf_counter() - run_start, 2)})

    with timed(rows, "als train (implicit, rank = embedding_dim)") as row:
        model = train_als(cfg, spark, AS_OF)
    out = f"{cfg.lakehouse}/bench/als_recommendations"
    with timed(rows, "als recommendForAllUsers") as row:
        recs = als_top_k(model, k)
        recs.write.mode("overwrite").parquet(out)
        row["n"] = spark.read.parquet(out).select("customer_idx").distinct().count()
    ids = storage.read(spark, cfg, tables.CUSTOMER_INDEX)
    arts = storage.read(spark, cfg, tables.ARTICLE_INDEX)
    als = (spark.read.parquet(out).join(ids, "customer_idx").join(holdout_ids, "customer_id")
           .join(arts, "article_idx").groupBy("customer_id")
           .agg(F.transform(F.sort_array(F.collect_list(F.struct("rank", "article_id"))), lambda s: s["article_id"]).alias("als"))
           .toPandas())
    als_lists = dict(zip(als["customer_id"], als["als"]))

    frame["segment"] = customer_segments(frame["last_purchase"], AS_OF, cfg.evaluate.lapsed_days)
    frame = baseline_lists(frame, popularity, k)
    for name, by_customer in lists.items():
        frame[name] = [list(by_customer.get(c, [])) for c in frame["customer_id"]]
    # Customers ALS cannot score (none in its training window) get hmrec's fallback: their age
    # segment's popularity list, then the global one.
    frame["als"] = [fill_list(als_lists.get(c), seg, k) for c, seg in zip(frame["customer_id"], frame["popularity_segment"])]
    methods = [f"hmrec_{kind}" for kind in kinds] + ["als"] + [m for m in METHODS if m != "model"]
    results = compute_metrics(frame, methods, k, catalogue)["all"]
    quality = [{"method": m, **{key: round(v, 5) for key, v in results[m].items()}} for m in methods]
    print("\n" + markdown([{"stage": q["method"], **{x: y for x, y in q.items() if x != "method"}} for q in quality]))
    report("all", scale, rows, {"quality": quality, "model_version": version})


def bench_csv(scale: float, seed: int, overrides: list[str], rounds: int = 3, ingest_rounds: int = 2) -> None:
    """Parsing each input file line by line and whole (Spark's multiLine), alternated in one process.

    Each read parses every field (as ingest does) and counts rows and
    field-count failures. The VM's speed drifts, so the two ways take turns,
    ``rounds`` times, the order swapped every round. Then the whole ingest
    job, with the transactions file read each way, ``ingest_rounds`` times.
    """
    # imported here, as every benchmark's Spark modules are: only the benchmark that runs loads them
    from pyspark.sql import functions as F

    from hmrec.etl.ingest import CORRUPT, input_uris, read_csv, read_header
    from hmrec.lake.spark import get_spark

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
    # The whole ingest job, transactions read line by line (as it does) or whole, taking turns.
    from hmrec.etl import ingest as ingest_job  # imported here, as every benchmark's Spark modules are

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hmrec.bench", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["etl", "train", "score", "all", "csv"])
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--index-kinds", "--score-jobs", dest="index_kinds", default=None,
                   help="comma-separated index kinds the whole scoring job runs with "
                        "(score: default hnsw,flat; all: default flat,hnsw)")
    p.add_argument("--parse-rounds", type=int, default=3, help="csv: turns of parsing each file each way")
    p.add_argument("--ingest-rounds", type=int, default=2, help="csv: turns of the ingest job each way")
    args = p.parse_args(argv)
    kinds = tuple(args.index_kinds.split(",")) if args.index_kinds else None
    if args.what == "etl":
        bench_etl(args.scale, args.seed, args.overrides)
    elif args.what == "train":
        bench_train(args.scale, args.seed, args.overrides)
    elif args.what == "csv":
        bench_csv(args.scale, args.seed, args.overrides, args.parse_rounds, args.ingest_rounds)
    elif args.what == "score":
        bench_score(args.scale, args.seed, args.overrides, *([kinds] if kinds else []))
    else:
        bench_all(args.scale, args.seed, args.overrides, *([kinds] if kinds else []))


if __name__ == "__main__":
    main()
