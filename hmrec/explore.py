"""Summaries and plots of input data and of a run's results, for the notebooks.

Everything here reads small samples into pandas (the demo's data, or a sample
of the real data): the notebooks only call these functions and show what they
return.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hmrec.config import Config
from hmrec.etl.segments import age_labels
from hmrec.lake import tables
from hmrec.lake.reader import live_files, read_matching, read_table


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
    """Purchases per week."""
    return tx.set_index("t_dat").resample("W").size().rename("purchases")


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


def plot_input_overview(frames: dict[str, pd.DataFrame], buckets: list[int]) -> plt.Figure:
    """Four panels: weekly sales, popularity long tail, segment mix, product groups."""
    tx, customers, articles = frames["transactions"], frames["customers"], frames["articles"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    weekly_sales(tx).plot(ax=axes[0, 0], title="purchases per week")
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


def customer_story(cfg: Config, customer_id: str, history: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One customer's last purchases and their recommendations, with article names and types.

    Reads the Delta tables without a JVM, like ``hmrec recommend``.
    """
    names = read_table(cfg, tables.ARTICLES, ["article_id", "prod_name", "product_type_name", "colour_group_name"])
    tx = pd.DataFrame(read_matching(live_files(cfg, tables.TRANSACTIONS, "run `hmrec ingest` first"), "customer_id", {customer_id},
                                    ["t_dat", "customer_id", "article_id"]),
                      columns=["t_dat", "customer_id", "article_id"])
    tx = tx.sort_values("t_dat", ascending=False).head(history).merge(names, on="article_id", how="left")
    recs = pd.DataFrame(read_matching(live_files(cfg, tables.RECOMMENDATIONS, "run `hmrec score` first"), "customer_id", {customer_id},
                                      ["customer_id", "article_id", "rank", "source", "score"]),
                        columns=["customer_id", "article_id", "rank", "source", "score"])
    recs = recs.sort_values("rank").merge(names, on="article_id", how="left")
    return tx, recs
