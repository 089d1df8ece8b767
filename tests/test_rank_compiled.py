"""The ranker's trees compiled by lleaves (hmrec.rank.compiled)."""
from __future__ import annotations

import builtins

import lightgbm as lgb
import numpy as np

from hmrec.rank.compiled import CompiledBooster, compile_booster


def _booster() -> lgb.Booster:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 4))
    x[rng.random(x.shape) < 0.1] = np.nan  # candidates have missing features (a source that did not propose)
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 2]) > 0).astype(int)
    data = lgb.Dataset(x, y, group=[20] * 30, feature_name=["a", "b", "c", "d"])
    return lgb.train({"objective": "lambdarank", "num_leaves": 7, "verbose": -1, "min_data_in_leaf": 5}, data,
                     num_boost_round=25)


def test_compiled_trees_score_as_lightgbm_does_and_are_cached(tmp_path):
    booster = _booster()
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, 4))
    x[rng.random(x.shape) < 0.2] = np.nan
    compiled = compile_booster(booster.model_to_string(), str(tmp_path))
    assert isinstance(compiled, CompiledBooster)
    assert compiled.feature_name() == ["a", "b", "c", "d"]
    expected = booster.predict(x, num_threads=1)
    assert np.ptp(expected) > 0  # the trees split: the comparison is not between constants
    np.testing.assert_allclose(compiled.predict(x, num_threads=1), expected, rtol=0, atol=1e-12)
    objects = list(tmp_path.glob("*.o"))
    assert len(objects) == 1 and not list(tmp_path.glob("*.tmp"))
    # a second worker loads the cached code instead of compiling
    before = objects[0].stat().st_mtime_ns
    again = compile_booster(booster.model_to_string(), str(tmp_path))
    np.testing.assert_allclose(again.predict(x), expected, rtol=0, atol=1e-12)
    assert objects[0].stat().st_mtime_ns == before


def test_without_lleaves_the_booster_scores_with_lightgbm(tmp_path, monkeypatch, capsys):
    real = builtins.__import__

    def no_lleaves(name, *args, **kwargs):
        if name == "lleaves":
            raise ImportError("No module named 'lleaves'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lleaves)
    booster = _booster()
    plain = compile_booster(booster.model_to_string(), str(tmp_path))
    assert isinstance(plain, lgb.Booster)
    x = np.random.default_rng(5).normal(size=(50, 4))
    np.testing.assert_array_equal(plain.predict(x, num_threads=1), booster.predict(x, num_threads=1))
    assert "could not be compiled by lleaves (ImportError: No module named 'lleaves'); scoring with LightGBM's predict" \
        in capsys.readouterr().err
