"""The command line: argument errors and user errors are one clear line."""
from __future__ import annotations

import pytest

from hmrec.cli import build_parser, main
from hmrec.lake.spark import spark_settings
from hmrec.config import load_config


def test_every_design_command_is_there():
    parser = build_parser()
    for argv in (
        ["generate", "--out", "d"],
        ["ingest", "--data", "d"],
        ["features"],
        ["split", "--as-of", "2020-09-16"],
        ["popularity", "--as-of", "2020-09-16"],
        ["train", "--as-of", "2020-09-16", "--resume"],
        ["index", "--as-of", "2020-09-16"],
        ["score", "--as-of", "2020-09-16"],
        ["evaluate", "--as-of", "2020-09-16"],
        ["run", "--data", "d", "--as-of", "2020-09-16", "--force"],
        ["recommend", "--customer-id", "x", "--k", "5"],
    ):
        args = parser.parse_args(argv + ["--set", "score.k=5", "--conf", "c.yaml"])
        assert args.command == argv[0]
        assert args.overrides == ["score.k=5"]


def test_bad_date_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["split", "--as-of", "2020-13-01"])
    assert "'2020-13-01' is not a date of the form YYYY-MM-DD" in capsys.readouterr().err


def test_config_error_is_one_line_exit_2(capsys):
    code = main(["recommend", "--customer-id", "x", "--set", "score.kk=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hmrec recommend: error:") and "score.kk" in err
    assert "Traceback" not in err


def test_spark_settings_turn_delta_on_and_take_conf_overrides():
    cfg = load_config(None, ["spark.conf.spark.sql.shuffle.partitions=3", "spark.ivy_dir=/tmp/ivy-x"])
    s = spark_settings(cfg)
    assert s["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert s["spark.jars.packages"].startswith("io.delta:delta-spark_2.13:4.0.")
    assert s["spark.jars.ivy"] == "/tmp/ivy-x"
    assert s["spark.sql.shuffle.partitions"] == "3"
