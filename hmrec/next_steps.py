"""What to look at after a refresh: the commands ``hmrec run`` prints at its end.

Each is a shell line that works as printed from the directory the run was
started in: it repeats the run's ``--conf`` and ``--set`` options, names the
executables of the interpreter that ran hmrec, and writes paths relative to
that directory when they are inside it. Reads the lakehouse without Spark.
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pyarrow.parquet as pq

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.lake import tables
from hmrec.lake.reader import live_files, read_matching

# What the notebooks read when their environment variables are not set (relative to notebooks/).
NOTEBOOK_DEFAULTS = {"HMREC_DATA": "../data/demo", "HMREC_LAKEHOUSE": "../lakehouse/demo", "HMREC_AS_OF": "2020-09-16"}
MLFLOW_PORT = 5000
HISTORY = 5
# Holdout customers looked at for an example with both repurchase and model rows.
CANDIDATES = 200


@dataclass(frozen=True)
class Step:
    """One thing to do next: what it shows and the shell line that does it."""

    what: str
    command: str
    note: str = ""


def shown_path(path: str | Path, cwd: Path) -> str:
    """``path`` relative to ``cwd`` when it is inside it (as ./x for a bare name), else absolute.

    Symbolic links are kept (a virtualenv's python is one).
    """
    p = Path(os.path.abspath(path))
    try:
        rel = p.relative_to(os.path.abspath(cwd))
    except ValueError:
        return str(p)
    return str(rel) if rel.parts and "/" in str(rel) else f"./{rel}"


def hmrec_command(cwd: Path) -> str:
    """How this process was started as hmrec: its console script, else ``python -m hmrec.cli``."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "hmrec" and argv0.exists():
        return shlex.quote(shown_path(argv0, cwd) if "/" in sys.argv[0] else sys.argv[0])
    return f"{python_command(cwd)} -m hmrec.cli"


def python_command(cwd: Path) -> str:
    """This interpreter, as a path from ``cwd``."""
    return shlex.quote(shown_path(sys.executable, cwd))


def executable(name: str, cwd: Path) -> str:
    """A program installed beside this interpreter (jupyter, mlflow), as a path from ``cwd``."""
    return shlex.quote(shown_path(Path(sys.executable).parent / name, cwd))


def example_customer(cfg: Config, as_of: dt.date) -> str | None:
    """A customer id to look at: one who bought in the holdout week and whose list mixes repurchases and
    the model's articles when there is one, else any customer with a list; None without recommendations."""
    try:
        recs = live_files(cfg, tables.RECOMMENDATIONS, "")
    except HmrecError:
        return None
    try:
        holdout = live_files(cfg, tables.HOLDOUT, "", as_of.isoformat())
    except HmrecError:
        holdout = []
    ids: set[str] = set()
    for f in holdout:
        ids.update(pq.read_table(f, columns=["customer_id"])["customer_id"].to_pylist())
    chosen = sorted(ids)[:CANDIDATES]
    if chosen:
        sources: dict[str, set[str]] = {}
        for row in read_matching(recs, "customer_id", set(chosen), ["customer_id", "source"]):
            sources.setdefault(row["customer_id"], set()).add(row["source"])
        mixed = [c for c in chosen if {"repurchase", "model"} <= sources.get(c, set())]
        listed = [c for c in chosen if c in sources]
        if mixed or listed:
            return (mixed or listed)[0]
    for f in recs:
        first = pq.ParquetFile(f)
        if first.metadata.num_rows:
            return first.read_row_group(0, columns=["customer_id"])["customer_id"][0].as_py()
    return None


def next_steps(cfg: Config, as_of: dt.date, data_dir: str | None, flags: list[str],
               cwd: Path | None = None) -> list[Step]:
    """The report, one customer's list, the notebooks and MLflow's UI for the refresh of ``as_of``.

    ``flags`` are the run's config options (``--conf``, ``--set``) that the
    recommend command repeats; ``cwd`` is where the commands are run (default:
    the current directory).
    """
    cwd = Path.cwd() if cwd is None else cwd
    steps = []
    report = Path(cfg.lakehouse) / "reports" / as_of.isoformat() / "report.html"
    if report.exists():
        steps.append(Step("the evaluation report", f"{python_command(cwd)} -m webbrowser {report.resolve().as_uri()}",
                          f"or open {shown_path(report, cwd)} in a browser"))
    customer = example_customer(cfg, as_of)
    if customer is not None:
        config = " ".join(shlex.quote(f) for f in flags)
        steps.append(Step("one customer's list", f"{hmrec_command(cwd)} recommend {config + ' ' if config else ''}"
                                                 f"--customer-id {customer} --history {HISTORY}"))
    notebooks = cwd / "notebooks"
    if notebooks.is_dir():
        wanted = {"HMREC_DATA": data_dir, "HMREC_LAKEHOUSE": cfg.lakehouse, "HMREC_AS_OF": as_of.isoformat()}
        env = []
        for key, value in wanted.items():
            if value is None:
                continue
            default = NOTEBOOK_DEFAULTS[key]
            same = (value == default) if key == "HMREC_AS_OF" else (
                Path(value).resolve() == (notebooks / default).resolve())
            if not same:
                env.append(f"{key}={shlex.quote(value if key == 'HMREC_AS_OF' else str(Path(value).resolve()))}")
        # Jupyter refuses to start as root unless told.
        root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        steps.append(Step("the notebooks", " ".join([*env, executable("jupyter", cwd), "lab", "notebooks/", *root]),
                          "01_explore: the input data; 02_results: this run's figures and customers"))
    uri = cfg.mlflow_uri
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):]
        steps.append(Step("MLflow's runs and models", f"{executable('mlflow', cwd)} ui --backend-store-uri "
                                                      f"{shlex.quote('sqlite:///' + shown_path(db, cwd))}",
                          f"then browse http://127.0.0.1:{MLFLOW_PORT}"))
    elif uri.startswith(("http://", "https://")):
        steps.append(Step("MLflow's runs and models", f"{python_command(cwd)} -m webbrowser {shlex.quote(uri)}"))
    return steps


def print_next_steps(steps: list[Step], out: TextIO | None = None) -> None:
    """The steps as an indented list under a 'next:' line."""
    if not steps:
        return
    stream = out if out is not None else sys.stdout
    sys.stderr.flush()
    width = max(len(s.what) for s in steps) + 1
    lines = ["", "next:"]
    for s in steps:
        lines.append(f"  {s.what + ':':<{width}} {s.command}")
        if s.note:
            lines.append(f"  {'':<{width}} ({s.note})")
    print("\n".join(lines), file=stream, flush=True)
