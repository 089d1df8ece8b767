"""``python -m hmrec.bench shapes``: generate every profile and print the shape of each as Markdown tables.

    python -m hmrec.bench shapes [--scale 0.05] [--seed 42] [--out DIR] [--profiles a,b]

Every figure is measured from the written CSV files (and planted/ for the
taste share and the segment oracle), not taken from the generator's
settings; docs/DATA.md holds the tables this prints. The second table is
recall@12 of simple rules on the last week of the file.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hmrec.config import load_config
from hmrec.synth.generate import generate

NEW_DAYS = 28  # an article is a new arrival this many days after its first sale
SKIP_DAYS = 84  # rows of the first weeks are left out: every article on sale then has its first sale then


def measure(data: Path) -> dict[str, float]:
    """Shape figures of one generated data set, from its files."""
    tx = pd.read_csv(data / "transactions_train.csv", dtype={"customer_id": str, "article_id": str},
                     usecols=["t_dat", "customer_id", "article_id"])
    n_customers = sum(1 for _ in open(data / "customers.csv", encoding="utf-8")) - 1
    n_articles = sum(1 for _ in open(data / "articles.csv", encoding="utf-8")) - 1
    per = tx.groupby("customer_id").size()
    day = pd.to_datetime(tx["t_dat"])
    first = day.groupby(tx["article_id"]).transform("min")
    late = day >= day.min() + pd.Timedelta(days=SKIP_DAYS)
    segment = pd.read_csv(data / "planted/customer_segments.csv", dtype={"customer_id": str})
    cluster = pd.read_csv(data / "planted/article_clusters.csv", dtype={"article_id": str})
    prefs = json.loads((data / "planted/segments.json").read_text())["segments"]
    seg = tx["customer_id"].map(segment.set_index("customer_id")["segment"])
    clu = tx["article_id"].map(cluster.set_index("article_id")["cluster"])
    in_taste = np.array([c in prefs[str(s)] for s, c in zip(seg, clu)])
    return {
        "rows": len(tx),
        "customers": n_customers,
        "articles": n_articles,
        "repeat": float(tx.duplicated(["customer_id", "article_id"]).mean()),
        "cold": float(((n_customers - len(per)) + (per == 1).sum()) / n_customers),
        "median": float(per.median()),
        "new": float(((day - first).dt.days[late] < NEW_DAYS).mean()),
        "taste": float(in_taste.mean()),
    }


def rule_recalls(data: Path) -> dict[str, float]:
    """Recall@12 on the file's last 7 days of rules fitted on the days before, averaged over that week's buyers."""
    tx = pd.read_csv(data / "transactions_train.csv", dtype={"customer_id": str, "article_id": str},
                     usecols=["t_dat", "customer_id", "article_id"])
    tx["day"] = pd.to_datetime(tx["t_dat"])
    segment = pd.read_csv(data / "planted/customer_segments.csv", dtype={"customer_id": str})
    segment_of = segment.set_index("customer_id")["segment"]
    tx["segment"] = tx["customer_id"].map(segment_of)
    as_of = tx["day"].max() - pd.Timedelta(days=6)
    train, hold = tx[tx["day"] < as_of], tx[tx["day"] >= as_of]
    truth = hold.groupby("customer_id")["article_id"].agg(set)

    def recall(recs: dict | list) -> float:
        lists = (recs.get(c, []) for c in truth.index) if isinstance(recs, dict) else (recs for _ in truth.index)
        return float(np.mean([len(set(r) & t) / len(t) for r, t in zip(lists, truth)]))

    out = {}
    for days in (7, 365):
        window = train[train["day"] >= as_of - pd.Timedelta(days=days)]
        top = window["article_id"].value_counts().index[:12].tolist()
        by_segment = {s: g["article_id"].value_counts().index[:12].tolist() for s, g in window.groupby("segment")}
        out[f"popularity {days} d"] = recall(top)
        out[f"segment oracle {days} d"] = recall({c: by_segment.get(segment_of[c], top) for c in truth.index})
    # the customer's own last 12 distinct articles, latest first
    latest = train.iloc[::-1].drop_duplicates(["customer_id", "article_id"])
    own = latest.groupby("customer_id", sort=False)["article_id"].agg(lambda s: list(s[:12]))
    out["own last 12"] = recall(own.to_dict())
    prior = train.groupby("customer_id").size()
    out["cold buyers"] = float(np.mean([prior.get(c, 0) <= 1 for c in truth.index]))
    return out


def bench_shapes(scale: float, seed: int, profiles: list[str], out: str | None = None) -> None:
    """Generate ``profiles`` and print their shape and simple rules' recall."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out or tmp)
        cfg = load_config(None, [f"paths.lakehouse={root / 'lake'}"])
        print("| profile | rows | customers | articles | repeat share | cold share | median per buyer "
              "| articles per 1k rows | new-arrival share | in-taste share | seconds |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        recalls = {}
        for name in profiles:
            out = root / name
            t0 = time.perf_counter()
            generate(cfg, out=str(out), scale=scale, seed=seed, profile=name)
            secs = time.perf_counter() - t0
            m = measure(out)
            recalls[name] = rule_recalls(out)
            print(f"| {name} | {m['rows']:,} | {m['customers']:,} | {m['articles']:,} | {m['repeat']:.2%} "
                  f"| {m['cold']:.1%} | {m['median']:g} | {1000 * m['articles'] / m['rows']:.1f} "
                  f"| {m['new']:.1%} | {m['taste']:.1%} | {secs:.1f} |", flush=True)
        columns = list(next(iter(recalls.values())))
        print()
        print("| profile | " + " | ".join(columns) + " |")
        print("| --- |" + " ---: |" * len(columns))
        for name, r in recalls.items():
            print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in columns) + " |")

