"""The command line: argument errors and user errors are one clear line."""
from __future__ import annotations

import subprocess
import sys

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


def test_help_says_what_hmrec_is_and_what_each_command_reads_and_writes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "recommend" in top and "for every customer" in top and "a first run" in top
    assert "keyword function" not in top
    for command in ("ingest", "features", "split", "popularity", "train", "index", "score", "evaluate",
                    "run", "backtest", "generate", "recommend"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "reads:" in text and "writes:" in text and f"example:\n  hmrec {command} " in text, command
        assert "--verbose" in text
        # --master and --spark-conf only where Spark starts
        assert ("--master" in text) == (command not in ("generate", "recommend")), command
    with pytest.raises(SystemExit):
        main(["recommend", "--help"])
    assert "compares only within one source" in capsys.readouterr().out


def test_verbose_is_logging_level_info():
    args = build_parser().parse_args(["score", "--as-of", "2020-09-16", "--verbose"])
    from hmrec.cli import config_from_args

    assert config_from_args(args).logging.level == "INFO"
    assert load_config(None).logging.level == "WARN"


def test_spark_logs_through_hmrecs_log4j2_file_at_the_configured_level():
    s = spark_settings(load_config(None, ["logging.level=ERROR", "spark.conf.spark.driver.extraJavaOptions=-Dx=1"]))
    options = s["spark.driver.extraJavaOptions"]
    assert options.startswith("-Dx=1 ") and "-Dhmrec.log.level=error" in options
    path = options.split("-Dlog4j2.configurationFile=")[1].split()[0]
    assert path.startswith("file:") and path.endswith("hmrec/conf/log4j2.properties")
    assert "${sys:hmrec.log.level" in open(path[len("file:"):]).read()
    own = spark_settings(load_config(None, ["spark.conf.spark.driver.extraJavaOptions=-Dlog4j2.configurationFile=x"]))
    assert own["spark.driver.extraJavaOptions"] == "-Dlog4j2.configurationFile=x"


def test_resolved_jars_are_reused_only_while_every_file_is_there(tmp_path):
    from hmrec.lake.spark import _record_jars, resolved_jars

    cfg = load_config(None, [f"spark.ivy_dir={tmp_path}"])
    jars = tmp_path / "jars"
    jars.mkdir()
    for name in ("a.jar", "b.jar"):
        (jars / name).write_text("x")
    package = "io.delta:delta-spark_2.13:4.0.1"
    assert resolved_jars(cfg, package) is None
    _record_jars(cfg, package, f"file://{jars}/a.jar,file://{jars}/b.jar,file:///elsewhere/c.jar")
    assert resolved_jars(cfg, package) == [str(jars / "a.jar"), str(jars / "b.jar")]
    assert resolved_jars(cfg, "io.delta:delta-spark_2.13:9.9.9") is None
    (jars / "b.jar").unlink()
    assert resolved_jars(cfg, package) is None


def test_output_into_a_closed_pipe_ends_quietly():
    """`hmrec recommend ... | head -1`: when the reader goes away, the command ends with status 0, no traceback."""
    code = (
        "import hmrec.cli as cli\n"
        "cli.dispatch = lambda args, cfg: [print('x' * 80) for _ in range(200_000)]\n"
        "raise SystemExit(cli.main(['recommend', '--customer-id', 'c']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"x" * 80 + b"\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_wait_is_offered_only_by_the_commands_that_take_the_lease(capsys):
    from hmrec.lake import lease

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--wait" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--wait" in capsys.readouterr().out

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    offering = {name for name, sub in commands.items() if any("--wait" in a.option_strings for a in sub._actions)}
    assert "export" in lease.READ_ONLY_COMMANDS
    assert offering == set(commands) - lease.READ_ONLY_COMMANDS
    assert parser.parse_args(["run", "--data", "d", "--as-of", "2020-09-16", "--wait"]).wait is True
    assert parser.parse_args(["ingest", "--data", "d", "--wait"]).wait is True
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--as-of", "2020-09-16", "--out", "f.csv", "--wait"])
    assert "unrecognized arguments: --wait" in capsys.readouterr().err
