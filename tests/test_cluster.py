"""The pipeline on a Spark standalone cluster equals a local run of the same data and seed.

`scripts/cluster_demo.sh` starts a master and two workers on 127.0.0.1,
submits every stage with spark-submit (the hmrec wheel shipped with
--py-files, training through TorchDistributor with local_mode=false on two
executor processes, scoring with FAISS on the executors) and stops the
cluster. The same stages then run in this process on local[2] with two
training processes. Tables must match in row counts and list shape; the
metrics must agree within METRIC_TOLERANCE (training on two processes is
seeded and averages gradients in a fixed order, so in practice they agree
exactly; the tolerance allows for float reduction order across machines).

Run with `make test-cluster` (about 6 minutes on 2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from hmrec import pipeline
from hmrec.lake import storage
from hmrec.lake import tables
from tests.conftest import TINY_AS_OF, make_cfg

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["train.epochs=3", "train.batch_size=512", "train.random_negatives=256", "train.log_every=1000",
            "train.val_users=300"]
METRIC_TOLERANCE = 0.02
TABLES = [tables.ARTICLES, tables.CUSTOMERS, tables.TRANSACTIONS, tables.REJECTS,
          tables.CUSTOMER_INDEX, tables.ARTICLE_INDEX, tables.INTERACTIONS]
AS_OF_TABLES = [tables.USER_FEATURES, tables.ITEM_FEATURES, tables.TRAIN, tables.HOLDOUT, tables.POPULARITY,
                tables.ITEM_EMBEDDINGS]


def _counts(spark, cfg) -> dict[str, int]:
    out = {name: storage.read(spark, cfg, name).count() for name in TABLES}
    out.update({name: storage.read_as_of(spark, cfg, name, TINY_AS_OF).count() for name in AS_OF_TABLES})
    return out


def _lists(spark, cfg):
    recs = storage.read(spark, cfg, tables.RECOMMENDATIONS)
    return recs.groupBy("customer_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.countDistinct("article_id").alias("distinct"),
        F.min(F.col("source") == "popular").alias("popular"),
        F.transform(F.sort_array(F.collect_list(F.struct("rank", "article_id"))), lambda s: s["article_id"]).alias("items"),
    )


def _metrics(cfg) -> dict:
    return json.loads((Path(cfg.lakehouse) / "reports" / TINY_AS_OF.isoformat() / "metrics.json").read_text())


def test_cluster_run_matches_a_local_run(spark, tiny_data, tmp_path):
    cluster_lake = tmp_path / "cluster-lake"
    env = dict(os.environ, HMREC_SET=" ".join(f"--set {s}" for s in SETTINGS),
               CLUSTER_DIR=str(tmp_path / "cluster"))
    done = subprocess.run(
        ["scripts/cluster_demo.sh", str(tiny_data), TINY_AS_OF.isoformat(), str(cluster_lake)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "cluster: stopped" in done.stdout  # stopped by the script's exit trap

    cluster = make_cfg(cluster_lake)
    # the registered model was trained on the executors: TorchDistributor local_mode=false, 2 processes
    from hmrec.model import registry

    version = registry.latest_version(cluster, TINY_AS_OF)
    params = registry.client(cluster).get_run(registry._model_version(cluster, version).run_id).data.params
    assert (params["train.local_mode"], params["train.num_processes"]) == ("False", "2")

    local = make_cfg(tmp_path / "local-lake", *SETTINGS, "train.num_processes=2")
    pipeline.run(local, spark, data_dir=str(tiny_data), as_of=TINY_AS_OF)

    assert _counts(spark, cluster) == _counts(spark, local)

    k = local.score.k
    c_lists, l_lists = _lists(spark, cluster), _lists(spark, local)
    customers = storage.read(spark, local, tables.CUSTOMERS).count()
    for lists in (c_lists, l_lists):
        assert lists.count() == customers
        assert lists.where((F.col("n") != k) | (F.col("distinct") != k)).count() == 0
    both = c_lists.alias("c").join(l_lists.alias("l"), "customer_id")
    assert both.count() == customers
    # customers served popularity lists in both runs get the same list: the ETL is exact on a cluster
    popular = both.where(F.col("c.popular") & F.col("l.popular"))
    assert popular.count() > 0
    assert popular.where(F.col("c.items") != F.col("l.items")).count() == 0
    same = both.where(F.col("c.items") == F.col("l.items")).count()
    print(f"identical lists: {same} of {customers}, {popular.count()} of them popularity lists")

    c_doc, l_doc = _metrics(cluster), _metrics(local)
    assert c_doc["users"] == l_doc["users"]
    for method in ("model", "popularity", "repurchase"):
        for metric in (f"recall@{k}", f"ndcg@{k}", f"map@{k}"):
            got, want = c_doc["methods"][method][metric], l_doc["methods"][method][metric]
            assert abs(got - want) <= METRIC_TOLERANCE, (method, metric, got, want)
    # the baselines do not depend on training: they must agree exactly
    assert c_doc["methods"]["popularity"] == l_doc["methods"]["popularity"]
