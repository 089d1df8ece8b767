"""Progress lines and end-of-stage summaries printed by every job."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator


def log(stage: str, message: str) -> None:
    print(f"[hmrec {stage}] {message}", file=sys.stderr, flush=True)


class Summary(dict):
    """Figures a stage reports at its end (rows in, written, rejected, ...)."""


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
        figures = ", ".join(f"{k}={v}" for k, v in summary.items())
        log(name, f"{'done' if ok else 'FAILED'}: {figures}")
