"""``hmrec recommend``: one customer's precomputed list, read without Spark (see :mod:`hmrec.lake.reader`)."""
from __future__ import annotations

import re
import sys
from typing import TextIO

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import tables
from hmrec.lake.reader import live_files, read_matching

CUSTOMER_ID = re.compile(r"^[0-9a-f]{64}$")
SHOWN = ["rank", "article_id", "prod_name", "product_type_name", "source", "score"]


def check_customer_id(customer_id: str) -> str:
    """The id in its Kaggle form (64 lowercase hex characters), or an error saying what is wrong."""
    cid = customer_id.strip().lower()
    if not CUSTOMER_ID.match(cid):
        raise HmrecError(
            f"customer id '{customer_id}' is not a customer_id: expected 64 hexadecimal characters "
            f"(got {len(customer_id.strip())} characters), as in customers.csv"
        )
    return cid


def format_rows(rows: list[dict]) -> str:
    """A fixed-width table of recommendation rows."""
    head = f"{'rank':>4}  {'article_id':<10}  {'prod_name':<32}  {'product_type_name':<20}  {'source':<10}  {'score':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['rank']:>4}  {r['article_id']:<10}  {str(r['prod_name'] or '')[:32]:<32}  "
            f"{str(r['product_type_name'] or '')[:20]:<20}  {r['source']:<10}  {r['score']:>9.4f}"
        )
    return "\n".join(lines)


def recommend(cfg: Config, customer_id: str, k: int | None = None, out: TextIO | None = None) -> list[dict]:
    """Print and return a customer's stored list: rank, article_id, prod_name, product_type_name, source, score.

    ``k`` limits the rows shown (default: every stored row).
    """
    cid = check_customer_id(customer_id)
    if k is not None and k <= 0:
        raise HmrecError(f"--k {k}: give a positive number of recommendations to show")

    files = live_files(cfg, tables.RECOMMENDATIONS, "run `hmrec score --as-of YYYY-MM-DD` (or `hmrec run`) first")
    stored = read_matching(files, "customer_id", {cid}, ["article_id", "rank", "score", "source", "model_version", "as_of"])
    if not stored:
        raise HmrecError(
            f"customer_id {cid} has no recommendations in {tables.RECOMMENDATIONS} at {cfg.table_path(tables.RECOMMENDATIONS.name)}: "
            f"it is not in {tables.CUSTOMERS} of the last refresh; check the id, or ingest the new customers and rerun `hmrec run`"
        )
    stored.sort(key=lambda r: r["rank"])
    if k is not None:
        stored = stored[:k]

    files = live_files(cfg, tables.ARTICLES, "run `hmrec ingest --data DIR` first")
    names = read_matching(files, "article_id", {r["article_id"] for r in stored}, ["article_id", "prod_name", "product_type_name"])
    by_id = {r["article_id"]: r for r in names}
    rows = [
        {
            "rank": r["rank"],
            "article_id": r["article_id"],
            "prod_name": by_id.get(r["article_id"], {}).get("prod_name"),
            "product_type_name": by_id.get(r["article_id"], {}).get("product_type_name"),
            "source": r["source"],
            "score": r["score"],
        }
        for r in stored
    ]
    first = stored[0]
    stream = out if out is not None else sys.stdout
    print(f"customer {cid}: {len(rows)} recommendations as of {first['as_of']}, model version {first['model_version']}", file=stream)
    print(format_rows(rows), file=stream, flush=True)
    return rows
