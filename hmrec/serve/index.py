"""The FAISS index that the scoring job searches: factory, search, files and the index job.

Every index holds L2-normalised item vectors and searches by inner product
(cosine); ids stored in the index are ``article_idx`` values, so a search
answers in the same dense ids as ``last_articles`` of ``tables.USER_FEATURES``
and ``tables.POPULARITY``. The index job also writes the item vectors to
``tables.ITEM_EMBEDDINGS``, and :func:`read_item_embeddings` is how later
stages read them back.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hmrec import artifacts
from hmrec.config import RULES, Config, IndexConfig
from hmrec.errors import HmrecError
from hmrec.lake import schemas, storage, tables
from hmrec.progress import log, stage
from hmrec.serve.embedders import Embedder, ModelEmbedder, check_embeddings, embed_in_batches, worker_cached

KINDS = RULES["index.kind"].values  # flat, hnsw, ivf: the config's rule is their one list
INDEX_FILE = "items.faiss"  # the file name of indexes saved before names carried their checksum
INDEX_FILE_PATTERN = "items-{}.faiss"  # items-<first 16 hex digits of its SHA-256>.faiss
META_FILE = "meta.json"


# ---- index factory ----------------------------------------------------------------


def ivf_nlist(n_items: int, index_cfg: IndexConfig) -> int:
    """IVF list count: the configured one, capped so each list trains on ≥ 39 items (FAISS's floor)."""
    return max(1, min(index_cfg.ivf_nlist, n_items // 39))


def build_params(kind: str, n_items: int, index_cfg: IndexConfig) -> dict:
    """The parameters an index of ``kind`` is built and searched with."""
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"M": index_cfg.hnsw_m, "efConstruction": index_cfg.hnsw_ef_construction, "efSearch": index_cfg.hnsw_ef_search}
    if kind == "ivf":
        nlist = ivf_nlist(n_items, index_cfg)
        return {"nlist": nlist, "nprobe": max(1, min(index_cfg.ivf_nprobe, nlist))}
    raise HmrecError(f"index.kind '{kind}' is not one of {', '.join(KINDS)}: set --set index.kind=flat|hnsw|ivf")


def make_index(kind: str, embeddings: np.ndarray, index_cfg: IndexConfig, ids: np.ndarray | None = None) -> faiss.Index:
    """An inner-product index of ``kind`` (flat | hnsw | ivf) holding ``embeddings``.

    With ``ids`` the index is wrapped in an ID map and searches answer those
    ids (``article_idx``); without, the row positions. Refuses NaN/inf rows.
    """
    emb = check_embeddings(embeddings, ids if ids is not None else np.arange(len(embeddings)), "article_idx")
    n, dim = emb.shape
    if n == 0:
        raise HmrecError(f"no item embeddings to index: {tables.ITEM_FEATURES} is empty for this as-of; rerun features")
    params = build_params(kind, n, index_cfg)
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = params["efConstruction"]
        base.hnsw.efSearch = params["efSearch"]
    else:
        quantizer = faiss.IndexFlatIP(dim)
        base = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        base.train(emb)
        base.nprobe = params["nprobe"]
    if ids is None:
        base.add(emb)
        return base
    wrapped = faiss.IndexIDMap2(base)
    wrapped.add_with_ids(emb, np.asarray(ids, dtype=np.int64))
    return wrapped


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (B, k) float32, ids (B, k) int64); ids are -1 where fewer than k were found."""
    k = min(k, index.ntotal)
    if len(queries) == 0 or k <= 0:
        return np.zeros((len(queries), max(k, 0)), np.float32), np.full((len(queries), max(k, 0)), -1, np.int64)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def recall_vs_exact(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of the exact top-k ids that the approximate search also returned."""
    if exact_ids.size == 0:
        return 1.0
    hits = 0
    total = 0
    for a, e in zip(approx_ids, exact_ids):
        e = e[e >= 0]
        hits += np.isin(e, a[a >= 0]).sum()
        total += len(e)
    return float(hits / total) if total else 1.0


def measure_recall(index: faiss.Index, embeddings: np.ndarray, queries: np.ndarray, ks: list[int],
                   ids: np.ndarray | None = None) -> dict[int, float]:
    """Recall@k of ``index`` against an exact inner-product search over the same items, for each k."""
    exact = make_index("flat", embeddings, _EXACT_CFG, ids=ids)
    _, exact_ids = search(exact, queries, max(ks))
    out = {}
    for k in ks:
        # Searched at each k: an HNSW search widens its beam to k, so a slice of a deeper search would flatter it.
        _, approx_ids = search(index, queries, k)
        out[k] = recall_vs_exact(approx_ids, exact_ids[:, :k])
    return out


# A flat index ignores every tuning field; this only satisfies make_index's signature.
_EXACT_CFG = IndexConfig(kind="flat", hnsw_m=32, hnsw_ef_search=64, hnsw_ef_construction=80,
                         ivf_nlist=1, ivf_nprobe=1, recall_sample=0, candidates=1)


def index_dim(index: faiss.Index) -> int:
    """Vector dimension of an index."""
    return int(index.d)


# ---- shipping an index to Spark workers -------------------------------------------


@dataclass(frozen=True)
class ShippedIndex:
    """A serialised index sent once to Spark workers and deserialised once per Python worker."""

    key: str
    data: bytes

    @classmethod
    def of(cls, index: faiss.Index, label: str) -> "ShippedIndex":
        """Serialise ``index``; ``label`` (e.g. the model version) plus a digest make the cache key."""
        data = faiss.serialize_index(index).tobytes()
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        return cls(key=f"index:{label}:{digest}", data=data)

    def get(self) -> faiss.Index:
        """The deserialised index, cached in this process."""
        return worker_cached(self.key, lambda: faiss.deserialize_index(np.frombuffer(self.data, dtype=np.uint8)))


# ---- index files --------------------------------------------------------------------


def index_dir(cfg: Config, model_version: str) -> Path:
    """``<lakehouse>/indexes/<model_version>/``."""
    return Path(cfg.lakehouse) / "indexes" / str(model_version)


def _write_whole(directory: Path, name: str, writer: Callable[[str], None]) -> None:
    """Write a file under a temporary name and rename it into place, so a reader sees it whole or not at all."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_index(index: faiss.Index, directory: Path, meta: dict) -> Path:
    """Write the index file, then meta.json naming it with its SHA-256; the pair changes at meta.json's rename.

    The index file is named after its checksum (``items-<sha>.faiss``), so a
    new index never overwrites the file the current meta.json names: a job
    stopped at any point leaves the previous pair whole. Files no meta.json
    names any more are removed last.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".items.faiss.")
    os.close(fd)
    faiss.write_index(index, tmp)
    digest = artifacts.sha256_file(tmp)
    name = INDEX_FILE_PATTERN.format(digest[:16])
    os.replace(tmp, directory / name)
    meta = {**meta, "file": name, "sha256": digest}
    _write_whole(directory, META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str)))
    for old in [INDEX_FILE, *[p.name for p in directory.glob(INDEX_FILE_PATTERN.format("*"))]]:
        if old != name:
            with contextlib.suppress(FileNotFoundError):
                (directory / old).unlink()
    return directory


