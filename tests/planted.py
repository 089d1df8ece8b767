"""A planted scoring world whose right answers are known, shared by the scoring and choice tests.

40 articles in 4 groups (group = article_idx % 4), each article a unit vector
on its group's axis, tilted a little so that within a group a lower
article_idx scores higher; a customer of group g is the unit vector of axis
g. So a customer's model list is known: g, g+4, g+8, ...
"""
from __future__ import annotations

import numpy as np

from hmrec.serve.embedders import LookupEmbedder
from tests.conftest import aid as conftest_aid, hashed_cid

N_ITEMS = 40
GROUPS = 4


def cid(i: int) -> str:
    return hashed_cid(i)


def aid(i: int) -> str:
    return conftest_aid(i, 700000000)


def item_vectors() -> np.ndarray:
    v = np.zeros((N_ITEMS, GROUPS), dtype=np.float32)
    for i in range(N_ITEMS):
        g = i % GROUPS
        v[i, g] = 1.0
        v[i, (g + 1) % GROUPS] = 0.01 * (i // GROUPS)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def planted_embedder(n_users: int, version: str = "v1") -> LookupEmbedder:
    users = np.eye(GROUPS, dtype=np.float32)[np.arange(n_users) % GROUPS]
    return LookupEmbedder(version, users, item_vectors())


def group_list(g: int, n: int, skip: tuple[int, ...] = ()) -> list[int]:
    return [i for i in range(g, N_ITEMS, GROUPS) if i not in skip][:n]
