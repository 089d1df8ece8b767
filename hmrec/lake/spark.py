"""The one SparkSession factory of the package.

Delta's extension and catalog are always on. Settings come from
``cfg.spark`` but never override what ``spark-submit`` (or
spark-defaults.conf) already set: a cluster's settings win.

Logging: when hmrec starts the JVM itself, the driver reads
``hmrec/conf/log4j2.properties`` at the level of ``logging.level`` (WARN by
default; ``--verbose`` is INFO), and once the Delta jars have been resolved
through ivy, later starts put the same jar files on the classpath directly
(recorded next to the ivy cache), so ivy's resolution report is printed only
by the first start or at INFO and DEBUG. Every session's level is set to
``logging.level`` once it runs.
"""
from __future__ import annotations

import os
import sys
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from hmrec import progress
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
    return f"io.delta:delta-spark_2.13:{version('delta-spark')}"


def ivy_dir(cfg: Config) -> str:
    """The absolute ivy directory of ``spark.ivy_dir``."""
    return str(Path(os.path.expanduser(cfg.spark.ivy_dir)).resolve())


def log_options(level: str, given: str = "") -> str:
    """Driver JVM options that make log4j2 read hmrec's configuration at ``level``, after ``given`` ones.

    A ``-Dlog4j2.configurationFile`` already in ``given`` wins.
    """
    if "log4j2.configurationFile" in given:
        return given
    path = resources.files("hmrec").joinpath("conf/log4j2.properties")
    quiet = level.lower() if level in progress.VERBOSE_LEVELS else "error"
    ours = f"-Dlog4j2.configurationFile={Path(str(path)).as_uri()} -Dhmrec.log.level={level.lower()} -Dhmrec.quiet.level={quiet}"
    return f"{given} {ours}".strip()


def _jars_record(cfg: Config, package: str) -> Path:
    """The file listing the jars ivy resolved for ``package`` (one path a line)."""
    return Path(ivy_dir(cfg)) / f"hmrec-jars-{package.replace(':', '_')}.txt"


def resolved_jars(cfg: Config, package: str) -> list[str] | None:
    """The jar files recorded for ``package`` when every one of them is still there, else None."""
    record = _jars_record(cfg, package)
    if not record.exists():
        return None
    jars = [line for line in record.read_text().splitlines() if line.strip()]
    return jars if jars and all(Path(j).is_file() for j in jars) else None


def _record_jars(cfg: Config, package: str, spark_jars: str) -> None:
    """Keep the local jar files of a ``spark.jars`` value that ivy filled, for the next start."""
    root = Path(ivy_dir(cfg))
    paths = [Path(urlparse(j).path) for j in spark_jars.split(",") if j.startswith(("file:", "/"))]
    jars = [str(p) for p in paths if p.is_file() and root in p.parents]
    if jars:
        record = _jars_record(cfg, package)
        tmp = record.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(jars) + "\n")
        tmp.replace(record)


def spark_settings(cfg: Config) -> dict[str, str]:
    """Every setting hmrec wants, before spark-submit's own are applied."""
    ivy = ivy_dir(cfg)
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
    settings["spark.driver.extraJavaOptions"] = log_options(
        cfg.logging.level, cfg.spark.conf.get("spark.driver.extraJavaOptions", ""))
    return settings


def get_spark(cfg: Config) -> SparkSession:
    """Return the active session, or build one with Delta enabled."""
    progress.configure(cfg.logging.level)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    submitted = _submitted_conf()
    if submitted is None:
        # pyspark starts its Python workers with $PYSPARK_PYTHON (default:
        # python3 on PATH); they need this interpreter's packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = spark_settings(cfg)
    package = settings.get("spark.jars.packages", "")
    local = None
    if submitted is None and package and not progress.verbose() and "spark.jars" not in settings:
        local = resolved_jars(cfg, package)
        if local is not None:
            del settings["spark.jars.packages"]
            settings["spark.jars"] = ",".join(local)
    builder = SparkSession.builder
    for key, value in settings.items():
        if submitted is not None and submitted.contains(key):
            continue
        if key == "spark.jars.packages" and submitted is not None:
            # Too late to resolve packages inside a running JVM: spark-submit
            # needs --packages (see the job docstrings).
            continue
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.logging.level)
    if submitted is None and package and local is None:
        _record_jars(cfg, package, spark.sparkContext.getConf().get("spark.jars", ""))
    return spark