def has_index(cfg: Config, model_version: str, as_of: dt.date) -> bool:
    """Whether a model version's index files are saved, built for ``as_of``."""
    meta_path = index_dir(cfg, model_version) / META_FILE
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return False
    # the file meta.json names (items-<sha>.faiss), or the one name of indexes saved before that
    name = meta.get("file", INDEX_FILE) if isinstance(meta, dict) else INDEX_FILE
    return (index_dir(cfg, model_version) / name).exists() and meta.get("as_of") == as_of.isoformat()


def load_index(cfg: Config, model_version: str, as_of: dt.date | None = None) -> tuple[faiss.Index, dict]:
    """The saved index of a model version and its meta.json; checks its checksum and that it was built for ``as_of``."""
    directory = index_dir(cfg, model_version)
    meta_path = directory / META_FILE
    day = as_of.isoformat() if as_of is not None else "YYYY-MM-DD"
    fix = f"rebuild it with `hmrec index --as-of {day} --model-version {model_version}`"
    if not meta_path.exists():
        raise HmrecError(
            f"no FAISS index for model version {model_version} under {directory}; "
            f"run `hmrec index --as-of {day} --model-version {model_version}`"
        )
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise artifacts.unreadable(meta_path, f"the index meta of model version {model_version}", fix, exc) from None
    if as_of is not None and meta.get("as_of") != as_of.isoformat():
        raise HmrecError(
            f"the index in {directory} was built for as_of {meta.get('as_of')}, not {as_of}; "
            f"run `hmrec index --as-of {as_of}` first"
        )
    index_path = directory / str(meta.get("file") or INDEX_FILE)
    # indexes saved before checksums were recorded have none: only their readability is checked
    artifacts.verify(index_path, meta.get("sha256"), f"the FAISS index of model version {model_version}", fix)
    try:
        index = faiss.read_index(str(index_path))
    except Exception as exc:  # FAISS raises RuntimeError for a damaged file; anything else is no better
        raise artifacts.unreadable(index_path, f"the FAISS index of model version {model_version}", fix, exc) from None
    return index, meta


