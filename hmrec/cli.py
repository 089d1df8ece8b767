"""hmrec: a top-K list of products for every customer of a fashion retailer, from its purchase history.

hmrec reads the three files of the H&M Kaggle data (articles.csv, customers.csv,
transactions_train.csv; `hmrec generate` writes a sample of the same shape) and
runs a refresh as PySpark batch jobs over Delta tables: check and load the files,
build features, split by time at the as-of date, count popularity, train a
two-tower retrieval model (PyTorch, registered in MLflow), index it with FAISS,
write every customer's list and evaluate on the week after the as-of date against
popularity and repurchase baselines. `hmrec recommend` then answers for one
customer in about a second, without Spark.

Every stage is also ``spark-submit jobs/<stage>.py`` with the same arguments;
those files call :func:`main` with the stage name first.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Callable, Sequence

from hmrec import progress
from hmrec.config import Config, load_config
from hmrec.errors import GateFailed, HmrecError
from hmrec.lake import lease, tables
from hmrec.lake.tables import Table
from hmrec.next_steps import next_steps, print_next_steps

APPEND_HELP = ("the --data directory holds a new batch of transactions_train.csv (articles.csv and customers.csv optional, upserted): "
               "its rows of dates after the last one ingested are checked and appended; a date already ingested "
               "must repeat its rows exactly and is left out")
ALLOW_SHRINK_HELP = ("accept input that replaces a bronze table with far fewer rows, or whose rows are mostly "
                     "rejected (sets ingest.min_keep_share=0 and ingest.max_reject_share=1)")
STAGES = ["ingest", "features", "split", "popularity", "choose", "train", "index", "rank", "candidates", "gate",
          "score", "evaluate", "card"]
GATE_EXIT = GateFailed.exit_status

EPILOG = """\
a first run (about 2 minutes on 2 cores):
  hmrec generate --out data/demo --scale 0.005 --seed 42
  hmrec run --data data/demo --as-of 2020-09-16 --set paths.lakehouse=./lakehouse/demo
  hmrec recommend --set paths.lakehouse=./lakehouse/demo --customer-id ID --history 5

