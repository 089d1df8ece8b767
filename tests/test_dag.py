"""dags/hmrec_weekly.py, the Airflow DAG of the weekly refresh.

The fast tests read the DAG file's Python with ``ast`` (no Airflow needed): its stages are
``hmrec.cli.STAGES`` in order and the gate's exit status is one its tasks do not retry.
The slow test installs Airflow in a virtual environment of its own (so Airflow's pins never
touch hmrec's), loads the DAG there and runs ``airflow dags test`` on tiny data, each stage
shelling out to this checkout's hmrec.
"""
from __future__ import annotations

import ast
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from hmrec import cli
from hmrec.errors import GateFailed
from hmrec.lake import lease
from tests.conftest import TEST_SPARK, TINY_AS_OF

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags" / "hmrec_weekly.py"
# Pinned: 2.10.5 installs cleanly from PyPI without its constraints file (its own bounds suffice).
AIRFLOW_VERSION = "2.10.5"
CONSTRAINTS = (f"https://raw.githubusercontent.com/apache/airflow/constraints-{AIRFLOW_VERSION}/"
               f"constraints-{sys.version_info.major}.{sys.version_info.minor}.txt")
AIRFLOW_VENV = Path(os.environ.get("HMREC_AIRFLOW_VENV", Path.home() / ".cache" / "hmrec" / "airflow-venv"))
TINY_TRAIN = ["train.epochs=3", "train.batch_size=512", "train.random_negatives=256", "train.log_every=1000",
              "train.val_users=300"]


def module_constants() -> dict[str, object]:
    """The DAG file's top-level assignments of literal values (names resolved within the file)."""
    tree = ast.parse(DAG_FILE.read_text())
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                text = ast.unparse(node.value)
                found[node.targets[0].id] = eval(text, {}, dict(found))  # literals and the names above them only
            except Exception:
                continue
    return found


def test_the_dag_runs_the_stages_of_the_cli_in_order_one_task_each():
    constants = module_constants()
    assert constants["STAGES"] == cli.STAGES
    tree = ast.parse(DAG_FILE.read_text())
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.ListComp)
             and any(isinstance(g.iter, ast.Name) and g.iter.id == "STAGES" for g in n.generators)]
    chained = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "chain"]
    assert len(chained) == 1 and any(isinstance(a, ast.Starred) and a.value in loops for a in chained[0].args)


