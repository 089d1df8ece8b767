"""Throughput probes of the train job's two halves, for the benchmark (``python -m hmrec.bench train``).

:func:`loader_throughput` times the Petastorm loader alone over real training
pairs; :func:`trainer_throughput` times :func:`hmrec.train.step.train_step`
alone on random in-memory tables of a given size. Their ratio tells which
half limits the training loop.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import Any

import torch
from torch import Tensor

from hmrec.config import Config
from hmrec.etl.split import training_window
from hmrec.model.two_tower import ITEM_ID, USER_ID, build_model
from hmrec.train.pairs import materialise_pairs, open_loader, read_ahead
from hmrec.train.step import derived_seed, make_optimizers, train_step

# Length of the synthetic purchase history used by trainer_throughput.
SYNTHETIC_HISTORY = 12


def loader_throughput(cfg: Config, spark: Any, as_of: dt.date, max_batches: int = 1000) -> float:
    """Rows/s of the Petastorm loader alone over the as-of's training pairs (materialising not timed)."""
    rows = training_window(spark, cfg, as_of)
    n_rows = rows.count()
    converter = materialise_pairs(spark, cfg, rows, n_rows, 1)
    try:
        n = 0
        start = time.perf_counter()
        with open_loader(converter, cfg.train, 0, 1, derived_seed(cfg.train.seed, "reader", 0)) as loader:
            batches = read_ahead(loader, cfg.train.loader_workers)
            try:
                for i, batch in enumerate(batches):
                    n += len(batch[ITEM_ID])
                    if i + 1 >= max_batches:
                        break
            finally:
                batches.close()
        return n / max(time.perf_counter() - start, 1e-9)
    finally:
        converter.delete()


def synthetic_model_args(cfg: Config, num_users: int, num_items: int) -> dict:
    """Model arguments at a given table size, with vocabularies about H&M's, for throughput probes."""
    return {
        "num_users": num_users,
        "num_items": num_items,
        "user_cat_sizes": [8, 4, 4, 2, 2],
        "item_cat_sizes": [133, 20, 31, 51, 9, 21, 251, 11, 6, 58, 22],
        "n_shares": 20,
        "user_num_mean": [0.0] * 6,
        "user_num_std": [1.0] * 6,
        "item_num_mean": [0.0] * 6,
        "item_num_std": [1.0] * 6,
        "embedding_dim": cfg.train.embedding_dim,
        "id_dim": cfg.train.id_dim,
        "attr_dim": cfg.train.attr_dim,
        "hidden_dim": cfg.train.hidden_dim,
    }


def synthetic_tables(model_args: dict, gen: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Random user and item lookup tables of the sizes in ``model_args``."""
    nu, ni = model_args["num_users"], model_args["num_items"]

    def codes(n: int, sizes: list[int]) -> Tensor:
        return torch.stack([torch.randint(s, (n,), generator=gen) for s in sizes], dim=1)

    users = {
        USER_ID: torch.arange(nu),
        "user_cat": codes(nu, model_args["user_cat_sizes"]),  # (U, Cu)
        "user_num": torch.randn(nu, len(model_args["user_num_mean"]), generator=gen),  # (U, Nu)
        "category_shares": torch.rand(nu, model_args["n_shares"], generator=gen),  # (U, S)
        "last_articles": torch.randint(ni + 1, (nu, SYNTHETIC_HISTORY), generator=gen),  # (U, L)
    }
    items = {
        ITEM_ID: torch.arange(ni),
        "item_cat": codes(ni, model_args["item_cat_sizes"]),  # (I, Ci)
        "item_num": torch.randn(ni, len(model_args["item_num_mean"]), generator=gen),  # (I, Ni)
    }
    return users, items


def trainer_throughput(model_args: dict, n_steps: int, batch_size: int, cfg: Config) -> float:
    """Samples/s of :func:`train_step` alone, fed from in-memory random tensors at the given sizes."""
    tc = cfg.train
    gen = torch.Generator().manual_seed(tc.seed)
    model = build_model(model_args, seed=tc.seed)
    sparse_opt, dense_opt = make_optimizers(model, tc)
    users, items = synthetic_tables(model_args, gen)
    num_items = model_args["num_items"]
    item_prob = torch.full((num_items,), 1.0 / num_items)
    warmup = 3

    def step() -> None:
        cust = torch.randint(model_args["num_users"], (batch_size,), generator=gen)
        art = torch.randint(num_items, (batch_size,), generator=gen)
        neg = torch.randint(num_items, (tc.random_negatives,), generator=gen)
        train_step(model, sparse_opt, dense_opt, users, items, cust, art, neg, item_prob, tc)

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    return n_steps * batch_size / max(time.perf_counter() - start, 1e-9)