`hmrec COMMAND --help` says what a command reads and writes. Settings: hmrec/conf/base.yaml,
layered under --conf FILE (default conf/local.yaml) and --set key=value."""


def _names(*items: Table | str) -> str:
    return ", ".join(str(t) for t in items)


def _stage_text(what: str, reads: str, writes: str, example: str) -> tuple[str, str]:
    """(description, epilog) of a subcommand: what it does, reads and writes; an example."""
    return f"{what}\n\nreads:  {reads}\nwrites: {writes}", f"example:\n  {example}"


T = tables
# What each command reads and writes (tables by their catalogue names) and an example.
TEXTS: dict[str, tuple[str, str, str, str]] = {
    "generate": ("Write an H&M-schema data set with planted structure (docs/DATA.md).",
                 "nothing",
                 "OUT/articles.csv, OUT/customers.csv, OUT/transactions_train.csv, OUT/planted/ (the ground truth)",
                 "hmrec generate --out data/demo --scale 0.005 --seed 42"),
    "ingest": ("Check the three CSV files and load them into the bronze tables; rows that fail a check go "
               "to the rejects table with the reason. Skipped when the files are unchanged. When "
               "transactions_train.csv has only grown (every date ingested before has the same rows, by per-date "
               "counts and checksums), only its new dates are checked and appended and articles and customers "
               "are upserted; a file whose earlier rows changed is ingested whole, with a line naming the date. "
               "--append takes a directory holding only the new batch.",
               "DATA/articles.csv, DATA/customers.csv, DATA/transactions_train.csv",
               _names(*T.written_by("ingest")),
               "hmrec ingest --data data/demo"),
    "features": ("Stable integer ids, the indexed interactions, and the user and item features of one as-of date.",
                 _names(T.ARTICLES, T.CUSTOMERS, T.TRANSACTIONS),
                 _names(*T.written_by("features")),
                 "hmrec features --as-of 2020-09-16"),
    "split": ("Split the interactions at the as-of date: training rows before it (its last week is the "
              "validation week), the holdout week from it.",
              _names(T.INTERACTIONS),
              _names(*T.written_by("split")),
              "hmrec split --as-of 2020-09-16"),
    "popularity": ("The most bought articles of the last days before the as-of, globally and per age segment.",
                   _names(T.INTERACTIONS, T.CUSTOMERS, T.CUSTOMER_INDEX, T.ARTICLES, T.ARTICLE_INDEX),
                   _names(*T.written_by("popularity")),
                   "hmrec popularity --as-of 2020-09-16"),
    "choose": ("Decide the settings that say auto (train.epochs, each customer group's list plan) on the "
               "validation week, with the model fitted at its first day (hmrec run fits it first).",
               f"the fit model version and its index, {_names(T.VALIDATION, T.USER_FEATURES, T.POPULARITY)}",
               f"{_names(*T.written_by('choose'))}, tags and metrics on the fit model's MLflow run",
               "hmrec choose --as-of 2020-09-16"),
    "train": ("Train the two-tower model on the training rows and register it in MLflow. With "
              "train.epochs: auto it trains the epoch count chosen on the validation week. With "
              "train.warm_start: auto (the default) it starts from the champion's weights when the champion is at "
              "most train.warm_start_max_age_days old and trains train.warm_epochs on the last train.warm_train_days "
              "days; --set train.warm_start=off trains cold.",
              _names(T.TRAIN, T.USER_FEATURES, T.ITEM_FEATURES),
              "an MLflow run and a registered model version (paths.mlflow_tracking_uri; "
              "default: sqlite file <lakehouse>/mlflow.db), checkpoints under <lakehouse>/checkpoints",
              "hmrec train --as-of 2020-09-16"),
    "index": ("Embed every article with the model and build the FAISS index (index.kind).",
              f"the registered model version, {T.ITEM_FEATURES}",
              f"{_names(*T.written_by('index'))}, <lakehouse>/indexes/<version>/",
              "hmrec index --as-of 2020-09-16"),
    "candidates": ("Every customer's candidates from several sources (the model's FAISS neighbours, own "
                   "purchases, other colours of them, the age segment's popular articles, trending ones), each "
                   "with every source's score and rank and the ranker's features; when the served model version "
                   "has its ranker (hmrec rank ran), each candidate's ranker score and place in its customer's "
                   "list, so scoring reads only the best. With --role fit: at the fit "
                   "cutoff (as-of minus split.validation_days) with the fit model, for the validation week's "
                   "buyers, and each source's recall on that week.",
                   f"the model version and its index, {_names(T.TRAIN, T.USER_FEATURES, T.ITEM_FEATURES, T.POPULARITY, T.ARTICLES)}"
                   f"; with --role fit also {T.VALIDATION}",
                   _names(*T.written_by("candidates")),
                   "hmrec candidates --as-of 2020-09-16 --role fit"),
    "rank": ("Train the ranker (LightGBM lambdarank) on the fit cutoff's candidates labelled by the validation "
             "week, early-stopped on a held-out share of that week's buyers; its figures against the blend's "
             "for them; attached to the served model version.",
             f"{_names(T.CANDIDATES, T.VALIDATION, T.USER_FEATURES, T.POPULARITY)}, the fit and served model versions",
             "ranker/booster.txt and ranker/ranker.json on the served version's MLflow run, their checksums as tags",
             "hmrec rank --as-of 2020-09-16"),
    "gate": ("Judge the serve model version of the as-of before it is published: finite embeddings, the share "
             "of popularity-only lists, catalogue coverage, and the lift of MAP@12 over popularity on the "
             "validation week (at least gate.min_lift, and within gate.tolerance of the champion's). Exits with "
             f"status {GATE_EXIT} when it fails; the decision goes to the version's gate.* tags.",
             f"the serve model version, {_names(T.CHOICES, T.ITEM_EMBEDDINGS, T.USER_FEATURES, T.CUSTOMERS)}, "
             "the champion's tags",
             "gate.* tags on the model version and its MLflow run",
             "hmrec gate --as-of 2020-09-16"),
    "score": ("Write every customer's list of score.k articles: the ranker's best candidates, filled from the "
              "popular ones (score.method: ranker); or each customer group (cold, lapsed, active) by its plan: "
              "recent purchases, the model's nearest articles, then popular ones (score.method: blend).",
              f"the model version and its index (or its ranker and {T.CANDIDATES}), "
              f"{_names(T.USER_FEATURES, T.TRAIN, T.POPULARITY, T.CHOICES)}",
              f"{_names(*T.written_by('score'))} (replaced whole, one commit); the model version becomes the "
              "champion (MLflow alias) and gets an MLflow pyfunc flavour (its blend, for customer ids and "
              "baskets: README \"Serving through MLflow\"). `hmrec run` scores only past the gate; by hand, "
              "prefer `hmrec promote`",
              "hmrec score --as-of 2020-09-16"),
    "evaluate": ("Judge the served lists and the baselines on the holdout week: everyone, then by purchase "
                 "history (cold, lapsed, active), age band (age:25-34, ..., age:unknown) and sales channel "
                 "(channel:store, channel:online, channel:none), each with its customer count and bootstrap 95% "
                 "intervals.",
                 _names(T.RECOMMENDATIONS, T.HOLDOUT, T.TRAIN, T.POPULARITY, T.USER_FEATURES, T.CUSTOMERS,
                        T.ITEM_EMBEDDINGS),
                 f"{_names(*T.written_by('evaluate'))}, <lakehouse>/reports/<as_of>/ "
                 "(metrics.json, report.html, plots), metrics on the model's MLflow run",
                 "hmrec evaluate --as-of 2020-09-16"),
    "card": ("Write the model card of a serve version: model details, training data lineage, evaluation on "
             "the validation week (overall and per history group) and the holdout week (overall, per history "
             "group, age band and sales channel), with customer counts, bootstrap 95% intervals and the lift over "
             "each baseline, exposure and popularity bias of its lists, intended and out-of-scope uses, "
             "limitations, the gate's decision.",
             f"the model version and its run, {_names(T.TRAIN, T.CHOICES, T.RECOMMENDATIONS, T.ARTICLES)}, "
             "<lakehouse>/reports/<as_of>/metrics.json",
             "model_card.md and model_card.json: artifacts of the version's MLflow run, "
             "<lakehouse>/reports/<as_of>/v<version>/ (with a copy of its report) and, when its lists are served, "
             "<lakehouse>/reports/<as_of>/ (linked from report.html)",
             "hmrec card --as-of 2020-09-16"),
    "export": ("Write the served lists of one as-of for every customer of the customers table to one CSV file. "
               "kaggle: the H&M competition's submission, customer_id,prediction with 12 distinct ten-digit article "
               "ids by rank, a short or missing list filled from the global popularity of the as-of; csv: "
               "customer_id,rank,article_id,score,source. Written to a temporary file, then renamed.",
               f"{_names(T.RECOMMENDATIONS, T.CUSTOMERS, T.POPULARITY)} (the lists of that as-of, also from the "
               "served table's history)",
               "OUT (one CSV file with a header)",
               "hmrec export --as-of 2020-09-16 --format kaggle --out submission.csv"),
    "run": ("The scheduled refresh: ingest, then every stage for one as-of date. A stage already done for "
            "this as-of on the same data and settings is skipped (--force reruns it); after a crash the same "
            "command resumes at the stage that failed. The serve model is published only when it clears the "
            f"gate; when it does not, the champion's lists stay served and the run exits with status {GATE_EXIT}. "
            "Ends by printing what to look at next.",
            "DATA/*.csv",
            "every table above, the MLflow run and model version, the index, the report and the model card; "
            f"a row a stage in {T.STAGE_RUNS}",
            "hmrec run --data data/demo --as-of 2020-09-16 --set paths.lakehouse=./lakehouse/demo"),
    "backtest": ("The refresh at N weekly cutoffs, each judged on its following week: a per-week table, "
                 "mean and spread.",
                 "DATA/*.csv",
                 f"what `hmrec run` writes for each cutoff, summary rows in {T.EVAL_METRICS}, "
                 "<lakehouse>/reports/backtest-<as_of>-<N>w/",
                 "hmrec backtest --data data/demo --as-of 2020-09-16 --weeks 4"),
    "promote": ("Publish a registered serve version by hand, whatever its gate said: score its lists at its "
                "as-of (with scoring's checks), evaluate them, and move the MLflow alias champion to it.",
                "the model version, its index and the tables `hmrec score` reads",
                f"{T.RECOMMENDATIONS} (one commit), {T.EVAL_METRICS}, the report, the champion alias",
                "hmrec promote --version 7"),
    "rollback": (f"Restore {T.RECOMMENDATIONS} to the lists before the ones now served (Delta RESTORE) and "
                 "move the champion alias to their model version. Twice goes back two publishes.",
                 f"the history of {T.RECOMMENDATIONS}",
                 f"{T.RECOMMENDATIONS} (a RESTORE commit), the champion alias",
                 "hmrec rollback"),
    "compare": ("Print registered model versions side by side: aliases, as-of, role, the gate's decision and "
                "figures (validation lift, coverage, fallback share) and the holdout metrics of every method.",
                "the MLflow registry (paths.mlflow_tracking_uri)",
                "nothing",
                "hmrec compare --versions 5 7"),
    "recommend": ("Print one customer's stored list, read from the Delta tables without Spark (about a second).",
                  f"{_names(T.RECOMMENDATIONS, T.ARTICLES)}; with --history also {T.TRANSACTIONS}",
                  "nothing",
                  "hmrec recommend --set paths.lakehouse=./lakehouse/demo --customer-id ID --history 5"),
}

# The one-line help of each stage in `hmrec --help`.
STAGE_HELP = {
    "features": "stable ids, indexed interactions, user and item features",
    "split": "training rows and validation week before the as-of date, holdout week from it",
    "popularity": "the most bought articles, globally and per age segment",
    "train": "train the two-tower model and register it in MLflow",
    "index": "embed the articles and build the FAISS index",
    "score": "write every customer's top-K list",
    "evaluate": "judge the lists and the baselines on the holdout week; the report",
    "choose": "decide the auto settings on the validation week",
    "card": "write the model card of a serve version",
    "gate": f"judge the serve model before it is published (exit status {GATE_EXIT} when it fails)",
    "candidates": "every customer's candidates from several sources, with the ranker's features",
    "rank": "train the ranker on the validation week and attach it to the served model version",
}

SCORE_HELP = """\
with score.method ranker (the default) the source column names the generator that proposed the
article (model: the two-tower retrieval, repurchase, colour: another colour of a purchase,
popular, trending) and the score is the ranker's; articles filled from the popularity list
carry their recent purchase count. With score.method blend the score column
compares only within one source: the model's match of customer and article for model and repurchase rows,
the article's recent purchases in the customer's age segment for popular rows. Recent purchases
lead the list, latest first, so scores are not in rank order."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date of the form YYYY-MM-DD") from None


