"""``hmrec recommend``: one customer's precomputed list, read without Spark (see :mod:`hmrec.lake.reader`).

The list is the customer's rows of ``tables.RECOMMENDATIONS`` (as many as
``score.k`` was when they were scored), with the article's name, product type
and colour from ``tables.ARTICLES``; ``history`` adds the customer's last
purchases from ``tables.TRANSACTIONS``, split at the as-of date of the list.
"""
from __future__ import annotations

import datetime as dt
import re
import sys
import textwrap
from pathlib import Path
from typing import TextIO

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import tables
from hmrec.lake.reader import live_files, read_matching

CUSTOMER_ID = re.compile(r"^[0-9a-f]{64}$")
SHOWN = ["rank", "article_id", "prod_name", "product_type_name", "colour_group_name", "source", "score"]
NAMES = ["article_id", "prod_name", "product_type_name", "colour_group_name"]

SCORE_NOTE = (
    "score: for model and repurchase rows, the model's match of customer and article (an inner product); "
    "for popular rows, the article's purchases in the customer's age segment in the popularity.window_days days before the as-of. "
    "Scores compare only within one source."
)
RECENCY_NOTE = "Recent purchases (repurchase) lead the list, latest first, so the score does not fall with the rank."

# (header, width, right-aligned) of each column a table prints.
COLUMNS = {
    "rank": ("rank", 4, True),
    "t_dat": ("date", 10, False),
    "article_id": ("article_id", 10, False),
    "prod_name": ("prod_name", 28, False),
    "product_type_name": ("product_type", 18, False),
    "colour_group_name": ("colour", 14, False),
    "source": ("source", 10, False),
    "score": ("score", 9, True),
    "listed": ("in list", 7, True),
}


def check_customer_id(customer_id: str) -> str:
    """The id in its Kaggle form (64 lowercase hex characters), or an error saying what is wrong."""
    cid = customer_id.strip().lower()
    if not CUSTOMER_ID.match(cid):
        raise HmrecError(
            f"customer id '{customer_id}' is not a customer_id: expected 64 hexadecimal characters "
            f"(got {len(customer_id.strip())} characters), as in customers.csv"
        )
    return cid


def _cell(row: dict, column: str) -> str:
    _, width, right = COLUMNS[column]
    value = row.get(column)
    if column == "score":
        text = f"{value:.4f}" if isinstance(value, (int, float)) else ""
    else:
        text = "" if value is None else str(value)[:width]
    return f"{text:>{width}}" if right else f"{text:<{width}}"


def format_rows(rows: list[dict], columns: list[str] | None = None) -> str:
    """A fixed-width table of ``rows`` (recommendation rows by default: the columns of SHOWN)."""
    columns = columns or SHOWN
    head = "  ".join(
        f"{COLUMNS[c][0]:>{COLUMNS[c][1]}}" if COLUMNS[c][2] else f"{COLUMNS[c][0]:<{COLUMNS[c][1]}}" for c in columns
    )
    lines = [head, "-" * len(head)]
    lines.extend("  ".join(_cell(r, c) for c in columns).rstrip() for r in rows)
    return "\n".join(line.rstrip() for line in lines)


def lakehouse_hint(cfg: Config) -> str:
    """What to do when the lakehouse holds no recommendations: the demo's lakehouse when it has some."""
    here = Path.cwd()
    for candidate in (here / "lakehouse" / "demo", here / "lakehouse"):
        if str(candidate.resolve()) != cfg.lakehouse and (candidate / tables.RECOMMENDATIONS.name).is_dir():
            shown = f"./{candidate.relative_to(here)}"
            return f"the lakehouse at {shown} has recommendations: add --set paths.lakehouse={shown}"
    return ("point --set paths.lakehouse=DIR at the lakehouse of your run (`make demo` writes ./lakehouse/demo), "
            "or fill this one with `hmrec run --data DIR --as-of YYYY-MM-DD` (or `hmrec score`)")


def article_names(cfg: Config, article_ids: set[str]) -> dict[str, dict]:
    """Name, product type and colour of each article of ``article_ids`` found in ``tables.ARTICLES``."""
    if not article_ids:
        return {}
    files = live_files(cfg, tables.ARTICLES, "run `hmrec ingest --data DIR` first")
    return {r["article_id"]: r for r in read_matching(files, "article_id", article_ids, NAMES)}


