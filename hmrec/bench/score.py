"""``python -m hmrec.bench score``: user embedding, FAISS search by index kind, and the whole scoring job
(with and without its checks before publishing)."""
from __future__ import annotations

import numpy as np

from hmrec.bench.common import AS_OF, bench_cfg, prepared, report, timed, trained
from hmrec.bench.serving import embed_throughput, search_throughput
from hmrec.lake import storage, tables
from hmrec.model.registry import load_model
from hmrec.serve.embedders import ModelEmbedder
from hmrec.serve.index import build_index, load_index
from hmrec.serve.score import score, score_customers


def bench_score(scale: float, seed: int, overrides: list[str], job_kinds: tuple[str, ...] = ("hnsw", "flat")) -> None:
    """User embedding, FAISS search by index kind and the whole scoring job, with a model trained once."""
    rows: list[dict] = []
    cfg, spark = prepared(scale, seed, ["train.epochs=1", *overrides], rows)
    version = trained(cfg, spark, rows)
    embedder = ModelEmbedder.from_loaded(load_model(cfg, version))
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, AS_OF).where("n_purchases > 0")
    sample = users.limit(200_000).toPandas()
    items = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, AS_OF).toPandas()
    with timed(rows, "user embedding (1 process)") as row:
        res = embed_throughput(embedder, sample, cfg.score.batch_size)
        row["n"], row["per_s"] = res["users"], res["users_per_s"]
    user_emb = np.concatenate([embedder.embed_users(sample.iloc[i:i + 8192]) for i in range(0, len(sample), 8192)])
    item_emb = embedder.embed_items(items)
    search = search_throughput(item_emb, user_emb, ["flat", "hnsw", "ivf"], cfg.score.k, cfg.index)
    for kind, res in search.items():
        rows.append({"stage": f"faiss {kind} search", "n": len(user_emb), "seconds": res["search_s"],
                     "per_s": res["queries_per_s"], f"recall@{cfg.score.k}": res[f"recall@{cfg.score.k}"],
                     "build_s": res["build_s"]})
        print(f"[bench] {rows[-1]}", flush=True)
    n_customers = storage.read(spark, cfg, tables.CUSTOMERS).count()
    for kind in job_kinds:
        kcfg = bench_cfg(scale, ["train.epochs=1", f"index.kind={kind}", *overrides])
        with timed(rows, f"index job ({kind})"):
            build_index(kcfg, spark, as_of=AS_OF, model_version=version)
        # The job with and without its pre-publish check, taking turns twice (the VM's speed drifts).
        for checked in (False, True, True, False):
            name = f"score job, every customer ({kind})" if checked else f"score job without the pre-publish check ({kind})"
            with timed(rows, name) as row:
                if checked:
                    row["check_s"] = score(kcfg, spark, as_of=AS_OF, model_version=version).get("check_s")
                else:
                    index, meta = load_index(kcfg, version, AS_OF)
                    score_customers(kcfg, spark, AS_OF, ModelEmbedder.from_loaded(load_model(kcfg, version)), index,
                                    index_meta=meta, verify=False)
                row["n"] = n_customers
    report("score", scale, rows, {"model_version": version, "customers": n_customers})
