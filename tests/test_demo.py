"""`make demo` from a clean checkout: a fresh clone, a fresh .venv, the whole pipeline.

Marked slow (`make test-slow`): it installs every dependency into a new
virtualenv (from pip's cache when there is one) and runs the demo at its
default scale, about 8 minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]


def test_make_demo_from_a_clean_checkout(tmp_path):
    checkout = tmp_path / "hmrec"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True)
    assert not (checkout / ".venv").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYSPARK_", "SPARK_HOME"))}
    done = subprocess.run(["make", "demo"], cwd=checkout, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out = done.stdout + done.stderr
    assert "[hmrec evaluate] done:" in out
    assert any(line.split()[:2] == ["all", "model"] for line in out.splitlines() if line.strip())  # the table
    doc = json.loads((checkout / "lakehouse" / "demo" / "reports" / "2020-09-16" / "metrics.json").read_text())
    model, pop = doc["methods"]["model"], doc["methods"]["popularity"]
    assert model["recall@12"] >= 2 * pop["recall@12"], doc["methods"]
    assert model["ndcg@12"] >= 2 * pop["ndcg@12"], doc["methods"]
