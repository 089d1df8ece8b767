"""Layered configuration: defaults, file, --set overrides, and their errors."""
from __future__ import annotations

import pytest

from hmrec.config import ConfigError, load_config


def test_defaults_load_into_typed_sections(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no conf/local.yaml here
    cfg = load_config(None)
    assert cfg.score.k == 12
    assert isinstance(cfg.train.lr, float)
    assert cfg.lakehouse == str(tmp_path / "lakehouse")
    assert cfg.mlflow_uri == f"sqlite:///{tmp_path / 'lakehouse'}/mlflow.db"


def test_file_layer_then_set_layer(tmp_path):
    conf = tmp_path / "my.yaml"
    conf.write_text("train:\n  epochs: 5\nscore:\n  k: 20\n")
    cfg = load_config(str(conf), ["score.k=7", "train.lr=1e-2", "index.kind=hnsw"])
    assert cfg.train.epochs == 5
    assert cfg.score.k == 7
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.index.kind == "hnsw"


def test_set_of_int_accepted_for_float_field():
    cfg = load_config(None, ["train.lr=1"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_set_of_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="train.epochs.*int.*'many'"):
        load_config(None, ["train.epochs=many"])


def test_unknown_key_in_set_is_an_error():
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(None, ["train.epochz=3"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    conf = tmp_path / "bad.yaml"
    conf.write_text("score:\n  kk: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:score: unknown config key 'kk'"):
        load_config(str(conf))


def test_missing_conf_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_spark_conf_keys_with_dots_pass_through():
    cfg = load_config(None, ["spark.conf.spark.executor.memory=4g"])
    assert cfg.spark.conf["spark.executor.memory"] == "4g"
    # the defaults of the section are kept
    assert cfg.spark.conf["spark.sql.session.timeZone"] == "UTC"


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.score.k = 3  # type: ignore[misc]
