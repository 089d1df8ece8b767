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


# ---- every setting is checked when the config is loaded ------------------------------------

import dataclasses  # noqa: E402
import typing  # noqa: E402

from hmrec.config import RULES, Bound, OneOf  # noqa: E402


def _field_types() -> dict[str, object]:
    """section.key -> the field's base type (int for a setting that may also say auto)."""
    cfg = load_config(None)
    out = {}
    for section in dataclasses.fields(cfg):
        hints = typing.get_type_hints(type(getattr(cfg, section.name)))
        for f in dataclasses.fields(getattr(cfg, section.name)):
            typ = hints[f.name]
            if typing.get_origin(typ) is typing.Union:
                typ = next(t for t in typing.get_args(typ) if typing.get_origin(t) is not typing.Literal)
            out[f"{section.name}.{f.name}"] = typ
    return out


def _numeric_keys() -> list[str]:
    return [k for k, t in _field_types().items() if t in (int, float)]


def test_every_numeric_setting_has_a_range_rule():
    missing = [k for k in _numeric_keys() if k not in RULES]
    assert missing == []


def _cases() -> list[tuple[str, object, bool]]:
    """(key, value, accepted) at and just past each numeric bound and for each enum."""
    cases = []
    types = _field_types()
    for key, rule in RULES.items():
        if isinstance(rule, Bound):
            step = 1 if types[key] is int else 1e-6
            if rule.lo is not None:
                if rule.open_lo:
                    cases += [(key, rule.lo + step, True), (key, rule.lo, False)]
                else:
                    cases += [(key, rule.lo, True), (key, rule.lo - step, False)]
            if rule.hi is not None:
                cases += [(key, rule.hi, True), (key, rule.hi + step, False)]
        elif isinstance(rule, OneOf):
            past = max(rule.values) + 1 if types[key] is int else "no-such-value"
            cases += [(key, v, True) for v in rule.values] + [(key, past, False)]
    return cases


@pytest.mark.parametrize("key,value,accepted", _cases())
def test_settings_at_and_past_their_bounds(key, value, accepted):
    if accepted:
        cfg = load_config(None, [f"{key}={value}"])
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value
    else:
        with pytest.raises(ConfigError, match=rf"config key {key} must be .*got"):
            load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("assignment,message", [
    ("score.k=0", "score.k must be at least 1, got 0"),
    ("score.k=-5", "score.k must be at least 1, got -5"),
    ("index.kind=annoy", "index.kind must be one of flat, hnsw, ivf, got 'annoy'"),
    ("score.repurchase_order=random", "score.repurchase_order must be one of auto, recency, model"),
    ("features.age_buckets=[0,30,20]", "features.age_buckets must be a list of at least 2 increasing"),
    ("features.recent_days=[7]", "features.recent_days must be a list of 2 positive whole numbers"),
    ("ingest.min_date=2020-13-01", "ingest.min_date must be a date of the form YYYY-MM-DD, got '2020-13-01'"),
    ("generate.repeat_share=1.5", "generate.repeat_share must be between 0 and 1, got 1.5"),
    ("spark.driver_memory=lots", "spark.driver_memory must be a JVM memory size"),
    ("generate.start_date=2021-01-01", "generate.start_date .* must be before generate.end_date"),
])
def test_bad_settings_fail_at_load_naming_key_and_value(assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [assignment])


@pytest.mark.parametrize("key", ["train.epochs", "score.repurchase_slots", "score.repurchase_order", "score.fallback"])
def test_settings_that_may_be_chosen_take_auto_or_a_value(key):
    section, name = key.split(".")
    assert getattr(getattr(load_config(None, [f"{key}=auto"]), section), name) == "auto"
    value = {"train.epochs": 3, "score.repurchase_slots": 4, "score.repurchase_order": "model", "score.fallback": "global"}[key]
    assert getattr(getattr(load_config(None, [f"{key}={value}"]), section), name) == value


def test_an_int_that_may_be_auto_refuses_other_words():
    with pytest.raises(ConfigError, match="train.epochs' must be auto or int, got 'many'"):
        load_config(None, ["train.epochs=many"])


def test_unquoted_yaml_dates_in_a_file_are_read_as_dates(tmp_path):
    conf = tmp_path / "dates.yaml"
    conf.write_text("ingest:\n  min_date: 2019-01-01\n")
    assert load_config(str(conf)).ingest.min_date == "2019-01-01"


def test_rules_name_only_known_keys():
    cfg = load_config(None)
    for key in RULES:
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
