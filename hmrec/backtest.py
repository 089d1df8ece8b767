"""`hmrec backtest`: the refresh at several weekly cutoffs, each judged on the week that follows it.

    hmrec backtest --data DIR --as-of 2020-09-16 --weeks 4

runs :func:`hmrec.pipeline.run` at the cutoffs DATE - 7(N-1), ..., DATE - 7,
DATE (oldest first), so every cutoff has its own features, models, choices
and lists, computed from data before it only, and is judged on its holdout
week. Finished stages are reused: a cutoff's fitted choices come from the
cutoff a week earlier, so a backtest after a refresh redoes little.

It writes ``reports/backtest-<DATE>-<N>w/`` under the lakehouse: a table per
week of every method's recall, NDCG and MAP at K (``weeks.csv``,
``summary.md``), the mean and standard deviation across weeks
(``summary.json``), a plot of MAP@K by week and method (``map_by_week.png``),
and summary rows in ``tables.EVAL_METRICS`` (model version
``backtest-<N>w``, metrics suffixed ``_mean`` and ``_std``).
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from pyspark.sql import SparkSession

from hmrec import pipeline
from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import storage, tables
from hmrec.progress import log, stage

WEEK = dt.timedelta(days=7)


def cutoffs(as_of: dt.date, weeks: int) -> list[dt.date]:
    """The backtest's cutoffs, oldest first: as_of - 7(weeks-1), ..., as_of."""
    if weeks < 1:
        raise HmrecError(f"--weeks {weeks}: give at least one week")
    return [as_of - WEEK * i for i in range(weeks - 1, -1, -1)]


def week_table(docs: dict[dt.date, dict], k: int) -> pd.DataFrame:
    """One row per (cutoff, method): users, recall@k, ndcg@k, map@k from each cutoff's metrics document."""
    rows = []
    for cutoff, doc in docs.items():
        users = doc.get("users", {}).get("all", 0)
        for method, values in doc.get("methods", {}).items():
            rows.append({
                "as_of": cutoff.isoformat(), "method": method, "users": users,
                **{m: values.get(m) for m in (f"recall@{k}", f"ndcg@{k}", f"map@{k}")},
            })
    return pd.DataFrame(rows, columns=["as_of", "method", "users", f"recall@{k}", f"ndcg@{k}", f"map@{k}"])


def summarise(weeks: pd.DataFrame, k: int) -> pd.DataFrame:
    """Mean and standard deviation across weeks of each method's metrics (methods as rows)."""
    metrics = [f"recall@{k}", f"ndcg@{k}", f"map@{k}"]
    grouped = weeks.groupby("method")[metrics]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=0).add_suffix("_std"))
    out["weeks"] = weeks.groupby("method")["as_of"].nunique()
    return out.sort_values(f"map@{k}_mean", ascending=False)


def plot_map_by_week(weeks: pd.DataFrame, k: int, path: Path) -> Path:
    """MAP@k by week, one line per method."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for method, group in weeks.groupby("method"):
        group = group.sort_values("as_of")
        ax.plot(group["as_of"], group[f"map@{k}"], marker="o", label=method)
    ax.set_xlabel("cutoff (each judged on the 7 days from it)")
    ax.set_ylabel(f"MAP@{k}")
    ax.set_title(f"MAP@{k} by week")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _markdown(df: pd.DataFrame, digits: int = 4) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in r.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_backtest_report(directory: Path, weeks: pd.DataFrame, summary: pd.DataFrame, k: int,
                          skipped: list[str]) -> list[Path]:
    """weeks.csv, summary.json, summary.md and map_by_week.png in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "weeks.csv", directory / "summary.json", directory / "summary.md"]
    weeks.to_csv(written[0], index=False)
    written[1].write_text(json.dumps({
        "k": k, "weeks": sorted(weeks["as_of"].unique().tolist()), "without_holdout": skipped,
        "methods": {m: {c: (None if pd.isna(v) else round(float(v), 6)) for c, v in row.items()}
                    for m, row in summary.iterrows()},
    }, indent=2))
    table = summary.reset_index()
    written[2].write_text(
        f"# Backtest, {len(weeks['as_of'].unique())} weeks, K = {k}\n\n"
        "Each cutoff's own refresh, judged on the 7 days from it.\n\n## Mean and standard deviation across weeks\n\n"
        + _markdown(table) + "\n\n## By week\n\n" + _markdown(weeks) + "\n"
        + (f"\nCutoffs without a holdout week (not judged): {', '.join(skipped)}\n" if skipped else "")
    )
    written.append(plot_map_by_week(weeks, k, directory / "map_by_week.png"))
    return written


def summary_rows(as_of: dt.date, weeks_n: int, summary: pd.DataFrame) -> list[tuple]:
    """EVAL_METRICS rows of the backtest summary: model_version backtest-<N>w, segment all."""
    version = f"backtest-{weeks_n}w"
    return [(as_of, version, method, "all", metric, float(value))
            for method, row in summary.iterrows() for metric, value in row.items() if not pd.isna(value)]


def backtest(cfg: Config, spark: SparkSession, data_dir: str, as_of: dt.date, weeks: int, force: bool = False) -> dict:
    """Run the refresh at each cutoff and report every method across the weeks."""
    k = cfg.evaluate.k
    with stage("backtest") as summary_line:
        docs: dict[dt.date, dict] = {}
        skipped: list[str] = []
        for i, cutoff in enumerate(cutoffs(as_of, weeks), 1):
            log("backtest", f"cutoff {i}/{weeks}: {cutoff}")
            # every week is scored, whatever its gate says: the backtest judges them all
            pipeline.run(cfg, spark, data_dir=data_dir, as_of=cutoff, force=force, enforce_gate=False)
            path = Path(cfg.lakehouse) / "reports" / cutoff.isoformat() / "metrics.json"
            doc = json.loads(path.read_text()) if path.exists() else {}
            if doc.get("methods"):
                docs[cutoff] = doc
            else:
                skipped.append(cutoff.isoformat())
        if not docs:
            raise HmrecError(
                f"none of the cutoffs {cutoffs(as_of, weeks)[0]} .. {as_of} has a holdout week to judge: "
                f"choose an --as-of at least 7 days before the last purchase"
            )
        table = week_table(docs, k)
        summ = summarise(table, k)
        directory = Path(cfg.lakehouse) / "reports" / f"backtest-{as_of.isoformat()}-{weeks}w"
        write_backtest_report(directory, table, summ, k, skipped)
        storage.write_partition(spark.createDataFrame(summary_rows(as_of, weeks, summ), tables.EVAL_METRICS.schema),
                                cfg, tables.EVAL_METRICS, as_of, model_version=f"backtest-{weeks}w")
        print(_markdown(summ.reset_index()), flush=True)
        best = summ.index[0]
        summary_line.update(weeks=len(docs), best=best, best_map=round(float(summ.loc[best, f"map@{k}_mean"]), 5),
                            report=str(directory))
    return {"weeks": table, "summary": summ, "report": str(directory)}
