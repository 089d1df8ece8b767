"""Row-wise ("lazy") Adam for embedding tables with sparse gradients.

The same update as ``torch.optim.SparseAdam``: only the rows a batch touched
move, and only their moment estimates decay, with one step count per table.
SparseAdam builds it from sparse-tensor operations (coalesce, ``sparse_mask``
of both moments, sparse division), which on a CPU cost more than the rest of
a training step. Here the touched rows are found once with ``unique``, their
gradients summed with ``index_add_``, and the moments and weights of those
rows gathered, updated densely and written back.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor


# Up to this many table rows per looked-up id, unique ids are found with a dense mark over the table.
DENSE_UNIQUE_RATIO = 32


def unique_rows(idx: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(idx, return_inverse=True)`` for ids in [0, num_rows).

    When the ids are many for the table's size (a purchase-history bag's
    ~25k lookups into 105k articles), marking them in a dense (num_rows,)
    mask takes about a third of the time of the sort inside ``torch.unique``.
    """
    if num_rows > DENSE_UNIQUE_RATIO * idx.shape[0]:
        return torch.unique(idx, return_inverse=True)
    present = torch.zeros(num_rows, dtype=torch.bool).index_fill_(0, idx, True)
    rows = present.nonzero().squeeze(1)  # (R,) ascending
    position = torch.empty(num_rows, dtype=torch.int64).index_copy_(0, rows, torch.arange(rows.shape[0]))
    return rows, position.index_select(0, idx)


class RowAdam(torch.optim.Optimizer):
    """Adam over the rows of 2-D parameters that receive sparse (COO) gradients."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0.0:
            raise ValueError(f"RowAdam: lr must be positive, got {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"RowAdam: betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowAdam updates rows of 2-D tables; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Update the rows each parameter's sparse gradient touched; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if not grad.is_sparse:
                    raise RuntimeError("RowAdam expects sparse gradients (an nn.Embedding with sparse=True)")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if grad._nnz() == 0:
                    continue
                state["step"] += 1
                step = float(state["step"])
                if grad.is_coalesced():
                    rows, values = grad.indices()[0], grad.values()
                else:
                    idx, vals = grad._indices()[0], grad._values()
                    rows, inverse = unique_rows(idx, p.shape[0])  # sorted, so updates are deterministic
                    values = torch.zeros((rows.shape[0], p.shape[1]), dtype=vals.dtype).index_add_(0, inverse, vals)
                # rows are unique: gather with index_select, write back with index_copy_
                # (both much faster on a CPU than advanced indexing or index_add_ into the table)
                exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1.0 - beta1)  # (R, d)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
                exp_avg_sq.addcmul_(values, values, value=1.0 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                step_size = group["lr"] * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"]))
                p.index_copy_(0, rows, p.index_select(0, rows).sub_(update, alpha=step_size))
        return loss
