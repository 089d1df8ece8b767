"""The registered model served through MLflow pyfunc, on the session's pipeline run (tests/conftest.py).

What is compared with what:

- known customers: the pyfunc's list equals, article for article and source
  for source, the list `hmrec recommend` prints after the version's blend is
  scored (``score_customers`` on a copy of the lakehouse with the plans the
  run served). The pyfunc always answers with the blend; when the run served
  the ranker, its weekly table differs from it by design (hmrec.serve.pyfunc);
- unknown ids: the global popular list of ``tables.POPULARITY`` at the as-of;
- a basket of one planted segment's articles (the generator's
  planted/segments.json): most of the model's articles come from that
  segment's clusters, while the global popular list, the control, does not.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from hmrec.lake import storage, tables
from tests.conftest import TINY_AS_OF, TINY_TRAIN, make_cfg

# The first test waits for the session's pipeline run when this module runs alone (see tests/test_pipeline.py).
pytestmark = pytest.mark.timeout(1500)

UNKNOWN = "f" * 64
BASKET_SIZE = 4


@pytest.fixture(scope="module")
def served(pipeline_run):
    """(cfg, the pyfunc loaded from models:/<registered model>@champion)."""
    from hmrec.serve.pyfunc import model_uri

    cfg = pipeline_run[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", cfg.mlflow_uri)
        model = mlflow.pyfunc.load_model(model_uri(cfg))
    return cfg, model


def _champion(cfg) -> str:
    from hmrec.model import registry

    version = registry.alias_version(cfg, registry.CHAMPION)
    assert version is not None, "the run made its version the champion"
    return version


def test_the_champion_carries_a_pyfunc_with_signature_and_input_example(served):
    from hmrec.model import registry

    cfg, model = served
    assert cfg.paths.registered_model == "hmrec-two-tower"
    meta = model.metadata
    assert [c["name"] for c in meta.get_input_schema().to_dict()] == ["customer_id", "basket"]
    assert [c["name"] for c in meta.get_output_schema().to_dict()] == ["customer_id", "article_ids", "sources", "scores"]
    model_dir = registry.load_model(cfg, _champion(cfg)).artifact_dir
    example = meta.load_input_example(model_dir)
    assert list(example.columns) == ["customer_id", "basket"] and len(example) == 2
    out = model.predict(example)
    assert [len(a) for a in out["article_ids"]] == [cfg.score.k] * 2
    # the artifacts are copies: predicting reads none of the lakehouse's files
    files = {p.name for p in Path(model_dir, "artifacts").iterdir()}
    assert files == {"model.pt", "meta.json", "items.faiss", "lookups.npz", "users.parquet", "context.json"}


def test_known_customers_get_the_list_hmrec_recommend_prints_for_the_versions_blend(spark, served, tmp_path):
    from hmrec.model import registry
    from hmrec.serve.embedders import ModelEmbedder
    from hmrec.serve.index import load_index
    from hmrec.serve.recommend import recommend
    from hmrec.serve.score import score_customers, served_plans

    cfg0, model = served
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake)
    cfg = make_cfg(lake, *TINY_TRAIN)
    version = _champion(cfg)
    plans, _ = served_plans(spark, cfg, TINY_AS_OF)
    index, _ = load_index(cfg, version, TINY_AS_OF)
    score_customers(cfg, spark, TINY_AS_OF, ModelEmbedder.from_loaded(registry.load_model(cfg, version)), index,
                    plans=plans)
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, TINY_AS_OF).select("customer_id", "n_purchases")
    # active buyers, one-purchase buyers and never-buyers with features: each plan's list
    picked = ([r[0] for r in users.where("n_purchases >= 5").orderBy("customer_id").limit(6).collect()]
              + [r[0] for r in users.where("n_purchases = 1").orderBy("customer_id").limit(2).collect()]
              + [r[0] for r in users.where("n_purchases = 0").orderBy("customer_id").limit(2).collect()])
    assert len(picked) >= 8
    out = model.predict(pd.DataFrame({"customer_id": [c.upper() for c in picked]}))
    for cid, ids, sources in zip(picked, out["article_ids"], out["sources"]):
        printed = recommend(cfg, cid, out=io.StringIO())
        assert ids == [r["article_id"] for r in printed], cid
        assert sources == [r["source"] for r in printed], cid
    assert {s for row in out["sources"] for s in row} >= {"model"}


def test_unknown_ids_get_the_global_popular_list(spark, served):
    cfg, model = served
    popular = (storage.read_as_of(spark, cfg, tables.POPULARITY, TINY_AS_OF).where("segment = 'global'")
               .orderBy("rank").limit(cfg.score.k).toPandas())
    out = model.predict(pd.DataFrame({"customer_id": [UNKNOWN, "not-an-id"]}))
    for ids, sources in zip(out["article_ids"], out["sources"]):
        assert ids == popular["article_id"].tolist()
        assert sources == ["popular"] * cfg.score.k


def _planted(tiny_data: Path) -> tuple[dict[str, int], dict[int, list[int]]]:
    """({article_id: planted cluster}, {planted segment: its clusters})."""
    with open(tiny_data / "planted" / "article_clusters.csv") as f:
        cluster = {r["article_id"]: int(r["cluster"]) for r in csv.DictReader(f)}
    segments = json.loads((tiny_data / "planted" / "segments.json").read_text())["segments"]
    return cluster, {int(s): [int(c) for c in cs] for s, cs in segments.items()}


def test_a_basket_of_one_planted_taste_gets_a_list_of_that_taste(spark, served, tiny_data):
    cfg, model = served
    cluster, segments = _planted(tiny_data)
    # the articles of the version's catalogue, most bought first within each cluster
    bought = (storage.read(spark, cfg, tables.TRANSACTIONS).groupBy("article_id").count()
              .orderBy("count", "article_id", ascending=[False, True]).toPandas())
    known = set(model.unwrap_python_model().article_idx)
    by_cluster: dict[int, list[str]] = {}
    for a in bought["article_id"]:
        if a in known and a in cluster:
            by_cluster.setdefault(cluster[a], []).append(a)
    baskets, tastes = [], []
    for seg, clusters in sorted(segments.items()):
        basket = [a for c in clusters for a in by_cluster.get(c, [])[:2]][:BASKET_SIZE]
        if len(basket) == BASKET_SIZE:
            baskets.append(basket)
            tastes.append(set(clusters))
    assert len(baskets) >= 4
    out = model.predict(pd.DataFrame({"basket": baskets}))
    popular = model.predict(pd.DataFrame({"customer_id": [UNKNOWN]}))["article_ids"][0]
    shares, controls = [], []
    for basket, taste, ids, sources in zip(baskets, tastes, out["article_ids"], out["sources"]):
        assert len(ids) == cfg.score.k == len(set(ids))
        from_model = [a for a, s in zip(ids, sources) if s == "model"]
        assert len(from_model) >= cfg.score.k // 2, (basket, ids, sources)
        shares.append(np.mean([cluster[a] in taste for a in from_model]))
        controls.append(np.mean([cluster[a] in taste for a in popular]))
    # 3 of the planted clusters out of many: the popular list rarely matches one taste, the model's list does
    assert np.mean(shares) >= 0.6, shares
    assert np.mean(controls) <= 0.35, controls
    assert np.mean(shares) >= 2 * np.mean(controls)


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_mlflow_models_serve_answers_a_bounded_request_loop(served, monkeypatch):
    from hmrec.bench.serving import model_server
    from hmrec.serve.pyfunc import model_uri

    cfg, model = served
    # the server imports the hmrec under test
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    with model_server(model_uri(cfg), cfg.mlflow_uri, timeout_s=180) as port:
        users = model.unwrap_python_model().users
        cids = users.loc[users["n_purchases"] > 0, "customer_id"].head(10).tolist() + [UNKNOWN]
        expected = model.predict(pd.DataFrame({"customer_id": cids}))
        for i, cid in enumerate(cids * 3):
            body = ({"dataframe_split": {"columns": ["customer_id"], "data": [[cid]]}} if i % 2
                    else {"dataframe_records": [{"customer_id": cid}]})
            got = _post(port, body)["predictions"]
            assert len(got) == 1 and got[0]["article_ids"] == expected["article_ids"][i % len(cids)], cid
        basket = expected["article_ids"][0][:2]
        got = _post(port, {"dataframe_records": [{"basket": basket}]})["predictions"]
        assert got[0]["article_ids"] == model.predict(pd.DataFrame({"basket": [basket]}))["article_ids"][0]
