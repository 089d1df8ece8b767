"""Embedders: what the index, score and evaluate jobs need from a model.

The model is reached through the :class:`Embedder` protocol so that the jobs
can be exercised with a hand-made embedder whose right answers are known, and
so that the two-tower code (and torch) is imported only when a real model is
used. Rebuilt models and deserialised indexes are kept in a per-process cache,
so a Spark Python worker builds each once rather than once per task.
"""
from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from typing import Any, Callable, Protocol, TypeVar, runtime_checkable

import numpy as np
import pandas as pd

from hmrec.errors import HmrecError
from hmrec.lake import tables

T = TypeVar("T")

# Rebuilt models, deserialised indexes and boosters, per Python process. Spark reuses its
# Python workers, so each is built once per worker rather than once per task. The least
# recently used go past WORKER_CACHE_SIZE: a process that refreshes many versions (a
# backtest, a benchmark's arms, the driver of a test session) keeps the few its job is
# using, not every model it ever loaded. A job uses a few at a time: a model, its index
# and a booster (compiled or not), of one version or two (a champion and a challenger).
WORKER_CACHE_SIZE = 8
_WORKER_CACHE: OrderedDict[str, Any] = OrderedDict()
_LOCK = threading.Lock()


def remember(key: str, value: Any) -> None:
    """Cache ``value`` under ``key`` in this process, dropping the least recently used past the size."""
    with _LOCK:
        _WORKER_CACHE[key] = value
        _WORKER_CACHE.move_to_end(key)
        while len(_WORKER_CACHE) > WORKER_CACHE_SIZE:
            _WORKER_CACHE.popitem(last=False)


def worker_cached(key: str, build: Callable[[], T]) -> T:
    """The object cached in this process under ``key``, built with ``build()`` on first use (or after it was
    dropped as the least recently used)."""
    with _LOCK:
        value = _WORKER_CACHE.get(key)
        if value is not None:
            _WORKER_CACHE.move_to_end(key)
            return value
    value = build()
    remember(key, value)
    return value


@runtime_checkable
class Embedder(Protocol):
    """What the index, score and evaluate jobs need from a model.

    Implementations must be picklable with the standard pickle module (Spark
    ships them to its Python workers) and cheap to pickle: keep weights as
    bytes and rebuild lazily, cached by ``version``.
    """

    version: str

    def embed_users(self, pdf: pd.DataFrame) -> np.ndarray:
        """(B, D) float32 vectors for rows of ``tables.USER_FEATURES``."""
        ...

    def embed_items(self, pdf: pd.DataFrame) -> np.ndarray:
        """(N, D) float32 vectors for rows of ``tables.ITEM_FEATURES``."""
        ...


# The id map each lookup column is numbered by, named when an id falls outside a table.
_ID_MAPS = {"customer_idx": tables.CUSTOMER_INDEX, "article_idx": tables.ARTICLE_INDEX}


class LookupEmbedder:
    """Embeddings read from fixed tables indexed by ``customer_idx`` / ``article_idx``.

    Tests plant vectors with it whose nearest neighbours are known, so the
    index and score jobs can be checked against exact answers without a
    model. An index outside a table is an error naming it.
    """

    def __init__(self, version: str, user_vectors: np.ndarray, item_vectors: np.ndarray) -> None:
        self.version = version
        self.user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)

    @staticmethod
    def _take(table: np.ndarray, idx: pd.Series, column: str) -> np.ndarray:
        ids = idx.to_numpy(dtype=np.int64, na_value=-1)
        bad = (ids < 0) | (ids >= len(table))
        if bad.any():
            raise HmrecError(
                f"{column} {ids[bad][:5].tolist()} outside the embedding table of {len(table)} rows; "
                f"rebuild the embeddings for the current {_ID_MAPS[column]}"
            )
        return table[ids]

    def embed_users(self, pdf: pd.DataFrame) -> np.ndarray:
        """Rows of the user table at ``pdf.customer_idx``."""
        return self._take(self.user_vectors, pdf["customer_idx"], "customer_idx")

    def embed_items(self, pdf: pd.DataFrame) -> np.ndarray:
        """Rows of the item table at ``pdf.article_idx``."""
        return self._take(self.item_vectors, pdf["article_idx"], "article_idx")


