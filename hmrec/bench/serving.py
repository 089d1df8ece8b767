"""What ``python -m hmrec.bench score`` times of serving on its own: user embedding and FAISS search."""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from hmrec.config import IndexConfig
from hmrec.serve.embedders import Embedder
from hmrec.serve.index import make_index, recall_vs_exact, search


def embed_throughput(embedder: Embedder, users: pd.DataFrame, batch_size: int) -> dict:
    """Users embedded per second on this process, in batches of ``batch_size``."""
    t0 = time.perf_counter()
    n = 0
    for start in range(0, len(users), batch_size):
        n += len(embedder.embed_users(users.iloc[start : start + batch_size]))
    secs = time.perf_counter() - t0
    return {"users": n, "seconds": round(secs, 3), "users_per_s": round(n / max(secs, 1e-9), 1)}


def search_throughput(
    item_emb: np.ndarray,
    user_emb: np.ndarray,
    kinds: Sequence[str],
    k: int,
    index_cfg: IndexConfig,
    batch_size: int = 4096,
) -> dict:
    """For each index kind: build time, queries per second and Recall@k against exact search."""
    exact = make_index("flat", item_emb, index_cfg)
    exact_ids = np.concatenate([search(exact, user_emb[i : i + batch_size], k)[1] for i in range(0, len(user_emb), batch_size)])
    out = {}
    for kind in kinds:
        t0 = time.perf_counter()
        index = exact if kind == "flat" else make_index(kind, item_emb, index_cfg)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = np.concatenate([search(index, user_emb[i : i + batch_size], k)[1] for i in range(0, len(user_emb), batch_size)])
        secs = time.perf_counter() - t0
        out[kind] = {
            "build_s": round(build, 3),
            "search_s": round(secs, 3),
            "queries_per_s": round(len(user_emb) / max(secs, 1e-9), 1),
            f"recall@{k}": round(recall_vs_exact(ids, exact_ids), 4),
        }
    return out
