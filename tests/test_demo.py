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
    assert "[hmrec evaluate] done in" in out
    assert any(line.split()[:2] == ["all", "model"] for line in out.splitlines() if line.strip())  # the table
    # quiet: no single-partition window, no library deprecation noise, no ivy report once the jars are known
    assert "WindowExec" not in out and "FutureWarning" not in out and "not writable" not in out
    # it ends with what to do next, and the customer command works as printed
    steps = done.stdout[done.stdout.index("next:"):]
    command = next(line.split(":", 1)[1].strip() for line in steps.splitlines() if "one customer's list:" in line)
    assert command.startswith(".venv/bin/hmrec recommend --set paths.lakehouse=./lakehouse/demo --customer-id ")
    listed = subprocess.run(command, shell=True, cwd=checkout, env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "12 recommendations as of 2020-09-16" in listed.stdout, listed.stderr

    # a second `make demo` generates nothing and skips every stage
    again = subprocess.run(["make", "demo"], cwd=checkout, env=env, capture_output=True, text=True, timeout=3000)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "hmrec generate" not in again.stdout
    assert "ran none; skipped (already done) features, split, popularity, train, index, score, evaluate" in again.stderr
    doc = json.loads((checkout / "lakehouse" / "demo" / "reports" / "2020-09-16" / "metrics.json").read_text())
    model, pop = doc["methods"]["model"], doc["methods"]["popularity"]
    assert model["recall@12"] >= 2 * pop["recall@12"], doc["methods"]
    assert model["ndcg@12"] >= 2 * pop["ndcg@12"], doc["methods"]
