"""The two-tower retrieval model: feature tensors and the towers.

A user and an article each become an L2-normalised vector of size
``embedding_dim``; their inner product is the cosine similarity the model was
trained to rank with, so FAISS inner-product search over item vectors returns
exactly the model's top items.

Feature tensors come from the feature tables (``tables.USER_FEATURES`` and
``tables.ITEM_FEATURES``) through :func:`user_inputs` and :func:`item_inputs`.
Those functions only reshape and log1p; everything learned or measured at
train time (normalisation statistics, vocabulary sizes) lives inside the
model, so the same two calls give the same embeddings at scoring time as
during training. The training loss is in :mod:`hmrec.model.loss`.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hmrec.lake import schemas

USER_ID = "customer_idx"
ITEM_ID = "article_idx"

# Item numerics that are counts or day spans: heavy-tailed, so log1p before standardising.
ITEM_LOG1P: tuple[str, ...] = ("sales_7d", "sales_28d", "sales_total", "days_since_first_sale")

# Embedding tables start small so the numeric features (unit variance) are not
# drowned out before anything has been learned.
EMBEDDING_INIT_STD = 0.1


# ---- feature tensors ---------------------------------------------------------


def _int_column(pdf: pd.DataFrame, name: str) -> np.ndarray:
    """An integer column as int64; nulls (NaN after Arrow) become 0, the 'unknown' code."""
    return pd.to_numeric(pdf[name]).fillna(0).to_numpy().astype(np.int64)


def _float_column(pdf: pd.DataFrame, name: str) -> np.ndarray:
    """A float column as float32; nulls stay NaN (the model maps them to the mean)."""
    return pd.to_numeric(pdf[name]).to_numpy(dtype=np.float32, na_value=np.nan)


def _padded(lists: pd.Series, dtype: type, offset: int = 0) -> np.ndarray:
    """Variable-length arrays (None allowed) as one zero-padded 2-D array; ``offset`` is added to values."""
    values = [np.asarray(v if v is not None else [], dtype=dtype) for v in lists]
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    width = max(int(lengths.max(initial=0)), 1)
    out = np.zeros((len(values), width), dtype=dtype)
    if lengths.sum() > 0:
        flat = np.concatenate([v for v in values if len(v)])
        rows = np.repeat(np.arange(len(values)), lengths)
        # position of each element inside its own row
        cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = flat + offset
    return out


def user_inputs(pdf: pd.DataFrame) -> dict[str, Tensor]:
    """Tensors for the user tower from rows of ``tables.USER_FEATURES`` (any subset of its rows).

    ``last_articles`` holds article_idx + 1 with 0 as padding, because the
    history bag reserves index 0 for padding.
    """
    n = len(pdf)
    cats = [_int_column(pdf, c) for c in schemas.USER_CATEGORICALS]
    nums = [_float_column(pdf, c) for c in schemas.USER_NUMERICS]
    return {
        USER_ID: torch.from_numpy(_int_column(pdf, USER_ID)),  # (B,)
        "user_cat": torch.from_numpy(np.stack(cats, axis=1) if n else np.zeros((0, len(cats)), np.int64)),  # (B, Cu)
        "user_num": torch.from_numpy(np.stack(nums, axis=1) if n else np.zeros((0, len(nums)), np.float32)),  # (B, Nu)
        "category_shares": torch.from_numpy(_padded(pdf["category_shares"], np.float32)),  # (B, S)
        "last_articles": torch.from_numpy(_padded(pdf["last_articles"], np.int64, offset=1)),  # (B, L)
    }


def item_inputs(pdf: pd.DataFrame) -> dict[str, Tensor]:
    """Tensors for the item tower from rows of ``tables.ITEM_FEATURES`` (any subset of its rows)."""
    n = len(pdf)
    cats = [_int_column(pdf, f"{c}_code") for c in schemas.ITEM_CATEGORICALS]
    nums = []
    for c in schemas.ITEM_NUMERICS:
        x = _float_column(pdf, c)
        nums.append(np.log1p(np.clip(x, 0.0, None)) if c in ITEM_LOG1P else x)
    return {
        ITEM_ID: torch.from_numpy(_int_column(pdf, ITEM_ID)),  # (N,)
        "item_cat": torch.from_numpy(np.stack(cats, axis=1) if n else np.zeros((0, len(cats)), np.int64)),  # (N, Ci)
        "item_num": torch.from_numpy(np.stack(nums, axis=1) if n else np.zeros((0, len(nums)), np.float32)),  # (N, Ni)
    }


def numeric_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-column mean and standard deviation of a (rows, columns) float tensor, ignoring NaN.

    A constant or empty column gets std 1 so standardising never divides by zero.
    """
    arr = x.double().numpy()
    if arr.shape[0] == 0:
        return [0.0] * arr.shape[1], [1.0] * arr.shape[1]
    with warnings.catch_warnings():
        # all-NaN columns warn here; they are handled just below
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(arr, axis=0)
        std = np.nanstd(arr, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def model_args_from_features(
    users: dict[str, Tensor],
    items: dict[str, Tensor],
    num_users: int,
    num_items: int,
    embedding_dim: int,
    id_dim: int,
    attr_dim: int,
    hidden_dim: int,
) -> dict:
    """Constructor arguments of :class:`TwoTower` measured on the training-time feature tensors.

    Vocabulary sizes are the largest code seen + 1 (0 is 'unknown'); the
    normalisation statistics are the numeric columns' means and stds.
    """
    user_mean, user_std = numeric_stats(users["user_num"])
    item_mean, item_std = numeric_stats(items["item_num"])

    def sizes(cat: Tensor) -> list[int]:
        if cat.shape[0] == 0:
            return [1] * cat.shape[1]
        return [int(v) + 1 for v in cat.clamp(min=0).max(dim=0).values]

    return {
        "num_users": int(num_users),
        "num_items": int(num_items),
        "user_cat_sizes": sizes(users["user_cat"]),
        "item_cat_sizes": sizes(items["item_cat"]),
        "n_shares": int(users["category_shares"].shape[1]),
        "user_num_mean": user_mean,
        "user_num_std": user_std,
        "item_num_mean": item_mean,
        "item_num_std": item_std,
        "embedding_dim": int(embedding_dim),
        "id_dim": int(id_dim),
        "attr_dim": int(attr_dim),
        "hidden_dim": int(hidden_dim),
    }


# ---- the model -----------------------------------------------------------------


def _in_range(codes: Tensor, size: int, fallback: int) -> Tensor:
    """Codes outside [0, size) (new at scoring time) replaced by ``fallback``."""
    return torch.where((codes >= 0) & (codes < size), codes, torch.full_like(codes, fallback))


def _offsets(sizes: list[int]) -> Tensor:
    """Start of each column's codes in a shared attribute table."""
    return torch.tensor([0, *sizes], dtype=torch.int64).cumsum(0)[:-1]


class _RowGather(torch.autograd.Function):
    """``weight[rows]`` for a small table, whose dense gradient is summed with ``index_add_``.

    The same as ``F.embedding`` without padding, at less than half the cost of
    its CPU backward (which sorts the indices first).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.num_rows = weight.shape[0]
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (rows,) = ctx.saved_tensors
        return grad.new_zeros(ctx.num_rows, grad.shape[1]).index_add_(0, rows, grad), None


def _attributes(table: nn.Embedding, codes: Tensor, sizes: Tensor, offsets: Tensor) -> Tensor:
    """(N, C * A) embeddings of C categorical columns; codes outside a column's vocabulary count as 0."""
    codes = torch.where((codes >= 0) & (codes < sizes), codes, torch.zeros_like(codes))  # (N, C)
    n = codes.shape[0]
    return _RowGather.apply(table.weight, (codes + offsets).reshape(-1)).view(n, -1)  # (N, C * A)


def _fit_width(x: Tensor, width: int) -> Tensor:
    """Zero-pad or truncate the last dimension to ``width``."""
    if x.shape[-1] == width:
        return x
    if x.shape[-1] > width:
        return x[..., :width]
    return F.pad(x, (0, width - x.shape[-1]))


class TwoTower(nn.Module):
    """User and item towers ending in L2-normalised vectors of size ``embedding_dim``.

    The id tables (customer, article, purchase-history bag) have one extra row:
    the last row of the id tables stands for ids unseen at training time and
    stays zero; row 0 of the history bag is padding. Those three tables produce
    sparse gradients (see :meth:`parameter_groups`).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        user_cat_sizes: list[int],
        item_cat_sizes: list[int],
        n_shares: int,
        user_num_mean: list[float],
        user_num_std: list[float],
        item_num_mean: list[float],
        item_num_std: list[float],
        embedding_dim: int = 64,
        id_dim: int = 32,
        attr_dim: int = 8,
        hidden_dim: int = 128,
    ) -> None:
        super().__init__()
        self.model_args = {
            "num_users": int(num_users),
            "num_items": int(num_items),
            "user_cat_sizes": [int(v) for v in user_cat_sizes],
            "item_cat_sizes": [int(v) for v in item_cat_sizes],
            "n_shares": int(n_shares),
            "user_num_mean": [float(v) for v in user_num_mean],
            "user_num_std": [float(v) for v in user_num_std],
            "item_num_mean": [float(v) for v in item_num_mean],
            "item_num_std": [float(v) for v in item_num_std],
            "embedding_dim": int(embedding_dim),
            "id_dim": int(id_dim),
            "attr_dim": int(attr_dim),
            "hidden_dim": int(hidden_dim),
        }
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.n_shares = int(n_shares)

        self.user_id = nn.Embedding(num_users + 1, id_dim, sparse=True)
        # the mean of the last articles' rows (padding excluded); an Embedding plus a sum rather than an
        # EmbeddingBag, whose CPU kernels are several times slower at this shape
        self.user_history = nn.Embedding(num_items + 1, id_dim, sparse=True, padding_idx=0)
        # all categorical columns share one table (column j starts after the codes of columns < j),
        # so a batch needs one lookup instead of one per column
        self.user_attrs = nn.Embedding(sum(user_cat_sizes), attr_dim)
        self.register_buffer("user_cat_sizes", torch.tensor(user_cat_sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("user_cat_offsets", _offsets(user_cat_sizes), persistent=False)
        self.register_buffer("user_num_mean", torch.tensor(user_num_mean, dtype=torch.float32))
        self.register_buffer("user_num_std", torch.tensor(user_num_std, dtype=torch.float32))
        user_in = 2 * id_dim + attr_dim * len(user_cat_sizes) + len(user_num_mean) + n_shares
        self.user_mlp = nn.Sequential(nn.Linear(user_in, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embedding_dim))

        self.item_id = nn.Embedding(num_items + 1, id_dim, sparse=True)
        self.item_attrs = nn.Embedding(sum(item_cat_sizes), attr_dim)
        self.register_buffer("item_cat_sizes", torch.tensor(item_cat_sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("item_cat_offsets", _offsets(item_cat_sizes), persistent=False)
        self.register_buffer("item_num_mean", torch.tensor(item_num_mean, dtype=torch.float32))
        self.register_buffer("item_num_std", torch.tensor(item_num_std, dtype=torch.float32))
        item_in = id_dim + attr_dim * len(item_cat_sizes) + len(item_num_mean)
        self.item_mlp = nn.Sequential(nn.Linear(item_in, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embedding_dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every weight and refill the normalisation buffers from ``model_args``."""
        for emb in (self.user_id, self.item_id):
            nn.init.normal_(emb.weight, std=EMBEDDING_INIT_STD)
            emb.weight[-1].zero_()  # unseen ids
        nn.init.normal_(self.user_history.weight, std=EMBEDDING_INIT_STD)
        self.user_history.weight[0].zero_()  # padding
        for emb in (self.user_attrs, self.item_attrs):
            nn.init.normal_(emb.weight, std=EMBEDDING_INIT_STD)
        for mlp in (self.user_mlp, self.item_mlp):
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        a = self.model_args
        self.user_cat_sizes.copy_(torch.tensor(a["user_cat_sizes"]))
        self.user_cat_offsets.copy_(_offsets(a["user_cat_sizes"]))
        self.item_cat_sizes.copy_(torch.tensor(a["item_cat_sizes"]))
        self.item_cat_offsets.copy_(_offsets(a["item_cat_sizes"]))
        self.user_num_mean.copy_(torch.tensor(a["user_num_mean"]))
        self.user_num_std.copy_(torch.tensor(a["user_num_std"]))
        self.item_num_mean.copy_(torch.tensor(a["item_num_mean"]))
        self.item_num_std.copy_(torch.tensor(a["item_num_std"]))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(sparse-gradient parameters for the row-wise Adam, dense parameters for AdamW)."""
        sparse = [self.user_id.weight, self.user_history.weight, self.item_id.weight]
        sparse_ids = {id(p) for p in sparse}
        dense = [p for p in self.parameters() if id(p) not in sparse_ids]
        return sparse, dense

    def user_tower(self, user: dict[str, Tensor]) -> Tensor:
        """(B, D) L2-normalised user vectors from :func:`user_inputs` tensors."""
        ids = _in_range(user[USER_ID], self.num_users, self.num_users)  # (B,)
        history = user["last_articles"]  # (B, L), article_idx + 1, 0 = padding
        history = torch.where((history > 0) & (history <= self.num_items), history, torch.zeros_like(history))
        attrs = _attributes(self.user_attrs, user["user_cat"], self.user_cat_sizes, self.user_cat_offsets)  # (B, Cu*A)
        num = torch.nan_to_num((user["user_num"] - self.user_num_mean) / self.user_num_std)  # (B, Nu)
        shares = _fit_width(user["category_shares"], self.n_shares)  # (B, S)
        count = (history > 0).sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
        bought = self.user_history(history).sum(dim=1) / count  # (B, id_dim); no history: zeros
        x = torch.cat([self.user_id(ids), bought, attrs, num, shares], dim=1)
        return F.normalize(self.user_mlp(x).float(), dim=-1)  # (B, D); float32 even under bfloat16 autocast

    def item_tower(self, item: dict[str, Tensor]) -> Tensor:
        """(N, D) L2-normalised item vectors from :func:`item_inputs` tensors."""
        ids = _in_range(item[ITEM_ID], self.num_items, self.num_items)  # (N,)
        attrs = _attributes(self.item_attrs, item["item_cat"], self.item_cat_sizes, self.item_cat_offsets)  # (N, Ci*A)
        num = torch.nan_to_num((item["item_num"] - self.item_num_mean) / self.item_num_std)  # (N, Ni)
        x = torch.cat([self.item_id(ids), attrs, num], dim=1)
        return F.normalize(self.item_mlp(x).float(), dim=-1)  # (N, D); float32 even under bfloat16 autocast

    def forward(self, user: dict[str, Tensor], item: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(user_emb (B, D), item_emb (N, D))."""
        return self.user_tower(user), self.item_tower(item)


def build_model(model_args: dict, device: str | torch.device = "cpu", seed: int | None = None) -> TwoTower:
    """Build on the meta device, then allocate each table once on ``device`` and initialise it.

    With ``seed`` the initial weights are reproducible; the caller's global
    RNG state is left as it was.
    """
    with torch.device("meta"):
        model = TwoTower(**model_args)
    model = model.to_empty(device=device)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model.reset_parameters()
    return model
