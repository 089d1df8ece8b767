"""The weekly hmrec refresh as an Apache Airflow DAG: one task per stage, in the order of ``hmrec.cli.STAGES``.

Each task shells out (this file imports nothing of hmrec, so the scheduler needs
only Airflow): by default

    spark-submit --packages io.delta:delta-spark_2.13:4.0.0 --conf spark.jars.ivy=$HOME/.cache/hmrec/ivy \\
        REPO/jobs/run.py --data DATA --as-of AS_OF --until STAGE --set paths.lakehouse=LAKEHOUSE ARGS

``run --until STAGE`` runs the stages of the refresh not yet done for that
as-of, up to STAGE (so the ``choose`` task also fits the model at the
validation cutoff that choosing needs, and a task retried after a crash
resumes where it stopped). AS_OF is the run's data interval end: the run for
the week of 2020-09-09 to 2020-09-16 refreshes as of 2020-09-16, the day after
that week's last transaction.

Exit statuses of hmrec: 3 (another job holds the lakehouse's lease) is retried
after ``retry_delay``, like any other failure; 4 (the model failed the gate:
the champion's lists stay served) fails the ``gate`` task at once, without a
retry, so the run shows failed and the later tasks do not run.

Settings, each an Airflow Variable (Admin > Variables, or the environment
variable ``AIRFLOW_VAR_<NAME>``) that overrides the DAG param of the same
meaning:

    hmrec_data       directory of the three CSV files         (param data)
    hmrec_lakehouse  the lakehouse, paths.lakehouse           (param lakehouse)
    hmrec_command    how a stage starts, followed by its args (param command; e.g. "hmrec run")
    hmrec_args       more arguments of every stage            (param args; e.g. "--conf /etc/hmrec.yaml")

The environment variables ``HMREC_DAG_START`` (default 2020-09-02) and
``HMREC_DAG_END`` (default: none) bound the weeks the scheduler catches up on.
"""
from __future__ import annotations

import datetime as dt
import os
import re

import pendulum
from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.models.baseoperator import chain

try:  # Airflow 3 moved BashOperator to the standard provider; Airflow 2 has it in the core
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:
    from airflow.operators.bash import BashOperator

# The stages of a refresh in hmrec.cli.STAGES order (tests/test_dag.py checks that they agree).
STAGES = ["ingest", "features", "split", "popularity", "choose", "train", "index", "rank", "candidates", "gate",
          "score", "evaluate", "card"]
BUSY_EXIT = 3  # hmrec.lake.lease.BUSY_EXIT: the lakehouse's lease is held by another job; retried
GATE_EXIT = 4  # hmrec.errors.GateFailed.exit_status: the model did not clear the gate; not retried
# Exit statuses that fail a task at once, without its retries.
FAIL_WITHOUT_RETRY = {"gate": (GATE_EXIT,)}

DEFAULT_COMMAND = ("spark-submit --packages io.delta:delta-spark_2.13:4.0.0 "
                   "--conf spark.jars.ivy=$HOME/.cache/hmrec/ivy /opt/hmrec/jobs/run.py")
AS_OF = "{{ data_interval_end | ds }}"


def _setting(name: str) -> str:
    """The Jinja text of a setting: Airflow Variable ``hmrec_<name>`` if set, else the DAG param ``name``."""
    return "{{ var.value.get('hmrec_" + name + "', params." + name + ") }}"


def stage_command(stage: str) -> str:
    """The bash command of one stage's task (templated by Airflow at run time)."""
    return (f"{_setting('command')} --data {_setting('data')} --as-of {AS_OF} --until {stage} "
            f"--set paths.lakehouse={_setting('lakehouse')} {_setting('args')}")


class HmrecStage(BashOperator):
    """A BashOperator whose exit statuses in ``fail_without_retry`` fail the task at once, its retries unused.

    Airflow retries any failed task; ``AirflowFailException`` is its way to fail one for good.
    """

    def __init__(self, *, fail_without_retry: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_without_retry = tuple(fail_without_retry)

    def execute(self, context):
        """Run the command; a listed exit status becomes an ``AirflowFailException`` (no retry)."""
        try:
            return super().execute(context)
        except (AirflowSkipException, AirflowFailException):
            raise
        except AirflowException as exc:
            status = exit_status(self, exc)
            if status in self.fail_without_retry:
                raise AirflowFailException(
                    f"hmrec {self.task_id} exited with status {status}"
                    + (": the model did not clear the gate, so the champion's lists stay served; its card says why"
                       if status == GATE_EXIT else "") + " (not retried)"
                ) from exc
            raise


def exit_status(op: BashOperator, exc: BaseException) -> int | None:
    """The exit status of the command ``op`` ran: from its subprocess, else from the operator's message."""
    process = getattr(op.subprocess_hook, "sub_process", None)
    code = getattr(process, "returncode", None)
    if isinstance(code, int):
        return code
    found = re.search(r"exit code (\d+)", str(exc))
    return int(found.group(1)) if found else None


def _date(name: str, default: str | None) -> pendulum.DateTime | None:
    text = os.environ.get(name, default)
    return pendulum.parse(text, tz="UTC") if text else None


with DAG(
    dag_id="hmrec_weekly",
    description="hmrec's weekly refresh: ingest through scoring, the gate, evaluation and the model card",
    schedule="0 3 * * 3",  # Wednesdays 03:00 UTC: the week of transactions up to Tuesday is complete
    start_date=_date("HMREC_DAG_START", "2020-09-02"),
    end_date=_date("HMREC_DAG_END", None),
    catchup=True,  # missed weeks run one by one, oldest first
    max_active_runs=1,  # one refresh at a time: they share the lakehouse and its lease
    params={
        "data": "/data/hm",
        "lakehouse": "/data/hmrec/lakehouse",
        "command": DEFAULT_COMMAND,
        "args": "",
    },
    default_args={
        "retries": 3,
        "retry_delay": dt.timedelta(minutes=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(hours=1),
        "execution_timeout": dt.timedelta(hours=6),
    },
    tags=["hmrec"],
    doc_md=__doc__,
) as dag:
    chain(*[
        HmrecStage(task_id=stage, bash_command=stage_command(stage),
                   fail_without_retry=FAIL_WITHOUT_RETRY.get(stage, ()))
        for stage in STAGES
    ])
