"""Command line: collects arguments and calls one keyword function per stage.

Every stage is also ``spark-submit jobs/<stage>.py`` with the same arguments;
those files call :func:`main` with the stage name first.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Callable, Sequence

from hmrec.config import Config, load_config
from hmrec.errors import HmrecError
from hmrec.lake import lease

ALLOW_SHRINK_HELP = ("accept input that replaces a bronze table with far fewer rows, or whose rows are mostly "
                     "rejected (sets ingest.min_keep_share=0 and ingest.max_reject_share=1)")
STAGES = ["ingest", "features", "split", "popularity", "train", "index", "score", "evaluate"]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date of the form YYYY-MM-DD") from None


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every command shares: config layering and Spark settings."""
    p.add_argument("--conf", default=None, help="YAML config layered over the defaults (default: conf/local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--master", default=None, help="Spark master (spark-submit's --master wins)")
    p.add_argument("--spark-conf", action="append", default=[], metavar="K=V",
                   help="extra Spark setting, e.g. --spark-conf spark.executor.memory=4g (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="when another job holds the lakehouse's lease, wait for it instead of exiting with status 3")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hmrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write H&M-schema CSVs with planted structure")
    p.add_argument("--out", required=True, help="directory for the three CSV files")
    p.add_argument("--scale", type=float, default=None, help="1.0 is full H&M size (default: generate.scale)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: generate.seed)")
    p.add_argument("--profile", default="default",
                   help="shape of the data: default, no-repeat, trend, sparse or big-catalogue (docs/DATA.md)")
    add_common(p)

    p = sub.add_parser("ingest", help="CSV files into bronze Delta tables, bad rows to bronze/rejects")
    p.add_argument("--data", required=True, help="directory holding articles.csv, customers.csv, transactions_train.csv")
    p.add_argument("--allow-shrink", action="store_true", help=ALLOW_SHRINK_HELP)
    add_common(p)

    for stage in STAGES[1:]:
        p = sub.add_parser(stage, help=f"the {stage} stage for one as-of date")
        p.add_argument("--as-of", type=_date, required=stage != "features",
                       help="cutoff date YYYY-MM-DD" + (" (default: the day after the last transaction)" if stage == "features" else ""))
        if stage == "train":
            p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
        if stage in ("index", "score", "evaluate"):
            p.add_argument("--model-version", default=None, help="registered model version (default: the latest for this as-of)")
        add_common(p)

    p = sub.add_parser("run", help="the scheduled refresh: every stage in order for one as-of date")
    p.add_argument("--data", required=True, help="directory holding the three CSV files")
    p.add_argument("--as-of", type=_date, required=True, help="cutoff date YYYY-MM-DD")
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs already exist")
    p.add_argument("--allow-shrink", action="store_true", help=ALLOW_SHRINK_HELP)
    add_common(p)

    p = sub.add_parser("backtest", help="the refresh at N weekly cutoffs, each judged on its following week")
    p.add_argument("--data", required=True, help="directory holding the three CSV files")
    p.add_argument("--as-of", type=_date, required=True, help="the last cutoff YYYY-MM-DD; the others are 7, 14, ... days before")
    p.add_argument("--weeks", type=int, default=4, help="number of weekly cutoffs (default 4)")
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs already exist")
    add_common(p)

    p = sub.add_parser("recommend", help="print one customer's precomputed recommendations")
    p.add_argument("--customer-id", required=True, help="64-character customer id")
    p.add_argument("--k", type=int, default=None, help="how many to show (default: all stored)")
    add_common(p)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "allow_shrink", False):
        overrides += ["ingest.min_keep_share=0", "ingest.max_reject_share=1"]
    if args.master:
        overrides.append(f"spark.master={args.master}")
    for kv in args.spark_conf:
        overrides.append(f"spark.conf.{kv}")
    return load_config(args.conf, overrides)


def _with_spark(cfg: Config, fn: Callable) -> object:
    from hmrec.lake.spark import get_spark

    return fn(get_spark(cfg))


def dispatch(args: argparse.Namespace, cfg: Config) -> object:
    cmd = args.command
    if cmd == "generate":
        from hmrec.synth.generate import generate

        return generate(cfg, out=args.out, scale=args.scale, seed=args.seed, profile=args.profile)
    if cmd == "recommend":
        from hmrec.serve.recommend import recommend

        return recommend(cfg, customer_id=args.customer_id, k=args.k)
    if cmd == "ingest":
        from hmrec.etl.ingest import ingest

        return _with_spark(cfg, lambda spark: ingest(cfg, spark, data_dir=args.data))
    if cmd == "run":
        from hmrec.pipeline import run

        return _with_spark(cfg, lambda spark: run(cfg, spark, data_dir=args.data, as_of=args.as_of, force=args.force))
    if cmd == "backtest":
        from hmrec.backtest import backtest

        return _with_spark(cfg, lambda spark: backtest(cfg, spark, data_dir=args.data, as_of=args.as_of,
                                                       weeks=args.weeks, force=args.force))
    if cmd == "features":
        from hmrec.etl.features import build_features

        return _with_spark(cfg, lambda spark: build_features(cfg, spark, as_of=args.as_of))
    if cmd == "split":
        from hmrec.etl.split import split

        return _with_spark(cfg, lambda spark: split(cfg, spark, as_of=args.as_of))
    if cmd == "popularity":
        from hmrec.etl.popularity import popularity

        return _with_spark(cfg, lambda spark: popularity(cfg, spark, as_of=args.as_of))
    if cmd == "train":
        from hmrec.train.job import train

        return _with_spark(cfg, lambda spark: train(cfg, spark, as_of=args.as_of, resume=args.resume))
    if cmd == "index":
        from hmrec.serve.index import build_index

        return _with_spark(cfg, lambda spark: build_index(cfg, spark, as_of=args.as_of, model_version=args.model_version))
    if cmd == "score":
        from hmrec.serve.score import score

        return _with_spark(cfg, lambda spark: score(cfg, spark, as_of=args.as_of, model_version=args.model_version))
    if cmd == "evaluate":
        from hmrec.evaluation.evaluate import evaluate

        return _with_spark(cfg, lambda spark: evaluate(cfg, spark, as_of=args.as_of, model_version=args.model_version))
    raise SystemExit(f"unknown command {cmd}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        with lease.for_command(cfg, args.command, wait=args.wait):
            dispatch(args, cfg)
    except lease.LakehouseBusy as exc:
        print(f"hmrec {args.command}: error: {exc}", file=sys.stderr)
        return lease.BUSY_EXIT
    except (HmrecError, FileNotFoundError) as exc:
        # Errors of the user's input or data: one clear line, no stack trace.
        print(f"hmrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        conflict = lease.concurrent_commit_message(exc)
        if conflict is None:
            raise
        print(f"hmrec {args.command}: error: {conflict}", file=sys.stderr)
        return lease.BUSY_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
