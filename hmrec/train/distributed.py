"""Several training processes on the CPU: the gloo helpers every rank calls, and the launcher.

Every rank holds the same model (same seed) and averages its gradients with
the others after each backward pass; ranks stop together at the end of the
shortest shard. :func:`run_distributed` starts the processes through
TorchDistributor and turns a failing process into one clear error.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import io
import os
import re
import sys
from typing import Any

import torch
import torch.distributed as dist
from pyspark.ml.torch.distributor import TorchDistributor

from hmrec.errors import HmrecError
from hmrec.model.two_tower import TwoTower


def init_distributed(world_size: int, timeout_s: int) -> int:
    """Join the gloo process group when there is more than one process; returns this rank."""
    if world_size <= 1:
        return 0
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world != world_size:
        raise HmrecError(f"expected {world_size} training processes, the launcher started {env_world}")
    dist.init_process_group("gloo", timeout=dt.timedelta(seconds=timeout_s))
    return dist.get_rank()


def all_reduce_gradients(model: TwoTower, world_size: int) -> None:
    """Average gradients over ranks: dense ones in one flat buffer, sparse ones as sparse tensors.

    Done by hand rather than with DistributedDataParallel because the id
    tables' gradients are sparse; gloo reduces those without densifying a
    1.4M-row table every step.
    """
    sparse, dense = model.parameter_groups()
    for p in dense:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in dense])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in dense:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n
    for p in sparse:
        grad = p.grad
        if grad is None:
            grad = torch.sparse_coo_tensor(
                torch.zeros((1, 0), dtype=torch.int64), torch.zeros((0, p.shape[1])), p.shape
            )
        dist.all_reduce(grad)
        p.grad = (grad / world_size).coalesce()


def all_have(flag: bool) -> bool:
    """True when every rank has ``flag`` (ranks stop together at the shortest shard)."""
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sum_over_ranks(value: int, world_size: int) -> int:
    """``value`` summed over all ranks (``value`` itself in a single process)."""
    if world_size <= 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t)
    return int(t.item())


def first_error_line(text: str) -> str:
    """The exception line of the first process that failed, for a one-line report.

    torchrun prefixes each process's lines with ``[rankN]:``; the first
    exception from a rank is the cause, later ones (peers losing their
    connection, torchrun's own ChildFailedError) are consequences.
    """
    pattern = r"^\[rank\d+\]:\s*[\w.]*(Error|Exception|Interrupt)\w*:"
    rank_errors = [ln.strip() for ln in text.splitlines() if re.match(pattern, ln.strip())]
    if rank_errors:
        return rank_errors[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


class _TeeStdout(io.TextIOBase):
    """Passes writes on to ``target`` and keeps the last lines, to report a process's error."""

    def __init__(self, target: Any, keep: int = 200) -> None:
        self.target = target
        self.tail: collections.deque = collections.deque(maxlen=keep)

    def write(self, text: str) -> int:
        self.target.write(text)
        self.tail.append(text)
        return len(text)

    def flush(self) -> None:
        self.target.flush()


def run_distributed(fn: Any, *args: Any, num_processes: int, local_mode: bool) -> Any:
    """``fn(*args)`` in every process started by TorchDistributor (gloo, CPU).

    A failing process makes torchrun stop the others; the error is raised as
    one HmrecError line quoting the process's exception (its full output is
    printed above it).
    """
    tee = _TeeStdout(sys.stdout)
    try:
        with contextlib.redirect_stdout(tee):
            return TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=False).run(fn, *args)
    except RuntimeError as exc:
        raise HmrecError(f"a training process failed: {first_error_line(''.join(tee.tail) or str(exc))}") from exc
