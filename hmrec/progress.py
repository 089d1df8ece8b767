"""Progress lines and end-of-stage summaries printed by every job.

Each stage prints ``[hmrec <stage>] started`` and, at its end, one short
readable line (``done in 17.4 s: 6,860 customers ...``). The full key=value
record of the stage is what the stage returns: ``hmrec run`` keeps it in
``tables.STAGE_RUNS`` and the train and evaluate stages log theirs to MLflow.
At ``logging.level`` INFO or DEBUG (``--verbose``) the full record is printed
too, and the Python libraries' own loggers speak again.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

# Python libraries whose INFO or WARNING lines say nothing a user can act on at the
# default level: petastorm's hints about parquet file sizes and float32 conversion,
# MLflow's "creating database tables". Their level at logging.level WARN or ERROR.
CHATTY_LOGGERS = {"petastorm": logging.ERROR, "mlflow": logging.WARNING}
VERBOSE_LEVELS = ("INFO", "DEBUG")

_verbose = False


def configure(level: str) -> None:
    """Apply a ``logging.level`` value (ERROR, WARN, INFO, DEBUG) to hmrec's lines and the libraries' loggers."""
    global _verbose
    _verbose = level in VERBOSE_LEVELS
    for name, quiet in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(getattr(logging, level) if _verbose else quiet)


def verbose() -> bool:
    """Whether the full stage records (and the libraries' logs) are printed."""
    return _verbose


def log(stage: str, message: str) -> None:
    """Print one progress line of ``stage`` to stderr."""
    print(f"[hmrec {stage}] {message}", file=sys.stderr, flush=True)


class Summary(dict):
    """Figures a stage reports at its end (rows in, written, rejected, ...)."""


# ---- short summaries -----------------------------------------------------------------


def _n(value: object) -> str:
    """A number with thousands separators; anything else as it is."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def duration(seconds: float) -> str:
    """``17.4 s`` or ``1 min 52 s``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s"


def _first(s: dict, prefix: str) -> tuple[str, object]:
    """The first (key, value) of ``s`` whose key starts with ``prefix``."""
    return next((k, v) for k, v in s.items() if k.startswith(prefix))


def _stages(joined: str) -> str:
    """'features+split' as 'features, split'; '-' as 'none'."""
    return "none" if joined in ("", "-") else joined.replace("+", ", ")


def _ingest(s: dict) -> str:
    if s["skipped"]:
        # what the ingest found: files unchanged, or changed files holding nothing new
        return s.get("found", "input files unchanged since the last ingest, nothing written")
    rejected = sum(s[f"{key}_rejected"] for key in ("articles", "customers", "transactions"))
    return (f"{_n(s['transactions_written'])} transactions, {_n(s['customers_written'])} customers, "
            f"{_n(s['articles_written'])} articles; {_n(rejected)} rows rejected")


def _train(s: dict) -> str:
    val = ", ".join(f"{k[4:]} {_n(v)}" for k, v in s.items() if k.startswith("val_"))
    return (f"model version {s['model_version']}, {_n(s['epochs'])} epochs on {_n(s['rows'])} rows, "
            f"loss {_n(s['loss'])}" + (f", validation {val}" if val else "")
            + (f"; warm start from version {s['warm_start_from']}" if "warm_start_from" in s else ""))


def _score(s: dict) -> str:
    mix = ", ".join(f"{k[5:]} {_n(v)}" for k, v in s.items() if k.startswith("rows_"))
    return f"{_n(s['customers'])} customers' lists ({_n(s['rows'])} rows: {mix}), model version {s['model_version']}"


def _candidates(s: dict) -> str:
    recall = f"; union recall on the validation week {s['recall_union']:.3f}" if "recall_union" in s else ""
    return (f"{_n(s['rows'])} candidates of {_n(s['customers'])} customers ({_n(s['per_customer'])} each) at "
            f"{s['cutoff']}, {s['role']} model version {s['model_version']}{recall}")


def _rank(s: dict) -> str:
    if "skipped" in s:
        return f"no ranker for model version {s['model_version']}: {s['skipped']}"
    (rk, ranker), (_, blend) = _first(s, "ranker_map@"), _first(s, "blend_map@")
    return (f"ranker of model version {s['model_version']} trained at {s['fit_cutoff']} on {_n(s['train_rows'])} rows "
            f"of {_n(s['train_groups'])} buyers, {_n(s['best_iteration'])} rounds; held-out buyers "
            f"{rk.split('_', 1)[1].upper()} {ranker:.4f} (blend {blend:.4f})")


def _evaluate(s: dict) -> str:
    if s.get("holdout") == "none yet":
        return f"no holdout week to evaluate yet; report {s['report']}/report.html (the validation week)"
    (model_key, model), (_, pop) = _first(s, "model_map@"), _first(s, "popularity_map@")
    metric = model_key.split("_", 1)[1].upper()
    return (f"{_n(s['users'])} holdout customers, {metric} {model:.3f} (popularity {pop:.3f}); "
            f"report {s['report']}/report.html")


SHORT: dict[str, Callable[[dict], str]] = {
    "generate": lambda s: (f"{_n(s['transactions'])} transactions of {_n(s['customers'])} customers and "
                           f"{_n(s['articles'])} articles in {s['out']}"),
    "ingest": _ingest,
    "features": lambda s: (f"features of {_n(s['user_rows'])} customers and {_n(s['item_rows'])} articles as of "
                           f"{s['as_of']} (new ids: {_n(s['customers_new'])} customers, {_n(s['articles_new'])} articles)"),
    "split": lambda s: (f"{_n(s['train_rows'])} training, {_n(s['validation_rows'])} validation and "
                        f"{_n(s['holdout_rows'])} holdout rows as of {s['as_of']}"),
    "popularity": lambda s: f"top {_n(s['min_items_per_segment'])} articles of {_n(s['segments'])} segments",
    "train": _train,
    "index": lambda s: f"{s['kind']} index of {_n(s['items'])} articles, model version {s['model_version']}",
    "candidates": _candidates,
    "rank": _rank,
    "score": _score,
    "evaluate": _evaluate,
    "export": lambda s: (f"{_n(s['customers'])} customers' lists of {s['as_of']} ({s['format']}) in {s['out']}, "
                         f"{_n(s['customers_without_list'])} of them the popularity list alone"),
    "run": lambda s: f"as of {s['as_of']}, ran {_stages(s['ran'])}; skipped (already done) {_stages(s['skipped'])}",
}


def short_summary(name: str, summary: dict) -> str:
    """One readable sentence of a stage's figures; a stage without its own form gets its first few figures."""
    try:
        return SHORT[name](summary)
    except (KeyError, StopIteration, TypeError, ValueError, AttributeError):
        shown = [(k, v) for k, v in summary.items() if k != "seconds" and not isinstance(v, (dict, list))]
        return ", ".join(f"{k} {_n(v)}" for k, v in shown[:6]) + (" ..." if len(shown) > 6 else "")


def full_record(summary: dict) -> str:
    """Every figure of a summary as key=value."""
    return ", ".join(f"{k}={v}" for k, v in summary.items())


@contextmanager
def stage(name: str) -> Iterator[Summary]:
    """Time a stage and print its summary line, also when it fails."""
    summary = Summary()
    start = time.perf_counter()
    log(name, "started")
    ok = False
    try:
        yield summary
        ok = True
    finally:
        secs = time.perf_counter() - start
        summary["seconds"] = round(secs, 2)
        if not ok:
            log(name, f"FAILED after {duration(secs)}: {full_record(summary)}")
        else:
            log(name, f"done in {duration(secs)}: {short_summary(name, summary)}")
            if _verbose:
                log(name, f"record: {full_record(summary)}")
