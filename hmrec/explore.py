"""Summaries and plots of input data and of a run's results, for the notebooks.

Everything here reads small samples into pandas (the demo's data, or a sample
of the real data): the notebooks only call these functions and show what they
return. Plots are :class:`matplotlib.figure.Figure` objects, made without
pyplot, so this module sets no backend and keeps no figure open: a notebook
shows a returned figure (with ``%matplotlib inline``), a script saves it.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hmrec.config import Config
from hmrec.etl.segments import age_labels
from hmrec.evaluation.report import figures_source, headline
from hmrec.lake import tables
from hmrec.lake.reader import live_files, read_matching, read_table
from hmrec.serve.recommend import article_names, purchases


def read_csvs(data_dir: str, nrows: int | None = None) -> dict[str, pd.DataFrame]:
    """The three input files as pandas frames, ids kept as strings."""
    d = Path(data_dir)
    ids = {"article_id": str, "customer_id": str}
    return {
        "articles": pd.read_csv(d / "articles.csv", dtype=ids, nrows=nrows),
        "customers": pd.read_csv(d / "customers.csv", dtype=ids, nrows=nrows),
        "transactions": pd.read_csv(d / "transactions_train.csv", dtype=ids, parse_dates=["t_dat"], nrows=nrows),
    }


def weekly_sales(tx: pd.DataFrame) -> pd.Series:
    """Purchases per week (Monday to Sunday, labelled by the Sunday), complete weeks only.

    The first and last weeks the data covers only in part (it may start on a
    Thursday and end on a Tuesday) are left out: their few days would read as
    a drop in sales.
    """
    counts = tx.set_index("t_dat").resample("W-SUN").size()
    first, last = tx["t_dat"].min().normalize(), tx["t_dat"].max().normalize()
    complete = (counts.index - pd.Timedelta(days=6) >= first) & (counts.index <= last)
    return counts[complete].rename("purchases")


def popularity_curve(tx: pd.DataFrame) -> pd.DataFrame:
    """Articles ranked by purchases, with the cumulative share of all purchases."""
    counts = tx["article_id"].value_counts().reset_index(name="purchases")
    counts["rank"] = np.arange(1, len(counts) + 1)
    counts["cumulative_share"] = counts["purchases"].cumsum() / counts["purchases"].sum()
    return counts


def repeat_purchase_share(tx: pd.DataFrame) -> float:
    """Share of purchases that re-buy an article the customer bought on an earlier day."""
    tx = tx.sort_values("t_dat")
    first_day = tx.groupby(["customer_id", "article_id"])["t_dat"].transform("min")
    return float((tx["t_dat"] > first_day).mean())


def segment_mix(customers: pd.DataFrame, tx: pd.DataFrame, buckets: list[int]) -> pd.DataFrame:
    """Customers and purchases per age segment."""
    cust = pd.DataFrame({"customer_id": customers["customer_id"], "segment": age_labels(customers["age"], buckets)})
    bought = tx.merge(cust, on="customer_id", how="left")
    return pd.DataFrame(
        {
            "customers": cust["segment"].value_counts(),
            "purchases": bought["segment"].value_counts(),
        }
    ).fillna(0).astype(int).sort_index()


def plot_input_overview(frames: dict[str, pd.DataFrame], buckets: list[int]) -> Figure:
    """Four panels: weekly sales, popularity long tail, segment mix, product groups."""
    tx, customers, articles = frames["transactions"], frames["customers"], frames["articles"]
    fig = Figure(figsize=(12, 8))
    axes = fig.subplots(2, 2)
    weekly_sales(tx).plot(ax=axes[0, 0], title="purchases per week (complete weeks; the partial first and last left out)")
    curve = popularity_curve(tx)
    axes[0, 1].loglog(curve["rank"], curve["purchases"])
    axes[0, 1].set(title="article popularity (log-log)", xlabel="rank", ylabel="purchases")
    segment_mix(customers, tx, buckets)["purchases"].plot.bar(ax=axes[1, 0], title="purchases by age segment")
    groups = tx.merge(articles[["article_id", "product_group_name"]], on="article_id")["product_group_name"]
    groups.value_counts().head(12).plot.barh(ax=axes[1, 1], title="purchases by product group")
    fig.tight_layout()
    return fig


def read_report(cfg: Config, as_of: str) -> dict:
    """The run's ``reports/<as_of>/metrics.json``."""
    return json.loads((Path(cfg.lakehouse) / "reports" / as_of / "metrics.json").read_text())


