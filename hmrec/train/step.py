"""One optimisation step and the small pure helpers it rests on.

The step embeds a batch's customers and its distinct candidate articles,
computes the sampled-softmax loss of :mod:`hmrec.model.loss`, and updates the
id tables with a row-wise Adam and every dense parameter with AdamW. The
towers' matrix products run in the compute type of :func:`compute_dtype`.
"""
from __future__ import annotations

import functools
import hashlib
import math

import torch
from torch import Tensor

from hmrec.config import TrainConfig
from hmrec.errors import HmrecError
from hmrec.model.loss import candidate_log_q, unique_candidates, unique_retrieval_loss
from hmrec.model.optim import RowAdam
from hmrec.model.two_tower import TwoTower
from hmrec.train.distributed import all_reduce_gradients

COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def derived_seed(seed: int, *parts: object) -> int:
    """A non-zero 31-bit seed derived from ``seed`` and ``parts``, the same in every process.

    (Python's ``hash`` is salted per process, and Petastorm treats seed 0 as 'unseeded'.)
    """
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return (int.from_bytes(digest[:4], "little") & 0x7FFFFFFF) | 1


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def take(table: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    """Rows ``idx`` of every tensor of a feature lookup table."""
    # index_select: about 3x faster than advanced indexing (v[idx]) on a CPU
    return {k: v.index_select(0, idx) for k, v in table.items()}


def make_optimizers(model: TwoTower, tc: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """(row-wise Adam over the id tables, AdamW over every dense parameter)."""
    sparse, dense = model.parameter_groups()
    sparse_opt = RowAdam(sparse, lr=tc.sparse_lr)
    # fused: one kernel for all dense tensors instead of a dozen small ops per tensor
    dense_opt = torch.optim.AdamW(dense, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    return sparse_opt, dense_opt


def has_native_bfloat16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


@functools.cache
def _auto_dtype() -> torch.dtype:
    return torch.bfloat16 if has_native_bfloat16() else torch.float32


def compute_dtype(tc: TrainConfig) -> torch.dtype:
    """The torch type of ``train.compute_dtype``; ``auto`` is bfloat16 where the CPU has bfloat16 instructions."""
    if tc.compute_dtype == "auto":
        return _auto_dtype()
    try:
        return COMPUTE_DTYPES[tc.compute_dtype]
    except KeyError:
        raise HmrecError(
            f"config key train.compute_dtype must be auto, {' or '.join(COMPUTE_DTYPES)}, got {tc.compute_dtype!r}"
        ) from None


def compute_dtype_name(tc: TrainConfig) -> str:
    """``train.compute_dtype`` as resolved on this machine: bfloat16 or float32."""
    return str(compute_dtype(tc)).removeprefix("torch.")


def train_step(
    model: TwoTower,
    sparse_opt: torch.optim.Optimizer,
    dense_opt: torch.optim.Optimizer,
    users: dict[str, Tensor],
    items: dict[str, Tensor],
    customer_idx: Tensor,
    article_idx: Tensor,
    negatives: Tensor,
    item_prob: Tensor,
    tc: TrainConfig,
    world_size: int = 1,
) -> Tensor:
    """One optimisation step on a batch of positive pairs; returns the (detached) loss."""
    # each distinct candidate article once: popular articles recur among a batch's positives
    articles, positives, counts = unique_candidates(torch.cat([article_idx, negatives]), len(article_idx))  # (U,)
    dtype = compute_dtype(tc)
    # the towers' matrix products in ``dtype`` (weights and their updates stay float32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        user_emb, item_emb = model(take(users, customer_idx), take(items, articles))  # (B, D), (U, D) float32
    log_q = None
    if tc.logq_correction:
        log_q = candidate_log_q(articles, item_prob, len(article_idx), len(negatives), model.num_items)  # (U,)
    loss = unique_retrieval_loss(user_emb, item_emb, positives, counts, tc.temperature, log_q, dtype=dtype)
    sparse_opt.zero_grad(set_to_none=True)
    dense_opt.zero_grad(set_to_none=True)
    loss.backward()
    if world_size > 1:
        all_reduce_gradients(model, world_size)
    dense_opt.step()
    sparse_opt.step()
    return loss.detach()
