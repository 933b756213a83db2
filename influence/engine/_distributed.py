"""Sharding one query across the processes of a ``torch.distributed`` group.

When the default process group is initialised (``torchrun``, or a user's own
``init_process_group``), every process runs the same query on its share of the anchors:

* pointwise DoIs: rank ``r`` of ``W`` explains the contiguous block of anchors
  ``[r·N/W, (r+1)·N/W)``; the blocks are gathered so that every rank returns the whole
  ``(N, *unit)`` result in the original order;
* population DoIs: the stream of anchors is cut into the same chunks on every rank, and
  rank ``r`` integrates chunk ``i`` when ``i mod W = r`` (reading only its own chunks
  when the data can be indexed, see ``PopulationDoI.take``; else every rank reads the
  stream); the float64 sums (moved to a common shift) and the counts are all-reduced at
  the end.

Random draws are keyed by ``(seed, global anchor id, sample block)`` (:mod:`doi._random`),
so each anchor gets the same samples whatever the number of processes; results differ from
a single process only by the order in which float64 sums are added. Only
``torch.distributed`` collectives are used (gloo for CPU tensors, NCCL for CUDA ones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Group:
    """The default process group as seen from this process."""

    rank: int
    world: int

    def block(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """The anchors ``[lo, hi)`` of ``n`` that ``rank`` (default: this one) explains."""
        r = self.rank if rank is None else rank
        return r * n // self.world, (r + 1) * n // self.world

    def owns(self, chunk: int) -> bool:
        """Whether this rank integrates chunk number ``chunk`` of a population."""
        return chunk % self.world == self.rank

    @staticmethod
    def _comm_device(like: Tensor) -> torch.device:
        """Where a collective on ``like`` must run: CUDA for NCCL, the CPU for gloo (with
        both backends, the tensor's own device type)."""
        backend = str(dist.get_backend())
        if "nccl" in backend and ("gloo" not in backend or like.device.type == "cuda"):
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """The elementwise sum of ``t`` over all ranks (a new tensor on ``t``'s device)."""
        work = t.to(self._comm_device(t), copy=True)
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(t.device)

    def gather_rows(self, t: Tensor, total: int) -> Tensor:
        """Concatenate every rank's block of rows (rank ``r`` holds ``block(total, r)``)
        into all ``total`` rows, in rank order, on every rank."""
        size = -(-total // self.world)  # blocks are padded to the largest
        comm = self._comm_device(t)
        padded = torch.zeros((size, *t.shape[1:]), dtype=t.dtype, device=comm)
        padded[: t.shape[0]] = t.to(comm)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        rows = [p[: hi - lo] for p, (lo, hi) in zip(parts, (self.block(total, r) for r in range(self.world)))]
        return torch.cat(rows).to(t.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current(enabled: bool | None) -> Group | None:
    """The group to shard a query over: ``None`` to run alone (``enabled=False``, or no
    initialised group of more than one process)."""
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"distributed: expected None, True or False (got {enabled!r})")
    ready = dist.is_available() and dist.is_initialized()
    if enabled and not ready:
        raise ValueError(
            "distributed: torch.distributed is not initialised; launch with torchrun or call "
            "torch.distributed.init_process_group first (or pass distributed=None)"
        )
    if enabled is False or not ready:
        return None
    world = dist.get_world_size()
    return Group(dist.get_rank(), world) if world > 1 else None


def rank() -> int:
    """This process's rank in the default group (0 when there is none)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env() -> bool:
    """Initialise the default process group from the variables ``torchrun`` sets
    (``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), if not done yet:
    gloo for CPU tensors and, when CUDA is available, NCCL for CUDA tensors on the GPU
    ``LOCAL_RANK``. Returns whether this call initialised it."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend)
    return True