def purchases(cfg: Config, customer_id: str) -> list[dict]:
    """Every purchase of the customer in ``tables.TRANSACTIONS`` (t_dat, article_id), latest first.

    Scans the customer_id column of the whole table (it is not sorted by customer).
    """
    files = live_files(cfg, tables.TRANSACTIONS, "run `hmrec ingest --data DIR` first")
    rows = read_matching(files, "customer_id", {customer_id}, ["t_dat", "article_id"])
    return sorted(rows, key=lambda r: (r["t_dat"], r["article_id"]), reverse=True)


def _named(rows: list[dict], names: dict[str, dict]) -> list[dict]:
    return [{**r, **{c: names.get(r["article_id"], {}).get(c) for c in NAMES[1:]}} for r in rows]


def recommend(cfg: Config, customer_id: str, k: int | None = None, history: int = 0,
              out: TextIO | None = None) -> list[dict]:
    """Print and return a customer's stored list: rank, article_id, prod_name, product_type_name,
    colour_group_name, source, score.

    ``k`` limits the rows shown (default: every stored row; more than are
    stored is an error). ``history`` > 0 also prints the customer's last
    ``history`` purchases before the list's as-of date, and how many came after.
    """
    cid = check_customer_id(customer_id)
    if k is not None and k <= 0:
        raise HmrecError(f"--k {k}: give a positive number of recommendations to show")
    if history < 0:
        raise HmrecError(f"--history {history}: give the number of past purchases to show (0: none)")

    files = live_files(cfg, tables.RECOMMENDATIONS, lakehouse_hint(cfg))
    stored = read_matching(files, "customer_id", {cid}, ["article_id", "rank", "score", "source", "model_version", "as_of"])
    if not stored:
        raise HmrecError(
            f"customer_id {cid} has no recommendations in {tables.RECOMMENDATIONS} at {cfg.table_path(tables.RECOMMENDATIONS.name)}: "
            f"it is not in {tables.CUSTOMERS} of the last refresh; check the id, or ingest the new customers and rerun `hmrec run`"
        )
    stored.sort(key=lambda r: r["rank"])
    if k is not None and k > len(stored):
        raise HmrecError(
            f"--k {k}: the last refresh stored {len(stored)} recommendations per customer (score.k); "
            f"ask for at most {len(stored)}, or score longer lists with `hmrec score --set score.k={k}`"
        )
    if k is not None:
        stored = stored[:k]
    first = stored[0]
    as_of = first["as_of"]

    bought = purchases(cfg, cid) if history else []
    seen = [r for r in bought if r["t_dat"] < as_of][:history]
    later = [r for r in bought if r["t_dat"] >= as_of]
    names = article_names(cfg, {r["article_id"] for r in stored + seen + later})
    rows = [{c: r[c] for c in ("rank", "article_id", "source", "score")} for r in stored]
    rows = [{c: r.get(c) for c in SHOWN} for r in _named(rows, names)]

    stream = out if out is not None else sys.stdout
    print(f"customer {cid}: {len(rows)} recommendations as of {as_of}, model version {first['model_version']}", file=stream)
    print(format_rows(rows), file=stream)
    notes = SCORE_NOTE
    # said when this list shows it: recent purchases lead, the model's articles follow
    if rows and rows[0]["source"] == "repurchase" and any(r["source"] == "model" for r in rows):
        notes += " " + RECENCY_NOTE
    print(textwrap.fill(notes, width=100), file=stream)
    if history:
        ranks = {r["article_id"]: r["rank"] for r in rows}
        later = [{**r, "listed": ranks.get(r["article_id"])} for r in later]
        print_history(stream, _named(seen, names), _named(later, names), as_of, history)
    stream.flush()
    return rows


def print_history(stream: TextIO, seen: list[dict], later: list[dict], as_of: dt.date, n: int) -> None:
    """The purchases the list was made from (before ``as_of``) and a line on those after it."""
    columns = ["t_dat", "article_id", "prod_name", "product_type_name", "colour_group_name"]
    print(f"\nlast {len(seen)} purchases before {as_of} (what the list was made from):" if seen
          else f"\nno purchases before {as_of}: the list is the age segment's popular articles", file=stream)
    if seen:
        print(format_rows(seen, columns), file=stream)
    if later:
        print(f"{len(later)} purchase{'s' if len(later) != 1 else ''} on or after {as_of} (not seen by the model; "
              f"the evaluation judges the list on the week from {as_of}):", file=stream)
        print(format_rows(later[:n], columns + ["listed"]), file=stream)