def test_the_gate_fails_without_retry_on_its_exit_status_and_a_busy_lakehouse_is_retried():
    constants = module_constants()
    assert constants["GATE_EXIT"] == GateFailed.exit_status == 4
    assert constants["BUSY_EXIT"] == lease.BUSY_EXIT == 3
    assert constants["FAIL_WITHOUT_RETRY"] == {"gate": (4,)}  # and no other task, nor status 3
    dag_call = next(n for n in ast.walk(ast.parse(DAG_FILE.read_text()))
                    if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DAG")
    default_args = next(k.value for k in dag_call.keywords if k.arg == "default_args")
    args = eval(ast.unparse(default_args), {"dt": dt})
    assert args["retries"] >= 1 and args["retry_delay"] == dt.timedelta(minutes=10)


def test_the_dag_file_imports_no_hmrec_and_catches_up_weekly():
    tree = ast.parse(DAG_FILE.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(name.split(".")[0] == "hmrec" for name in imported)
    dag_call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DAG")
    kwargs = {k.arg: k.value for k in dag_call.keywords}
    assert ast.literal_eval(kwargs["catchup"]) is True
    assert ast.literal_eval(kwargs["schedule"]) == "0 3 * * 3"  # weekly
    assert module_constants()["AS_OF"] == "{{ data_interval_end | ds }}"


# ---- Airflow itself ------------------------------------------------------------------------------


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


def airflow_venv() -> Path:
    """A virtual environment with Airflow; made on first use (several minutes), reused after."""
    airflow = AIRFLOW_VENV / "bin" / "airflow"
    if airflow.exists():
        return AIRFLOW_VENV
    subprocess.run([sys.executable, "-m", "venv", str(AIRFLOW_VENV)], check=True)
    pip = [str(AIRFLOW_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    constraints = ["--constraint", CONSTRAINTS] if _reachable(CONSTRAINTS) else []
    done = subprocess.run([*pip, f"apache-airflow=={AIRFLOW_VERSION}", *constraints], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"apache-airflow=={AIRFLOW_VERSION} did not install into {AIRFLOW_VENV}: {done.stderr[-2000:]}")
    return AIRFLOW_VENV


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """The environment of airflow commands: a fresh AIRFLOW_HOME with its database, this repo's dags/."""
    venv = airflow_venv()
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
           "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)  # Airflow runs on its own packages; the stages set theirs
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    return env


CHECKS = """
import datetime as dt, json, sys
import pendulum
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.models.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1], include_examples=False)
dag = bag.dags["hmrec_weekly"]
gate = dag.get_task("gate")
outcome = {}
for status in (3, 4):
    for task in (gate, dag.get_task("score")):
        task.bash_command = f"exit {status}"
        try:
            task.execute({})
            outcome[f"{task.task_id} {status}"] = "ok"
        except AirflowFailException:
            outcome[f"{task.task_id} {status}"] = "fail without retry"
        except AirflowException:
            outcome[f"{task.task_id} {status}"] = "retried"
first = dag.next_dagrun_info(None)
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "tasks": [t.task_id for t in dag.topological_sort()],
    "retries": {t.task_id: t.retries for t in dag.tasks},
    "catchup": dag.catchup,
    "first_interval_end": first.data_interval.end.isoformat(),
    "second_interval_end": dag.next_dagrun_info(first.data_interval).data_interval.end.isoformat(),
    "outcome": outcome,
}))
"""


@pytest.mark.slow
def test_airflow_loads_the_dag_and_its_gate_task_fails_without_retry(airflow_env):
    def listed(*command: str) -> list[dict]:
        done = subprocess.run(["airflow", "dags", *command, "-o", "json"], env=airflow_env,
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])  # the table, after any log lines

    assert listed("list-import-errors") == []
    assert [d["dag_id"] for d in listed("list")] == ["hmrec_weekly"]
    done = subprocess.run(["python", "-c", CHECKS, str(REPO / "dags")], env=airflow_env,
                          capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["errors"] == {} and got["tasks"] == cli.STAGES and got["catchup"] is True
    assert set(got["retries"].values()) == {3}
    assert got["outcome"] == {"gate 3": "retried", "score 3": "retried",
                              "gate 4": "fail without retry", "score 4": "retried"}
    # start_date 2020-09-02: the weeks caught up on refresh as of 2020-09-09, then 2020-09-16, ...
    assert got["first_interval_end"].startswith("2020-09-09T03:00")
    assert got["second_interval_end"].startswith("2020-09-16T03:00")


@pytest.mark.slow
@pytest.mark.timeout(5400)  # it took 49 min on 2 cores under a load average of 20
def test_airflow_dags_test_runs_the_refresh_on_tiny_data(airflow_env, tiny_data, tmp_path):
    from hmrec.config import load_config
    from hmrec.lake import tables
    from hmrec.lake.reader import read_table

    lake = tmp_path / "lake"
    settings = [*TEST_SPARK, *TINY_TRAIN]
    env = {**airflow_env,
           "AIRFLOW_VAR_HMREC_DATA": str(tiny_data),
           "AIRFLOW_VAR_HMREC_LAKEHOUSE": str(lake),
           "AIRFLOW_VAR_HMREC_COMMAND": f"env PYTHONPATH={REPO} OMP_NUM_THREADS=1 {sys.executable} -m hmrec.cli run",
           "AIRFLOW_VAR_HMREC_ARGS": " ".join(f"--set {shlex.quote(s)}" for s in settings)}
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"  # the stages' own output in the log, should one fail
    # the run whose data interval ends at the tiny data's as-of
    run_at = f"{TINY_AS_OF}T03:00:00+00:00"
    done = subprocess.run(["airflow", "dags", "test", "hmrec_weekly", run_at],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-8000:]
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    states = subprocess.run(["airflow", "tasks", "states-for-dag-run", "hmrec_weekly", f"manual__{run_at}", "-o", "json"],
                            env=env, capture_output=True, text=True, check=True)
    got = {t["task_id"]: t["state"] for t in json.loads(states.stdout.strip().splitlines()[-1])}
    assert got == {stage: "success" for stage in cli.STAGES}, log[-8000:]
    rendered = subprocess.run(["airflow", "tasks", "render", "hmrec_weekly", "gate", run_at],
                              env=env, capture_output=True, text=True, check=True)
    assert f"--data {tiny_data} --as-of {TINY_AS_OF} --until gate --set paths.lakehouse={lake}" in rendered.stdout
    cfg = load_config(None, [f"paths.lakehouse={lake}"])
    served = read_table(cfg, tables.RECOMMENDATIONS, ["customer_id", "as_of"])
    assert set(served["as_of"].astype(str)) == {TINY_AS_OF.isoformat()}
    assert served["customer_id"].nunique() > 1000
    assert (lake / "reports" / TINY_AS_OF.isoformat() / "model_card.md").exists()


def test_run_until_takes_a_stage_of_the_cli_and_refuses_others(tmp_path):
    from hmrec.errors import HmrecError
    from hmrec.pipeline import PIPELINE, run
    from tests.conftest import make_cfg

    args = cli.build_parser().parse_args(["run", "--data", "d", "--as-of", "2020-09-16", "--until", "gate"])
    assert args.until == "gate"
    assert set(cli.STAGES) - {"ingest"} <= set(PIPELINE)  # every task's stage is one run can stop after
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--data", "d", "--as-of", "2020-09-16", "--until", "publish"])
    with pytest.raises(HmrecError, match="--until 'publish' is not a stage of the refresh; use one of: ingest, features"):
        run(make_cfg(tmp_path / "lake"), None, data_dir="d", as_of=TINY_AS_OF, until="publish")