class ModelEmbedder:
    """Adapter from a registered two-tower model to :class:`Embedder`.

    Pickles as the state_dict bytes plus the model's arguments; a Spark worker
    rebuilds the model on first use and keeps it in the per-process cache
    keyed by version and a digest of the weights: one process can serve two
    lakehouses (a benchmark's arms, a test session), each with its own version
    1, and a worker that outlives a job must not answer with the other's
    model. ``threads`` caps torch's intra-op threads in that worker
    so a task uses the cores Spark gave it and no more.

    torch and the two-tower code are imported inside the methods: Spark
    workers import this module to unpickle any embedder, and one replaying
    fixed vectors should not pay for loading torch.
    """

    def __init__(self, version: str, model_args: dict, state: bytes, threads: int = 1) -> None:
        self.version = version
        self.model_args = dict(model_args)
        self.state = state
        self.threads = threads
        self.digest = hashlib.blake2b(state, digest_size=8).hexdigest()

    @classmethod
    def from_loaded(cls, loaded: Any, threads: int = 1) -> "ModelEmbedder":
        """Build from a ``registry.LoadedModel``; the driver keeps using the loaded model itself."""
        import torch  # kept out of module import: see the class notes

        buf = io.BytesIO()
        torch.save(loaded.model.state_dict(), buf)
        emb = cls(str(loaded.version), loaded.model.model_args, buf.getvalue(), threads)
        remember(emb._cache_key(), loaded.model)
        return emb

    def _cache_key(self) -> str:
        return f"model:{self.version}:{self.digest}"

    def _build(self) -> Any:
        import torch  # kept out of module import: see the class notes

        from hmrec.model import two_tower  # imports torch: see the class notes

        torch.set_num_threads(max(1, self.threads))
        model = two_tower.build_model(self.model_args, device="cpu")
        state = torch.load(io.BytesIO(self.state), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return model

    def _model(self) -> Any:
        return worker_cached(self._cache_key(), self._build)

    def embed_users(self, pdf: pd.DataFrame) -> np.ndarray:
        """User tower on rows of ``tables.USER_FEATURES``, (B, D) float32."""
        import torch  # kept out of module import: see the class notes

        from hmrec.model import two_tower  # imports torch: see the class notes

        model = self._model()
        with torch.inference_mode():
            out = model.user_tower(two_tower.user_inputs(pdf))  # (B, D)
        return out.detach().to(torch.float32).cpu().numpy()

    def embed_items(self, pdf: pd.DataFrame) -> np.ndarray:
        """Item tower on rows of ``tables.ITEM_FEATURES``, (N, D) float32."""
        import torch  # kept out of module import: see the class notes

        from hmrec.model import two_tower  # imports torch: see the class notes

        model = self._model()
        with torch.inference_mode():
            out = model.item_tower(two_tower.item_inputs(pdf))  # (N, D)
        return out.detach().to(torch.float32).cpu().numpy()


def embed_in_batches(fn: Callable[[pd.DataFrame], np.ndarray], pdf: pd.DataFrame, batch_size: int) -> np.ndarray:
    """Apply an embed function to ``pdf`` in slices of ``batch_size`` rows, (N, D) float32."""
    parts = [np.asarray(fn(pdf.iloc[i : i + batch_size]), dtype=np.float32) for i in range(0, len(pdf), batch_size)]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def check_embeddings(emb: np.ndarray, ids: np.ndarray | pd.Series, what: str, dim: int | None = None) -> np.ndarray:
    """Refuse embeddings that are not a finite (N, dim) matrix; errors name the offending ids.

    ``what`` names the rows, e.g. ``"article_id"``; returns ``emb`` as contiguous float32.
    """
    ids = np.asarray(ids)
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != len(ids):
        raise HmrecError(
            f"embedder returned shape {emb.shape} for {len(ids)} {what}s (first: {ids[:3].tolist()}); "
            f"expected ({len(ids)}, D): check the model's towers"
        )
    if dim is not None and emb.shape[1] != dim:
        raise HmrecError(
            f"embeddings of {what} {ids[:5].tolist()} have dimension {emb.shape[1]}, the index expects {dim}: "
            f"rebuild the index with `hmrec index` for this model version"
        )
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise HmrecError(
            f"{int(bad.sum())} embeddings contain NaN or inf, {what} {ids[bad][:10].tolist()}: "
            f"the model is broken (retrain it) or its input features hold NaN (rerun features)"
        )
    return np.ascontiguousarray(emb, dtype=np.float32)
