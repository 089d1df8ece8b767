"""The one SparkSession factory of the package.

Delta's extension and catalog are always on. Settings come from
``cfg.spark`` but never override what ``spark-submit`` (or
spark-defaults.conf) already set: a cluster's settings win.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from hmrec.config import Config

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def _submitted_conf() -> SparkConf | None:
    """The conf spark-submit passed to this driver, or None when run as plain Python."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return None
    SparkContext._ensure_initialized()  # connects to spark-submit's JVM
    return SparkConf()


def delta_package(cfg: Config) -> str:
    """Maven coordinate of the Delta jars matching the installed delta-spark."""
    if cfg.spark.delta_package:
        return cfg.spark.delta_package
    from importlib.metadata import version

    return f"io.delta:delta-spark_2.13:{version('delta-spark')}"


def spark_settings(cfg: Config) -> dict[str, str]:
    """Every setting hmrec wants, before spark-submit's own are applied."""
    ivy = str(Path(os.path.expanduser(cfg.spark.ivy_dir)).resolve())
    settings = {
        "spark.master": cfg.spark.master,
        "spark.app.name": cfg.spark.app_name,
        "spark.driver.memory": cfg.spark.driver_memory,
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.jars.packages": delta_package(cfg),
        "spark.jars.ivy": ivy,
        # Python workers run the driver's interpreter (its venv has torch,
        # FAISS, pandas), unless spark-submit names another one.
        "spark.pyspark.python": sys.executable,
        # Petastorm and Spark's Arrow paths both want this on.
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    settings.update(cfg.spark.conf)
    return settings


def get_spark(cfg: Config) -> SparkSession:
    """Return the active session, or build one with Delta enabled."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    submitted = _submitted_conf()
    if submitted is None:
        # pyspark starts its Python workers with $PYSPARK_PYTHON (default:
        # python3 on PATH); they need this interpreter's packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_settings(cfg).items():
        if submitted is not None and submitted.contains(key):
            continue
        if key == "spark.jars.packages" and submitted is not None:
            # Too late to resolve packages inside a running JVM: spark-submit
            # needs --packages (see the job docstrings).
            continue
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
