"""Epoch checkpoints: written atomically by rank 0 after every epoch, read back to resume a killed run.

A checkpoint holds the weights, both optimisers' state, the random number
generators' state and the step count, so a resumed run ends with the same
weights as an uninterrupted one.
"""
from __future__ import annotations

import datetime as dt
import os
import random
from dataclasses import asdict

import numpy as np
import torch

from hmrec.config import Config
from hmrec.errors import HmrecError
from hmrec.progress import log
from hmrec.train import STAGE

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "last.pt"
CHECKPOINT_KEYS = (
    "format", "epoch", "step", "model", "sparse_opt", "dense_opt", "rng", "model_args", "config", "as_of",
    "run_id", "history",
)


def rng_state() -> dict:
    """The state of torch's, numpy's and Python's global generators, as tensors and plain values."""
    # numpy's key array as a tensor: torch.load(weights_only=True) refuses numpy arrays
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore the generators from :func:`rng_state`'s output."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a temp file in the same directory, then os.replace."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint; an unreadable or incomplete file is an HmrecError naming it."""
    advice = "delete it or rerun without --resume"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file fails in many different ways
        first_line = (str(exc).splitlines() or [""])[0]
        if "weights_only" in str(exc) or "can still be loaded" in first_line:
            first_line = "not a checkpoint this version can read"  # the unpickler's advice is not for the user
        raise HmrecError(
            f"checkpoint {path} is corrupted or unreadable ({exc.__class__.__name__}: {first_line}); {advice}"
        ) from None
    if not isinstance(state, dict):
        raise HmrecError(f"checkpoint {path} holds a {type(state).__name__}, not a training checkpoint; {advice}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise HmrecError(f"checkpoint {path} is incomplete (missing {', '.join(missing)}); {advice}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise HmrecError(f"checkpoint {path} has format {state['format']!r}, expected {CHECKPOINT_FORMAT}; {advice}")
    return state


def checkpoint_path(cfg: Config, as_of: dt.date, role: str = "serve") -> str:
    """Local path of the epoch checkpoint of the training run of ``role`` for ``as_of``."""
    root = cfg.lakehouse
    if root.startswith("file://"):
        root = root[len("file://") :]
    elif "://" in root:
        raise HmrecError(
            f"paths.lakehouse={cfg.paths.lakehouse}: training checkpoints need a local or mounted "
            f"file system path; mount the storage and point paths.lakehouse at the mount"
        )
    name = as_of.isoformat() if role == "serve" else f"{as_of.isoformat()}-{role}"
    return os.path.join(root, "_checkpoints", STAGE, name, CHECKPOINT_FILE)


def resume_state(path: str, model_args: dict, cfg: Config) -> dict | None:
    """The checkpoint to continue from, checked against this run's model; None if there is none."""
    if not os.path.exists(path):
        log(STAGE, f"--resume: no checkpoint at {path}, starting from scratch")
        return None
    state = load_checkpoint(path)
    if state["model_args"] != model_args:
        changed = sorted(k for k in set(model_args) | set(state["model_args"]) if state["model_args"].get(k) != model_args.get(k))
        raise HmrecError(
            f"checkpoint {path} was written for a model with different {', '.join(changed)} "
            f"(the feature tables or train config changed since); rerun without --resume"
        )
    old_train = state["config"].get("train", {})
    for key, value in asdict(cfg.train).items():
        if old_train.get(key) != value:
            log(STAGE, f"--resume: train.{key} was {old_train.get(key)!r} in the checkpoint, now {value!r}")
    log(STAGE, f"resuming from {path} after epoch {state['epoch']} (step {state['step']})")
    return state
