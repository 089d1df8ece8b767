"""FAISS index factory (one contract for every kind) and the index job on tiny tables."""
from __future__ import annotations

import datetime as dt
import io
import json
import pickle

import faiss
import numpy as np
import pandas as pd
import pytest

from hmrec.lake import schemas, storage
from hmrec.errors import HmrecError
from hmrec.lake import tables
from hmrec.serve.embedders import LookupEmbedder, check_embeddings
from hmrec.serve.index import (
    KINDS,
    ShippedIndex,
    has_index,
    index_dir,
    index_items,
    ivf_nlist,
    load_index,
    make_index,
    measure_recall,
    recall_vs_exact,
    save_index,
    search,
)

AS_OF = dt.date(2020, 9, 16)


def clustered(n_items: int = 2000, n_queries: int = 200, dim: int = 16, clusters: int = 20, seed: int = 0):
    """Unit vectors scattered tightly around random centres, and queries near the same centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    items = centres[rng.integers(0, clusters, n_items)] + 0.15 * rng.normal(size=(n_items, dim))
    queries = centres[rng.integers(0, clusters, n_queries)] + 0.15 * rng.normal(size=(n_queries, dim))
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return items.astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_finds_the_exact_neighbours_on_clustered_vectors(cfg, kind):
    items, queries = clustered()
    ids = np.arange(len(items), dtype=np.int64) * 7 + 3  # ids unlike positions: the ID map must answer them
    index = make_index(kind, items, cfg.index, ids=ids)
    assert index.ntotal == len(items)

    # Exact answer by brute force in numpy, independent of FAISS.
    truth = ids[np.argsort(-(queries @ items.T), axis=1)[:, :10]]
    _, found = search(index, queries, 10)
    recall = recall_vs_exact(found, truth)
    if kind == "flat":
        assert recall == 1.0
    else:
        assert recall >= 0.9
    assert measure_recall(index, items, queries, [10], ids=ids)[10] == pytest.approx(recall)


def test_recall_vs_exact_counts_shared_ids():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_vs_exact(approx, exact) == pytest.approx((2 + 4) / 8)


def test_ivf_list_count_is_capped_by_the_item_count(cfg):
    assert ivf_nlist(2000, cfg.index) == 2000 // 39
    assert ivf_nlist(10, cfg.index) == 1
    assert ivf_nlist(10_000_000, cfg.index) == cfg.index.ivf_nlist


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_search_settings_survive_shipping_to_a_worker(cfg, kind):
    items, queries = clustered(n_items=400, n_queries=20)
    index = make_index(kind, items, cfg.index, ids=np.arange(400))
    shipped = pickle.loads(pickle.dumps(ShippedIndex.of(index, "v1")))
    copy = shipped.get()
    inner = faiss.downcast_index(copy.index)
    if kind == "hnsw":
        assert inner.hnsw.efSearch == cfg.index.hnsw_ef_search
    else:
        assert inner.nprobe == min(cfg.index.ivf_nprobe, ivf_nlist(400, cfg.index))
    assert shipped.get() is copy  # deserialised once per process
    np.testing.assert_array_equal(search(copy, queries, 5)[1], search(index, queries, 5)[1])


def test_nan_and_wrong_dimension_embeddings_are_refused_naming_the_articles(cfg):
    emb = np.eye(4, dtype=np.float32)
    emb[2, 1] = np.nan
    with pytest.raises(HmrecError, match="0000000102"):
        check_embeddings(emb, np.array(["0000000100", "0000000101", "0000000102", "0000000103"]), "article_id")
    emb[2, 1] = np.inf
    with pytest.raises(HmrecError, match=r"\[2\]"):
        make_index("flat", emb, cfg.index, ids=np.arange(4))
    with pytest.raises(HmrecError, match="dimension 4, the index expects 8"):
        check_embeddings(np.eye(4), np.arange(4), "article_id", dim=8)


def test_unknown_kind_is_a_clear_error(cfg):
    with pytest.raises(HmrecError, match="flat, hnsw, ivf"):
        make_index("annoy", np.eye(4, dtype=np.float32), cfg.index)


def _item_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = {f.name: 0 for f in schemas.ITEM_FEATURES.fields}
        row.update({c: 0.0 for c in schemas.ITEM_NUMERICS})
        row.update(as_of=AS_OF, article_id=f"{700000000 + i:010d}", article_idx=i)
        rows.append(row)
    return rows


def test_index_job_writes_embeddings_index_and_meta(spark, tmp_path):
    from conftest import make_cfg

    cfg = make_cfg(tmp_path / "lake", "index.kind=hnsw", "index.recall_sample=50", "index.candidates=20", "score.k=4")
    n = 120
    rng = np.random.default_rng(1)
    item_vectors = rng.normal(size=(n, 8)).astype(np.float32)
    item_vectors /= np.linalg.norm(item_vectors, axis=1, keepdims=True)
    embedder = LookupEmbedder("v7", np.zeros((1, 8), np.float32), item_vectors)
    # Items listed in reverse: the job must pair each vector with its own article.
    pdf = pd.DataFrame(_item_rows(n)[::-1])
    storage.write_partition(spark.createDataFrame(pdf, schemas.ITEM_FEATURES), cfg, tables.ITEM_FEATURES, AS_OF)

    published = []
    summary = index_items(cfg, spark, AS_OF, embedder, publish=published.append)

    assert summary["items"] == n and summary["kind"] == "hnsw"
    assert 0.9 <= summary["recall@4"] <= 1.0
    assert published == [str(index_dir(cfg, "v7"))]
    meta = json.loads((index_dir(cfg, "v7") / "meta.json").read_text())
    assert meta["kind"] == "hnsw" and meta["dim"] == 8 and meta["count"] == n
    assert meta["faiss_version"] == faiss.__version__
    assert meta["params"] == {"M": 32, "efConstruction": 80, "efSearch": 64}
    assert meta["recall"]["query_source"] == "items"  # no gold/user_features in this lakehouse
    assert set(meta["recall"]) >= {"recall@4", "recall@20"}

    rows = storage.read_as_of(spark, cfg, tables.ITEM_EMBEDDINGS, AS_OF).toPandas()
    assert len(rows) == n and set(rows["model_version"]) == {"v7"}
    for _, row in rows.iterrows():
        np.testing.assert_allclose(row["embedding"], item_vectors[int(row["article_id"]) - 700000000], rtol=1e-6)
        assert row["article_idx"] == int(row["article_id"]) - 700000000

    index, meta2 = load_index(cfg, "v7", AS_OF)
    assert meta2 == meta
    _, ids = search(index, item_vectors[[5, 77]], 1)
    assert ids[:, 0].tolist() == [5, 77]
    with pytest.raises(HmrecError, match="built for as_of 2020-09-16"):
        load_index(cfg, "v7", AS_OF + dt.timedelta(days=7))
    with pytest.raises(HmrecError, match="hmrec index"):
        load_index(cfg, "v8", AS_OF)


def test_model_embedder_rebuilds_the_model_from_its_pickled_weights():
    from types import SimpleNamespace

    import torch

    from hmrec.serve import embedders
    from hmrec.model import two_tower

    rng = np.random.default_rng(2)
    users = pd.DataFrame({"customer_idx": np.arange(6), "category_shares": [np.full(3, 1 / 3, np.float32)] * 6,
                          "last_articles": [np.array([1, 4], np.int32)] * 3 + [np.array([], np.int32)] * 3})
    for c in schemas.USER_CATEGORICALS:
        users[c] = rng.integers(0, 3, 6)
    for c in schemas.USER_NUMERICS:
        users[c] = rng.normal(size=6).astype(np.float32)
    items = pd.DataFrame({"article_idx": np.arange(5)})
    for c in schemas.ITEM_CATEGORICALS:
        items[f"{c}_code"] = rng.integers(0, 4, 5)
    for c in schemas.ITEM_NUMERICS:
        items[c] = rng.uniform(0, 5, 5).astype(np.float32)
    args = two_tower.model_args_from_features(two_tower.user_inputs(users), two_tower.item_inputs(items), 6, 5,
                                              embedding_dim=8, id_dim=4, attr_dim=2, hidden_dim=16)
    model = two_tower.build_model(args, seed=0).eval()
    with torch.no_grad():
        want_users = model.user_tower(two_tower.user_inputs(users)).numpy()
        want_items = model.item_tower(two_tower.item_inputs(items)).numpy()

    from hmrec.serve.embedders import ModelEmbedder

    threads = torch.get_num_threads()
    sent = ModelEmbedder.from_loaded(SimpleNamespace(model=model, version="t1"))
    key = sent._cache_key()
    shipped = pickle.dumps(sent)
    del embedders._WORKER_CACHE[key]  # as in a fresh Spark worker
    embedder = pickle.loads(shipped)
    got_users = embedder.embed_users(users)
    assert got_users.dtype == np.float32 and got_users.shape == (6, 8)
    np.testing.assert_allclose(got_users, want_users, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedder.embed_items(items), want_items, rtol=1e-5, atol=1e-6)
    assert embedders._WORKER_CACHE[key] is not model  # rebuilt from the bytes, then cached
    # another lakehouse's version t1 (other weights), shipped to the same worker: its own model answers
    other = two_tower.build_model(args, seed=1).eval()
    with torch.no_grad():
        want_other = other.user_tower(two_tower.user_inputs(users)).numpy()
    weights = io.BytesIO()
    torch.save(other.state_dict(), weights)
    sent_other = ModelEmbedder("t1", other.model_args, weights.getvalue())  # as a driver ships it
    got_other = pickle.loads(pickle.dumps(sent_other)).embed_users(users)
    np.testing.assert_allclose(got_other, want_other, rtol=1e-5, atol=1e-6)
    assert np.abs(got_other - got_users).max() > 1e-3
    np.testing.assert_allclose(embedder.embed_users(users), want_users, rtol=1e-5, atol=1e-6)  # still the first
    embedders._WORKER_CACHE.pop(key)
    embedders._WORKER_CACHE.pop(sent_other._cache_key())
    torch.set_num_threads(threads)  # the rebuild capped torch's threads as a Spark worker would


def test_has_index_finds_the_file_its_meta_names(cfg):
    """The run's skip check: a saved index counts for its as-of while the file meta.json names is there."""
    vectors = np.eye(4, dtype=np.float32)
    index = faiss.IndexFlatIP(4)
    index.add(vectors)
    directory = index_dir(cfg, "v3")
    save_index(index, directory, {"as_of": AS_OF.isoformat(), "kind": "flat"})
    named = directory / json.loads((directory / "meta.json").read_text())["file"]
    assert named.name != "items.faiss" and named.exists()
    assert has_index(cfg, "v3", AS_OF)
    assert not has_index(cfg, "v3", AS_OF + dt.timedelta(days=7))
    assert not has_index(cfg, "v4", AS_OF)
    named.unlink()
    assert not has_index(cfg, "v3", AS_OF)