# ---- the index job ------------------------------------------------------------------


def _sample_user_queries(cfg: Config, spark: SparkSession, as_of: dt.date, embedder: Embedder) -> tuple[np.ndarray, str]:
    """Up to ``index.recall_sample`` user embeddings of customers with history; items stand in when there are none."""
    n = cfg.index.recall_sample
    if n <= 0 or not storage.exists(spark, cfg, tables.USER_FEATURES):
        return np.zeros((0, 0), np.float32), "none"
    users = storage.read_as_of(spark, cfg, tables.USER_FEATURES, as_of).where(F.col("n_purchases") >= max(1, cfg.score.min_history))
    # A hash of the id is a fixed pseudo-random order: the same sample on every rebuild.
    pdf = users.orderBy(F.xxhash64("customer_id")).limit(n).toPandas()
    if pdf.empty:
        return np.zeros((0, 0), np.float32), "none"
    emb = embed_in_batches(embedder.embed_users, pdf, cfg.score.batch_size)
    return check_embeddings(emb, pdf["customer_id"], "customer_id"), "users"


def index_items(
    cfg: Config,
    spark: SparkSession,
    as_of: dt.date,
    embedder: Embedder,
    publish: Callable[[str], None] | None = None,
    kind: str | None = None,
) -> dict:
    """Embed every article of ``tables.ITEM_FEATURES``, write ``tables.ITEM_EMBEDDINGS`` and the FAISS index.

    ``publish(local_dir)`` attaches the index directory to the model version
    (the registry); the returned summary holds counts, timings and recall.
    """
    kind = kind or cfg.index.kind
    version = str(embedder.version)
    with stage("index") as summary:
        summary["model_version"] = version
        summary["kind"] = kind
        items = storage.read_as_of(spark, cfg, tables.ITEM_FEATURES, as_of).toPandas()
        if items.empty:
            raise HmrecError(f"{tables.ITEM_FEATURES} has no rows for as_of {as_of}; run `hmrec features --as-of {as_of}`")
        if items["article_idx"].isna().any():
            bad = items.loc[items["article_idx"].isna(), "article_id"].head(5).tolist()
            raise HmrecError(f"{tables.ITEM_FEATURES}: article_idx is null for article_id {bad}; rerun features")
        if items["article_id"].duplicated().any():
            bad = items.loc[items["article_id"].duplicated(), "article_id"].head(5).tolist()
            raise HmrecError(f"{tables.ITEM_FEATURES} holds article_id {bad} more than once for as_of {as_of}; rerun features")
        items = items.sort_values("article_idx", kind="stable").reset_index(drop=True)
        t0 = time.perf_counter()
        emb = embed_in_batches(embedder.embed_items, items, cfg.score.batch_size)
        emb = check_embeddings(emb, items["article_id"], "article_id")
        summary["items"] = len(items)
        summary["dim"] = emb.shape[1]
        summary["items_per_s"] = round(len(items) / max(time.perf_counter() - t0, 1e-9))
        ids = items["article_idx"].to_numpy(dtype=np.int64)

        t0 = time.perf_counter()
        index = make_index(kind, emb, cfg.index, ids=ids)
        build_seconds = time.perf_counter() - t0
        summary["build_s"] = round(build_seconds, 2)

        recall: dict[str, Any] = {}
        if kind != "flat":
            queries, source = _sample_user_queries(cfg, spark, as_of, embedder)
            if len(queries) == 0:
                rng = np.random.default_rng(0)
                queries = emb[rng.choice(len(emb), size=min(len(emb), max(cfg.index.recall_sample, 1)), replace=False)]
                source = "items"
            measured = measure_recall(index, emb, queries, sorted({cfg.score.k, cfg.index.candidates}), ids=ids)
            recall.update({f"recall@{k}": round(v, 4) for k, v in measured.items()})
            recall["queries"] = int(len(queries))
            recall["query_source"] = source
            summary.update({key: v for key, v in recall.items() if key.startswith("recall@")})
            log("index", f"{kind} recall vs exact on {len(queries)} {source} queries: "
                + ", ".join(f"{key}={v}" for key, v in recall.items() if key.startswith("recall@")))

        emb_pdf = pd.DataFrame(
            {
                "as_of": as_of,
                "model_version": version,
                "article_id": items["article_id"].astype(str),
                "article_idx": items["article_idx"].astype("int32"),
                "embedding": list(emb),
            }
        )
        emb_df = spark.createDataFrame(emb_pdf, schema=schemas.ITEM_EMBEDDINGS)
        storage.write_partition(
            emb_df.select([F.col(f.name) for f in schemas.ITEM_EMBEDDINGS.fields]),
            cfg,
            tables.ITEM_EMBEDDINGS,
            as_of,
            metadata={"as_of": as_of.isoformat(), "model_version": version, "items": len(items)},
            model_version=version,
        )

        meta = {
            "faiss_version": faiss.__version__,
            "kind": kind,
            "metric": "inner_product",
            "ids": "article_idx",
            "dim": int(emb.shape[1]),
            "count": int(index.ntotal),
            "as_of": as_of.isoformat(),
            "model_version": version,
            "params": build_params(kind, len(items), cfg.index),
            "build_seconds": round(build_seconds, 3),
            "recall": recall or {"exact": True},
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        directory = save_index(index, index_dir(cfg, version), meta)
        summary["path"] = str(directory)
        if publish is not None:
            publish(str(directory))
    return dict(summary)


def build_index(cfg: Config, spark: SparkSession, as_of: dt.date, model_version: str | None = None,
                role: str = "serve") -> dict:
    """The ``hmrec index`` stage: embed items with the registered model (of ``role``, unless a version is given) and index them."""
    # Spark workers import this module to unpickle a ShippedIndex; the registry
    # (mlflow, torch) is loaded only by the driver stage that needs it.
    from hmrec.model import registry

    loaded = registry.load_model(cfg, model_version=model_version, as_of=as_of, role=role)
    embedder = ModelEmbedder.from_loaded(loaded)
    return index_items(
        cfg,
        spark,
        as_of,
        embedder,
        publish=lambda local_dir: registry.log_artifacts(cfg, str(loaded.version), local_dir, "index"),
    )


# ---- reading the item vectors back ------------------------------------------------


def read_item_embeddings(
    spark: SparkSession, cfg: Config, as_of: dt.date, version: str, need_vectors: bool, dim: int | None = None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The item vectors the index job wrote for one model version and as-of date.

    Returns (article_id and article_idx of every row of ``tables.ITEM_EMBEDDINGS``
    for ``version`` and ``as_of``, their checked (N, D) float32 vectors or None).
    The vectors are read only with ``need_vectors`` and are refused, naming the
    articles, when not finite or not of dimension ``dim`` (when given). No rows
    at all is an error that names ``hmrec index``.
    """
    cols = ["article_id", "article_idx"] + (["embedding"] if need_vectors else [])
    items = (
        storage.read_as_of(spark, cfg, tables.ITEM_EMBEDDINGS, as_of)
        .where(F.col("model_version") == F.lit(version))
        .select(*cols)
        .toPandas()
    )
    if items.empty:
        raise HmrecError(
            f"{tables.ITEM_EMBEDDINGS} has no rows for as_of {as_of} and model version {version}; "
            f"run `hmrec index --as-of {as_of}` first"
        )
    if not need_vectors:
        return items, None
    vectors = check_embeddings(np.stack(items["embedding"].to_numpy()), items["article_id"], "article_id", dim=dim)
    return items.drop(columns="embedding"), vectors