def add_config(p: argparse.ArgumentParser) -> None:
    """Options every command shares: config layering and verbosity."""
    p.add_argument("--conf", default=None, help="YAML config layered over the defaults (default: conf/local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--verbose", action="store_true",
                   help="Spark's, ivy's and the libraries' logs at INFO, and each stage's full record "
                        "(same as --set logging.level=INFO)")


def add_spark(p: argparse.ArgumentParser) -> None:
    """Options of the commands that start Spark."""
    p.add_argument("--master", default=None, help="Spark master (spark-submit's --master wins)")
    p.add_argument("--spark-conf", action="append", default=[], metavar="K=V",
                   help="extra Spark setting, e.g. --spark-conf spark.executor.memory=4g (repeatable)")


def add_wait(p: argparse.ArgumentParser) -> None:
    """``--wait``, for the commands that hold the lakehouse's lease while they run."""
    p.add_argument("--wait", action="store_true",
                   help="when another job holds the lakehouse's lease, wait for it instead of exiting with status 3")


def add_common(p: argparse.ArgumentParser, command: str) -> None:
    """Options of every command that starts Spark: config layering, verbosity and Spark settings, and
    ``--wait`` when ``command`` takes the lakehouse's lease (every one not in lease.READ_ONLY_COMMANDS)."""
    add_config(p)
    add_spark(p)
    if command not in lease.READ_ONLY_COMMANDS:
        add_wait(p)


