"""Data parallelism for the trainer: one process per device, launched by ``torchrun`` (gloo on CPU, nccl on GPU).

Why not wrap the model in ``DistributedDataParallel``: a contrastive step embeds many micro-batches and,
with gradient caching, runs one backward per micro-batch (Gao et al. 2021). DDP all-reduces on every
backward unless each but the last is wrapped in ``no_sync()``, and it cannot see a parameter used by
several forwards before one backward. The step is instead written so that every rank computes the SAME
global loss on embeddings gathered from all ranks (see ``embeddinggemma.train.gradcache``); each rank then
back-propagates only the gradient of its own rows, and the per-rank parameter gradients are summed with
one all-reduce per step. That sum is exactly the single-process gradient, with no communication inside
the backward. The cost, a few hundred MB all-reduced once per step, is small next to a step that embeds
thousands of texts, so overlapping it with the backward (DDP's bucketing) would buy little.

A single process is the same code with ``world_size == 1``: gathering and reducing are then identities.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["DistributedContext", "init_distributed"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job. ``world_size == 1`` means a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints and logs and runs the evaluation."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def row_range(self, global_rows: int) -> tuple[int, int]:
        """This rank's slice [start, stop) of a global batch; the batch must split evenly."""
        if global_rows % self.world_size:
            raise ValueError(
                f"the global batch has {global_rows} rows, which does not split evenly over {self.world_size} "
                "processes; make data.batch_size a multiple of the number of processes"
            )
        per_rank = global_rows // self.world_size
        return self.rank * per_rank, (self.rank + 1) * per_rank

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, in rank order. No gradient flows through it."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def sum_scalar(self, value: float) -> float:
        """Sum a Python number over ranks (for throughput counters)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def reduce_gradients(self, summed: Iterable[torch.nn.Parameter], averaged: Iterable[torch.nn.Parameter]) -> None:
        """Sum the model's gradients over ranks (each rank holds its rows' share of the global gradient) and
        average the gradients of parameters every rank computed in full (the loss module's projection).

        Gradients are flattened into one buffer per group so that there is one collective per group.
        """
        if not self.distributed:
            return
        for params, op in ((summed, "sum"), (averaged, "mean")):
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            if op == "mean":
                flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (e.g. the decision to stop on a non-finite loss)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str | None = None, *, timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. On GPU each rank takes
    ``cuda:LOCAL_RANK`` and uses nccl; on CPU (``device="cpu"`` or no CUDA) gloo.

    Args:
        device: "cpu", "cuda" or None (CUDA when available). A bare "cuda" becomes cuda:LOCAL_RANK.
        timeout_minutes: collective timeout; periodic evaluation on rank 0 holds the others at a barrier.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device: cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        kwargs = {"device_id": resolved} if resolved.type == "cuda" else {}
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **kwargs,
        )
        logger.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, resolved)
    elif dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)
