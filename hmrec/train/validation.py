"""Validation after every epoch: recall@k over a seeded sample of the buyers of a later week.

A run fitted at a cutoff (role ``fit``) is monitored on the validation week
of the as-of it is fitted for (``tables.VALIDATION``): purchases after the
run's own cutoff, so none of them is among its training rows. Rank 0 ranks
every article for each sampled user with the model as it stands and counts
how many of the user's purchases in that week reach the top k.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyspark.sql import functions as F
from torch import Tensor

from hmrec.config import Config
from hmrec.lake import storage, tables
from hmrec.model.two_tower import ITEM_ID, USER_ID, TwoTower
from hmrec.train.step import derived_seed, take

# Users scored at once during validation: (chunk, num_items) floats.
VAL_USER_CHUNK = 256


@dataclass
class ValSet:
    """The week's purchases of a sample of users: user i bought targets[offsets[i]:offsets[i+1]]."""

    users: Tensor  # (V,) customer_idx
    offsets: Tensor  # (V + 1,)
    targets: Tensor  # (T,) article_idx


@torch.no_grad()
def item_embeddings(model: TwoTower, items: dict[str, Tensor], chunk: int = 65536) -> Tensor:
    """(num_items, D) embeddings of every row of an item lookup table."""
    n = items[ITEM_ID].shape[0]
    parts = [model.item_tower(take(items, idx)) for idx in torch.arange(n).split(chunk)]
    return torch.cat(parts) if parts else torch.zeros((0, model.model_args["embedding_dim"]))


@torch.no_grad()
def recall_at_k(model: TwoTower, users: dict[str, Tensor], items: dict[str, Tensor], val: ValSet, k: int) -> float:
    """Mean over validation users of |top-k ∩ bought| / |bought|, ranking every article."""
    was_training = model.training
    model.eval()
    try:
        item_emb = item_embeddings(model, items)  # (N, D)
        n_items = item_emb.shape[0]
        counts = val.offsets[1:] - val.offsets[:-1]  # (V,)
        owner = torch.repeat_interleave(torch.arange(len(val.users)), counts)  # (T,)
        target_keys = owner * (n_items + 1) + val.targets  # (T,)
        hits = torch.zeros(len(val.users))
        for start in range(0, len(val.users), VAL_USER_CHUNK):
            rows = torch.arange(start, min(start + VAL_USER_CHUNK, len(val.users)))
            user_emb = model.user_tower(take(users, val.users[rows]))  # (b, D)
            top = (user_emb @ item_emb.T).topk(min(k, n_items), dim=1).indices  # (b, k)
            keys = rows.unsqueeze(1) * (n_items + 1) + top  # (b, k)
            hits[rows] = torch.isin(keys, target_keys).sum(dim=1).float()
        return float((hits / counts.clamp_min(1).float()).mean())
    finally:
        model.train(was_training)


def validation_set(spark: Any, cfg: Config, labels_as_of: dt.date, num_users: int, num_items: int) -> ValSet | None:
    """The validation week of ``labels_as_of``, for up to train.val_users users (a seeded sample), or None when empty.

    One week of purchases is small enough to sample on the driver.
    """
    tc = cfg.train
    if tc.val_users <= 0 or not storage.exists(spark, cfg, tables.VALIDATION):
        return None
    pdf = (
        storage.read_as_of(spark, cfg, tables.VALIDATION, labels_as_of)
        .select(USER_ID, ITEM_ID)
        .where(F.col(USER_ID).between(0, num_users - 1) & F.col(ITEM_ID).between(0, num_items - 1))
        .toPandas()
    )
    if pdf.empty:
        return None
    pdf = pdf.astype(np.int64).drop_duplicates().sort_values([USER_ID, ITEM_ID])
    candidates = np.unique(pdf[USER_ID].to_numpy())
    picked = np.sort(np.random.RandomState(derived_seed(tc.seed, "val")).permutation(candidates)[: tc.val_users])
    pdf = pdf[pdf[USER_ID].isin(picked)]
    users, counts = np.unique(pdf[USER_ID].to_numpy(), return_counts=True)
    return ValSet(
        users=torch.from_numpy(users),
        offsets=torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)),
        targets=torch.from_numpy(pdf[ITEM_ID].to_numpy()),
    )