def test_the_process_cache_keeps_the_most_recently_used_and_builds_a_dropped_one_again(monkeypatch):
    from hmrec.serve import embedders

    monkeypatch.setattr(embedders, "_WORKER_CACHE", embedders.OrderedDict())
    monkeypatch.setattr(embedders, "WORKER_CACHE_SIZE", 3)
    built: list[str] = []

    def get(key: str) -> str:
        return embedders.worker_cached(key, lambda: built.append(key) or f"object {key}")

    assert [get(k) for k in ("a", "b", "c")] == ["object a", "object b", "object c"]
    assert get("a") == "object a" and built == ["a", "b", "c"]  # a hit builds nothing, and makes a the latest
    get("d")  # past the size: b, the least recently used, is dropped
    assert list(embedders._WORKER_CACHE) == ["c", "a", "d"]
    assert get("c") == "object c" and built == ["a", "b", "c", "d"]
    assert get("b") == "object b" and built == ["a", "b", "c", "d", "b"]  # built again
    assert list(embedders._WORKER_CACHE) == ["d", "c", "b"]  # a went, the least recently used then
    # what the driver caches itself (the model it loaded) counts alike
    embedders.remember("e", "the loaded model")
    assert len(embedders._WORKER_CACHE) == 3 and next(reversed(embedders._WORKER_CACHE)) == "e"
