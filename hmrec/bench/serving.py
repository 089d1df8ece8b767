"""Serving on its own: what ``python -m hmrec.bench score`` times (user embedding and FAISS search), and
``python -m hmrec.bench serving``: the champion's MLflow pyfunc, in process and through ``mlflow models serve``."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hmrec.config import IndexConfig
from hmrec.errors import HmrecError
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


# ---- the registered model through MLflow pyfunc: ``python -m hmrec.bench serving`` ----------------


def _percentiles(latencies_s: list[float]) -> dict:
    ms = np.asarray(latencies_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2)}


def request_loop(name: str, ask: Callable[[pd.DataFrame], object], frames: Sequence[pd.DataFrame]) -> dict:
    """One result row: ``ask`` called on each one-row frame in turn, requests per second and latency percentiles."""
    ask(frames[0])  # warm: the first call pays for lazy imports and allocations
    latencies = []
    t0 = time.perf_counter()
    for frame in frames:
        start = time.perf_counter()
        ask(frame)
        latencies.append(time.perf_counter() - start)
    secs = time.perf_counter() - t0
    row = {"stage": name, "n": len(frames), "seconds": round(secs, 3), "per_s": round(len(frames) / max(secs, 1e-9), 1),
           **_percentiles(latencies)}
    print(f"[bench] {row}", flush=True)
    return row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def model_server(uri: str, tracking_uri: str, timeout_s: float = 300.0) -> Iterator[int]:
    """``mlflow models serve -m URI --env-manager local`` on 127.0.0.1 with one worker; yields its port and
    stops it (the process group it started) afterwards."""
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # the server runs uvicorn from the environment's bin directory, which need not be on PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": os.pathsep.join([str(mlflow_cli.parent), os.environ.get("PATH", "")])}
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise HmrecError(f"`mlflow models serve -m {uri}` exited with status {server.returncode}: "
                                 f"{server.stderr.read().decode()[-1500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise HmrecError(f"`mlflow models serve -m {uri}` did not answer /ping within {timeout_s:.0f} s")
            time.sleep(0.5)
        yield port
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def post_invocations(port: int, frame: pd.DataFrame) -> list[dict]:
    """POST ``frame`` to the server's /invocations as ``dataframe_records``; its predictions."""
    body = json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["predictions"]


def bench_serving(scale: float, seed: int, overrides: list[str], requests: int = 500, rest: bool = True) -> Path:
    """Load time, then requests per second and p50/p99 latency of one customer and of one basket per request,
    in this process and through ``mlflow models serve``, for the champion of ``paths.lakehouse``."""
    import mlflow.pyfunc

    from hmrec.bench.common import bench_cfg, report
    from hmrec.model import registry
    from hmrec.serve.pyfunc import model_uri

    cfg = bench_cfg(scale, overrides)
    if registry.alias_version(cfg, registry.CHAMPION) is None:
        raise HmrecError(f"no version of '{cfg.paths.registered_model}' is the champion in {cfg.mlflow_uri}: "
                         f"run `hmrec run` on that lakehouse first, or point --set paths.lakehouse=DIR at one")
    uri = model_uri(cfg)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow_uri  # this process's loads resolve models:/ there
    rows: list[dict] = []
    t0 = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    rows.append({"stage": "load_model", "seconds": round(time.perf_counter() - t0, 3)})
    inner = model.unwrap_python_model()
    users = inner.users
    rng = np.random.default_rng(seed)
    buyers = users[users["n_purchases"] > 0]
    picked = buyers.iloc[rng.choice(len(buyers), size=min(requests, len(buyers)), replace=False)]
    picked = picked.iloc[np.arange(requests) % len(picked)]
    customers = [pd.DataFrame({"customer_id": [c]}) for c in picked["customer_id"]]
    ids = inner.ctx.article_ids
    baskets = [pd.DataFrame({"basket": [[str(ids[i]) for i in list(last)[:3]]]}) for last in picked["last_articles"]]
    rows.append(request_loop("customer, in process", model.predict, customers))
    rows.append(request_loop("basket, in process", model.predict, baskets))
    if rest:
        with model_server(uri, cfg.mlflow_uri) as port:
            rows.append(request_loop("customer, REST", lambda f: post_invocations(port, f), customers))
            rows.append(request_loop("basket, REST", lambda f: post_invocations(port, f), baskets))
    extra = {"customers": len(users), "articles": int((inner.ctx.item_pos >= 0).sum()), "k": inner.ctx.k,
             "model_version": inner.version, "lakehouse": cfg.lakehouse, "index": type(inner.ctx.index.get()).__name__}
    return report("serving", scale, rows, extra)