def metrics_table(report: dict) -> pd.DataFrame:
    """Methods as rows, metrics as columns, from a metrics.json report."""
    return pd.DataFrame(report["methods"]).T.sort_index()


def segment_table(report: dict) -> pd.DataFrame:
    """(segment, method) rows, metrics as columns."""
    rows = []
    for segment, methods in report.get("segments", {}).items():
        for method, values in methods.items():
            rows.append({"segment": segment, "method": method, **values})
    return pd.DataFrame(rows).set_index(["segment", "method"]).sort_index() if rows else pd.DataFrame()


def holdout_customers(cfg: Config, as_of: str, n: int = 3) -> list[str]:
    """The first ``n`` customer ids (in id order) that bought in the holdout week."""
    ids = read_table(cfg, tables.HOLDOUT, ["customer_id"], as_of)["customer_id"]
    return ids.drop_duplicates().sort_values().head(n).tolist()


NAME_COLUMNS = ["prod_name", "product_type_name", "colour_group_name"]


def _with_names(frame: pd.DataFrame, names: dict[str, dict]) -> pd.DataFrame:
    for c in NAME_COLUMNS:
        frame[c] = [names.get(a, {}).get(c) for a in frame["article_id"]]
    return frame


def customer_story(cfg: Config, customer_id: str, as_of: str,
                   history: int = 10) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One customer's (saw, judged, recommendations), with article names, product types and colours.

    ``saw``: the last ``history`` purchases before ``as_of``, what the model
    learnt from; ``judged``: the purchases of the holdout week (``as_of`` and
    the ``split.holdout_days`` after it), what the list was judged on, with
    ``in_list`` (its rank, when the list held it); ``recommendations``: the
    stored list, with ``bought_in_holdout``. Reads the Delta tables without a
    JVM, like ``hmrec recommend``.
    """
    start = dt.date.fromisoformat(as_of)
    end = start + dt.timedelta(days=cfg.split.holdout_days)
    bought = pd.DataFrame(purchases(cfg, customer_id), columns=["t_dat", "article_id"])
    saw = bought[bought["t_dat"] < start].head(history).reset_index(drop=True)
    judged = bought[(bought["t_dat"] >= start) & (bought["t_dat"] < end)].reset_index(drop=True)
    recs = pd.DataFrame(read_matching(live_files(cfg, tables.RECOMMENDATIONS, "run `hmrec score` first"), "customer_id",
                                      {customer_id}, ["article_id", "rank", "source", "score"]),
                        columns=["article_id", "rank", "source", "score"]).sort_values("rank").reset_index(drop=True)
    names = article_names(cfg, set(saw["article_id"]) | set(judged["article_id"]) | set(recs["article_id"]))
    ranks = dict(zip(recs["article_id"], recs["rank"]))
    judged["in_list"] = [ranks.get(a) for a in judged["article_id"]]
    recs["bought_in_holdout"] = recs["article_id"].isin(set(judged["article_id"]))
    return _with_names(saw, names), _with_names(judged, names), _with_names(recs, names)


def run_headline(report: dict) -> str:
    """The report's first sentence: the served lists against the baselines, and the week it is measured on."""
    return headline(report, report["k"])


def plot_methods(report: dict) -> Figure:
    """Recall, NDCG and MAP at K of every method, from the week the report leads with (holdout, else validation)."""
    k = report["k"]
    fig = Figure(figsize=(9, 3.8))
    ax = fig.add_subplot()
    source = figures_source(report)
    if source is None:
        ax.text(0.5, 0.5, f"no figures for the as-of {report['as_of']}: no purchase after it yet", ha="center")
        ax.set_axis_off()
        return fig
    week, methods, users, dates = source
    names = [f"recall@{k}", f"ndcg@{k}", f"map@{k}"]
    order = sorted(methods, key=lambda m: -methods[m].get(f"recall@{k}", 0))
    width = 0.8 / len(names)
    for i, metric in enumerate(names):
        ax.bar(np.arange(len(order)) + i * width, [methods[m].get(metric, 0) for m in order], width, label=metric)
    ax.set_xticks(np.arange(len(order)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels(order)
    ax.set_title(f"this run, as of {report['as_of']}: the {week} {dates}" + (f", {users:,} customers" if users else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # beside the bars, never on them
    return fig
