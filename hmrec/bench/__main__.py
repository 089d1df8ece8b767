"""Benchmarks that print figures: ``python -m hmrec.bench {etl,train,score,all,csv,matrix,shapes,sweep,serving,rankers,weekly,warm,pairs} --scale S``.

- ``etl``: generate, ingest, features, split, popularity (:mod:`hmrec.bench.etl`);
- ``train``: the loader alone, the trainer from memory, one epoch (:mod:`hmrec.bench.train`);
- ``score``: embedding, FAISS search by kind, the scoring job (:mod:`hmrec.bench.score`);
- ``all``: hmrec's refresh against Spark ALS and the baselines (:mod:`hmrec.bench.peers`);
- ``csv``: each input file parsed line by line and whole (multiLine), and the ingest job both ways (:mod:`hmrec.bench.csv`);
- ``matrix``: the refresh on every generator profile (:mod:`hmrec.bench.matrix`);
- ``shapes``: each generator profile's shape, from its files (:mod:`hmrec.bench.shapes`);
- ``sweep``: one setting's values, each refreshed and judged on one week (:mod:`hmrec.bench.sweep`);
- ``serving``: the champion's MLflow pyfunc of an existing run (``--set paths.lakehouse=DIR``): load time,
  requests per second and p50/p99 latency for one customer and one basket per request, in process and
  through ``mlflow models serve`` (:mod:`hmrec.bench.serving`);
- ``rankers``: LightGBM and XGBoost trained on the same validation week's candidates (:mod:`hmrec.bench.rankers`);
- ``weekly``: the refresh after one appended week, warm-started, beside the full refresh (:mod:`hmrec.bench.weekly`);
- ``warm``: a backtest with warm starts beside one that retrains cold, week by week (:mod:`hmrec.bench.warm`);
- ``pairs``: the co-purchase source's article pairs of each window before the as-of (:mod:`hmrec.bench.pairs`).

Results are printed and written to ``bench/results/``.
"""
from __future__ import annotations

import argparse
import datetime as dt

from hmrec.bench.csv import bench_csv
from hmrec.bench.etl import bench_etl
from hmrec.bench.matrix import bench_matrix
from hmrec.bench.pairs import bench_pairs
from hmrec.bench.peers import bench_all
from hmrec.bench.rankers import bench_rankers
from hmrec.bench.score import bench_score
from hmrec.bench.serving import bench_serving
from hmrec.bench.shapes import bench_shapes
from hmrec.bench.sweep import bench_sweep
from hmrec.bench.train import bench_train
from hmrec.bench.warm import bench_warm
from hmrec.bench.weekly import bench_weekly
from hmrec.synth.params import PROFILES


def main(argv: list[str] | None = None) -> None:
    """Parse the benchmark's arguments and run it."""
    p = argparse.ArgumentParser(prog="python -m hmrec.bench", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["etl", "train", "score", "all", "csv", "matrix", "shapes", "sweep", "serving",
                                    "rankers", "weekly", "warm", "pairs"])
    p.add_argument("--scale", type=float, default=None, help="1.0 is the H&M data's size (default 0.1; matrix, shapes: 0.05)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--index-kinds", "--score-jobs", dest="index_kinds", default=None,
                   help="comma-separated index kinds the whole scoring job runs with "
                        "(score: default hnsw,flat; all: default flat,hnsw)")
    p.add_argument("--parse-rounds", type=int, default=3, help="csv: turns of parsing each file each way")
    p.add_argument("--ingest-rounds", type=int, default=2, help="csv: turns of the ingest job each way")
    p.add_argument("--profiles", default=",".join(PROFILES), help="matrix, shapes: the generator profiles")
    p.add_argument("--out", default=None, help="shapes: keep the generated data here")
    p.add_argument("--grid", default=None, help="sweep: key=value1,value2,... (one setting)")
    p.add_argument("--as-of", default=None,
                   help="sweep: the cutoff, its following week judges every value (default 2020-09-09); rankers: the "
                        "as-of whose validation week trains and judges them (default 2020-09-16); weekly: the "
                        "first refresh's as-of D, the weekly one is at D+7 (default 2020-09-09); warm: the backtests' last "
                        "cutoff (default 2020-09-16); pairs: the cutoff the windows end at (default 2020-09-16)")
    p.add_argument("--windows", default=None,
                   help="pairs: comma-separated window lengths in days (default candidates.copurchase_days)")
    p.add_argument("--rounds", type=int, default=2, help="pairs: turns of each window")
    p.add_argument("--weeks", type=int, default=4, help="warm: the backtests' cutoffs, a week apart")
    p.add_argument("--requests", type=int, default=500, help="serving: requests of each kind, one row each")
    p.add_argument("--no-rest", dest="rest", action="store_false",
                   help="serving: in process only, without starting `mlflow models serve`")
    p.add_argument("--libraries", default="lightgbm,xgboost-ndcg,xgboost-map",
                   help="rankers: the libraries to compare (lightgbm, lightgbm-first: on the features before "
                        "item_price_std, item_buyer_age_mean and age_vs_item_buyers, xgboost-ndcg, xgboost-map)")
    args = p.parse_args(argv)
    kinds = tuple(args.index_kinds.split(",")) if args.index_kinds else None
    scale = args.scale if args.scale is not None else (0.05 if args.what in ("matrix", "shapes") else 0.1)
    if args.what == "etl":
        bench_etl(scale, args.seed, args.overrides)
    elif args.what == "train":
        bench_train(scale, args.seed, args.overrides)
    elif args.what == "csv":
        bench_csv(scale, args.seed, args.overrides, args.parse_rounds, args.ingest_rounds)
    elif args.what == "score":
        bench_score(scale, args.seed, args.overrides, *([kinds] if kinds else []))
    elif args.what == "all":
        bench_all(scale, args.seed, args.overrides, *([kinds] if kinds else []))
    elif args.what == "sweep":
        if not args.grid:
            p.error("sweep needs --grid key=value1,value2,...")
        bench_sweep(scale, args.seed, args.overrides, dt.date.fromisoformat(args.as_of or "2020-09-09"), args.grid)
    elif args.what == "serving":
        bench_serving(scale, args.seed, args.overrides, args.requests, args.rest)
    elif args.what == "rankers":
        bench_rankers(scale, args.overrides, dt.date.fromisoformat(args.as_of or "2020-09-16"), args.libraries.split(","))
    elif args.what == "weekly":
        bench_weekly(scale, args.seed, args.overrides, dt.date.fromisoformat(args.as_of or "2020-09-09"))
    elif args.what == "warm":
        bench_warm(scale, args.seed, args.overrides, dt.date.fromisoformat(args.as_of or "2020-09-16"), args.weeks)
    elif args.what == "pairs":
        windows = [int(w) for w in args.windows.split(",")] if args.windows else None
        bench_pairs(scale, args.seed, args.overrides, dt.date.fromisoformat(args.as_of or "2020-09-16"), windows,
                    args.rounds)
    elif args.what == "matrix":
        bench_matrix(scale, args.seed, args.overrides, args.profiles.split(","))
    else:
        bench_shapes(scale, args.seed, args.profiles.split(","), args.out)


if __name__ == "__main__":
    main()
