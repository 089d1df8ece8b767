"""Shared fixtures: one Spark session for the whole run, tiny generated data."""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest

from hmrec.config import Config, load_config

# Spark, torch and FAISS each start a thread pool per core; two cores are shared
# by all of them in the test run.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TEST_SPARK = [
    "spark.master=local[2]",
    "spark.driver_memory=4g",
    "spark.conf.spark.sql.shuffle.partitions=2",
    "spark.conf.spark.default.parallelism=2",
    "spark.conf.spark.ui.enabled=false",
    "spark.conf.spark.sql.adaptive.enabled=false",
]

def pytest_collection_modifyitems(config, items) -> None:
    """Leave out the `faults` tests (minutes of killed processes) unless the -m expression names them."""
    if "faults" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("faults") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("faults") is not None])
        items[:] = kept


# Last day of the tiny generated data set's history and the as-of used by tests.
TINY_AS_OF = dt.date(2020, 9, 16)


# Valid ids of the H&M schema for hand-made rows: 64 hex digits, 10 digits.
def cid(i: int) -> str:
    """The customer_id of customer ``i``."""
    return f"{i:064x}"


def hashed_cid(i: int) -> str:
    """A customer_id of customer ``i`` in no particular order (sorting ids does not sort customers)."""
    return hashlib.sha256(f"customer-{i}".encode()).hexdigest()


def aid(i: int, base: int = 0) -> str:
    """The article_id of article ``base + i``."""
    return f"{base + i:010d}"


def make_cfg(lakehouse: Path | str, *overrides: str) -> Config:
    """A config whose lakehouse is ``lakehouse``, with test Spark settings."""
    return load_config(
        None,
        [f"paths.lakehouse={lakehouse}", *TEST_SPARK, *overrides],
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from hmrec.lake.spark import get_spark

    warehouse = tmp_path_factory.mktemp("warehouse")
    cfg = make_cfg(tmp_path_factory.mktemp("lake"), f"spark.conf.spark.sql.warehouse.dir={warehouse}")
    session = get_spark(cfg)
    yield session
    session.stop()


@pytest.fixture()
def cfg(tmp_path) -> Config:
    """A fresh lakehouse per test."""
    return make_cfg(tmp_path / "lake")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny H&M-schema data set written by the generator (same for the whole run)."""
    from hmrec.synth.generate import generate

    out = tmp_path_factory.mktemp("tiny_data")
    generate(make_cfg(out / "unused"), out=str(out), scale=0.001, seed=3)
    return out


# Small but real training: enough for the planted segments to show.
TINY_TRAIN = ["train.epochs=3", "train.batch_size=512", "train.random_negatives=256", "train.log_every=1000",
              "train.val_users=300"]


@pytest.fixture(scope="session")
def pipeline_run(spark, tiny_data, tmp_path_factory):
    """`hmrec run` on the tiny data at TINY_AS_OF, shared by tests/test_pipeline.py and tests/test_pyfunc.py:
    (cfg, results, the Spark warnings it logged, those of the controls after it, the Python warnings, the
    modules that read the holdout week). Tests that change the lakehouse work on a copy of it."""
    import inspect
    import warnings

    from hmrec import pipeline
    from hmrec.lake import storage, tables

    readers: list[str] = []
    lake = tmp_path_factory.mktemp("pipeline") / "lake"
    cfg = make_cfg(lake, *TINY_TRAIN)
    with spark_warnings(spark) as spark_log, warnings.catch_warnings(record=True) as caught, \
            pytest.MonkeyPatch.context() as mp:
        # Appended, so the filters hmrec installs still come first; a FutureWarning that passes them is recorded.
        warnings.filterwarnings("always", category=FutureWarning, append=True)
        warnings.filterwarnings("always", category=UserWarning, append=True)
        for name in ("read", "read_as_of"):
            real = getattr(storage, name)

            def spy(spark, cfg, table, *args, _real=real, **kwargs):
                if table == tables.HOLDOUT:
                    callers = [f.frame.f_globals["__name__"] for f in inspect.stack()[1:]]
                    readers.append(next(c for c in callers if c not in ("hmrec.lake.storage", __name__)))
                return _real(spark, cfg, table, *args, **kwargs)

            mp.setattr(storage, name, spy)
        results = pipeline.run(cfg, spark, data_dir=str(tiny_data), as_of=TINY_AS_OF)
        mp.undo()
        run_log = spark_log()
        # Positive controls: an unpartitioned window and a FutureWarning are caught here.
        spark.range(3).selectExpr("row_number() over (order by id) AS r").collect()
        warnings.warn("control", FutureWarning)
        control_log = spark_log()[len(run_log):]
    return cfg, results, run_log, control_log, [(w.category.__name__, str(w.message)) for w in caught], readers


@contextlib.contextmanager
def spark_warnings(spark):
    """Collect the driver's log4j2 events at WARN and above while the block runs; yields a function
    returning them as text (one line each: level, logger, message)."""
    jvm = spark._jvm
    log4j = jvm.org.apache.logging.log4j
    context = log4j.LogManager.getContext(False)
    config = context.getConfiguration()
    writer = jvm.java.io.StringWriter()
    layout = log4j.core.layout.PatternLayout.newBuilder().withPattern("%p %c{1}: %m%n").build()
    appender = log4j.core.appender.WriterAppender.createAppender(layout, None, writer, "hmrec-test-warnings", False, True)
    appender.start()
    root = config.getRootLogger()
    root.addAppender(appender, log4j.Level.WARN, None)
    context.updateLoggers()
    try:
        yield lambda: str(writer.toString())
    finally:
        root.removeAppender("hmrec-test-warnings")
        context.updateLoggers()
        appender.stop()