def _command(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    what, reads, writes, example = TEXTS[name]
    description, epilog = _stage_text(what, reads, writes, example)
    return sub.add_parser(name, help=help_text, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    """The ``hmrec`` argument parser with one subcommand per stage, plus run, backtest and recommend."""
    parser = argparse.ArgumentParser(prog="hmrec", description=__doc__.split("\n\nEvery stage")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "generate", "write H&M-schema CSVs with planted structure")
    p.add_argument("--out", required=True, help="directory for the three CSV files")
    p.add_argument("--scale", type=float, default=None, help="1.0 is full H&M size (default: generate.scale)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: generate.seed)")
    p.add_argument("--profile", default="default",
                   help="shape of the data: default, no-repeat, trend, sparse or big-catalogue (docs/DATA.md)")
    add_config(p)

    p = _command(sub, "ingest", f"CSV files into bronze Delta tables, bad rows to {tables.REJECTS}")
    p.add_argument("--data", required=True, help="directory holding articles.csv, customers.csv, transactions_train.csv")
    p.add_argument("--append", action="store_true", help=APPEND_HELP)
    p.add_argument("--allow-shrink", action="store_true", help=ALLOW_SHRINK_HELP)
    add_common(p, "ingest")

    for stage in STAGES[1:]:
        p = _command(sub, stage, STAGE_HELP[stage])
        p.add_argument("--as-of", type=_date, required=stage != "features",
                       help="cutoff date YYYY-MM-DD" + (" (default: the day after the last transaction)" if stage == "features" else ""))
        if stage == "train":
            p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
        if stage == "candidates":
            p.add_argument("--role", choices=("serve", "fit"), default="serve",
                           help="serve: at the as-of with the served model; fit: at the fit cutoff with the fit "
                                "model, for the validation week's buyers (default serve)")
        if stage in ("index", "score", "evaluate", "card"):
            p.add_argument("--model-version", default=None, help="registered model version (default: the latest for this as-of)")
        add_common(p, stage)

    p = _command(sub, "run", "the scheduled refresh: every stage in order for one as-of date")
    p.add_argument("--data", required=True, help="directory holding the three CSV files")
    p.add_argument("--as-of", type=_date, required=True, help="cutoff date YYYY-MM-DD")
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs already exist")
    p.add_argument("--append", action="store_true", help=APPEND_HELP)
    p.add_argument("--allow-shrink", action="store_true", help=ALLOW_SHRINK_HELP)
    p.add_argument("--until", choices=STAGES, default=None, metavar="STAGE",
                   help="stop after this stage (one of: " + ", ".join(STAGES) + "); the stages before it that are "
                        "not done yet run first, as in dags/hmrec_weekly.py's one task per stage")
    add_common(p, "run")

    p = _command(sub, "backtest", "the refresh at N weekly cutoffs, each judged on its following week")
    p.add_argument("--data", required=True, help="directory holding the three CSV files")
    p.add_argument("--as-of", type=_date, required=True, help="the last cutoff YYYY-MM-DD; the others are 7, 14, ... days before")
    p.add_argument("--weeks", type=int, default=4, help="number of weekly cutoffs (default 4)")
    p.add_argument("--force", action="store_true", help="rerun stages whose outputs already exist")
    add_common(p, "backtest")

    p = _command(sub, "promote", "publish a registered model version by hand and make it the champion")
    p.add_argument("--version", required=True, help="registered model version (a serve version)")
    add_common(p, "promote")

    p = _command(sub, "rollback", "restore the previously served lists and their champion")
    add_common(p, "rollback")

    p = _command(sub, "compare", "print model versions' figures side by side")
    p.add_argument("--versions", nargs="+", required=True, metavar="V", help="two or more registered versions")
    add_config(p)

    p = _command(sub, "export", "write the served lists of one as-of to a file, e.g. the Kaggle submission")
    p.add_argument("--as-of", type=_date, required=True, help="the as-of date YYYY-MM-DD of the served lists")
    p.add_argument("--format", dest="export_format", default="kaggle", metavar="FORMAT",
                   help="kaggle (customer_id,prediction; 12 articles each) or csv (one row per recommendation); "
                        "default kaggle")
    p.add_argument("--out", required=True, help="the CSV file to write; its directory must exist")
    add_common(p, "export")

    p = _command(sub, "recommend", "print one customer's precomputed recommendations")
    p.epilog += f"\n\n{SCORE_HELP}"
    p.add_argument("--customer-id", required=True, help="64-character customer id, as in customers.csv")
    p.add_argument("--k", type=int, default=None, help="how many to show (default: all stored, i.e. score.k of the last refresh)")
    p.add_argument("--history", type=int, default=0, metavar="N",
                   help="also show the customer's last N purchases before the list's as-of date "
                        "(scans the transactions table)")
    add_config(p)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of a command line: defaults, --conf, --set, then --master, --spark-conf and --verbose."""
    overrides = list(args.overrides)
    if getattr(args, "allow_shrink", False):
        overrides += ["ingest.min_keep_share=0", "ingest.max_reject_share=1"]
    if getattr(args, "master", None):
        overrides.append(f"spark.master={args.master}")
    for kv in getattr(args, "spark_conf", []):
        overrides.append(f"spark.conf.{kv}")
    if args.verbose:
        overrides.append("logging.level=INFO")
    return load_config(args.conf, overrides)


def _with_spark(cfg: Config, fn: Callable) -> object:
    """``fn(spark)`` with the session of ``cfg``."""
    from hmrec.lake.spark import get_spark  # imported here: see dispatch

    return fn(get_spark(cfg))


def dispatch(args: argparse.Namespace, cfg: Config) -> object:
    """Run the parsed command with ``cfg``; returns what its stage function returns."""
    # Each command imports only its own stage, here: `hmrec recommend` and `--help` must not
    # pay for importing Spark's session code, torch and MLflow.
    cmd = args.command
    if cmd == "generate":
        from hmrec.synth.generate import generate

        return generate(cfg, out=args.out, scale=args.scale, seed=args.seed, profile=args.profile)
    if cmd == "recommend":
        from hmrec.serve.recommend import recommend

        return recommend(cfg, customer_id=args.customer_id, k=args.k, history=args.history)
    if cmd == "ingest":
        from hmrec.etl.ingest import ingest

        return _with_spark(cfg, lambda spark: ingest(cfg, spark, data_dir=args.data, append=args.append))
    if cmd == "run":
        from hmrec.pipeline import run

        results = _with_spark(cfg, lambda spark: run(cfg, spark, data_dir=args.data, as_of=args.as_of, force=args.force,
                                                       append=args.append, until=args.until))
        if args.until is None:
            print_next_steps(next_steps(cfg, args.as_of, args.data, invocation_flags(args)))
        return results
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
    if cmd == "choose":
        from hmrec.evaluation.choose import choose

        return _with_spark(cfg, lambda spark: choose(cfg, spark, as_of=args.as_of))
    if cmd == "train":
        from hmrec.train.job import train

        return _with_spark(cfg, lambda spark: train(cfg, spark, as_of=args.as_of, resume=args.resume))
    if cmd == "index":
        from hmrec.serve.index import build_index

        return _with_spark(cfg, lambda spark: build_index(cfg, spark, as_of=args.as_of, model_version=args.model_version))
    if cmd == "gate":
        from hmrec.governance.gate import gate

        return _with_spark(cfg, lambda spark: gate(cfg, spark, as_of=args.as_of))
    if cmd == "card":
        from hmrec.governance.card import write_card

        return _with_spark(cfg, lambda spark: write_card(cfg, spark, as_of=args.as_of, model_version=args.model_version))
    if cmd == "promote":
        from hmrec.governance.publish import promote

        return _with_spark(cfg, lambda spark: promote(cfg, spark, version=args.version))
    if cmd == "rollback":
        from hmrec.governance.publish import rollback

        return _with_spark(cfg, lambda spark: rollback(cfg, spark))
    if cmd == "compare":
        from hmrec.governance.publish import compare

        if len(args.versions) < 2:
            raise HmrecError(f"--versions needs two or more versions, got {args.versions}")
        print(compare(cfg, args.versions), flush=True)
        return None
    if cmd == "candidates":
        from hmrec.rank.candidates import candidates

        return _with_spark(cfg, lambda spark: candidates(cfg, spark, as_of=args.as_of, role=args.role))
    if cmd == "rank":
        from hmrec.rank.ranker import rank

        return _with_spark(cfg, lambda spark: rank(cfg, spark, as_of=args.as_of))
    if cmd == "score":
        from hmrec.serve.score import score

        return _with_spark(cfg, lambda spark: score(cfg, spark, as_of=args.as_of, model_version=args.model_version))
    if cmd == "evaluate":
        from hmrec.evaluation.evaluate import evaluate

        return _with_spark(cfg, lambda spark: evaluate(cfg, spark, as_of=args.as_of, model_version=args.model_version))
    if cmd == "export":
        from hmrec.serve.export import check_destination, export

        check_destination(args.export_format, args.out)  # before Spark starts: a wrong path fails at once
        return _with_spark(cfg, lambda spark: export(cfg, spark, as_of=args.as_of, fmt=args.export_format, out=args.out))
    raise SystemExit(f"unknown command {cmd}")


def invocation_flags(args: argparse.Namespace) -> list[str]:
    """The config options of this command line (--conf, --set), to repeat in the commands printed next."""
    flags = ["--conf", args.conf] if args.conf else []
    for assignment in args.overrides:
        flags += ["--set", assignment]
    return flags


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the command; 0 on success, 2 on a user error,
    3 on a busy lakehouse, 4 when the model failed the gate."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        progress.configure(cfg.logging.level)
        with lease.for_command(cfg, args.command, wait=getattr(args, "wait", False)):
            dispatch(args, cfg)
    except lease.LakehouseBusy as exc:
        print(f"hmrec {args.command}: error: {exc}", file=sys.stderr)
        return lease.BUSY_EXIT
    except BrokenPipeError:
        # The reader of the output went away (`hmrec recommend ... | head`): not an error. Point
        # stdout at /dev/null so that Python's flush at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except GateFailed as exc:
        # a model that did not clear the gate: the champion's lists stay served; a scheduler alerts on this status
        print(f"hmrec {args.command}: gate failed: {exc}", file=sys.stderr)
        return GATE_EXIT
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
