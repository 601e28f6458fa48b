"""Data-parallel runs: ``accelerate launch`` / ``torchrun`` processes split the batches and meet at the end.

Why: evaluation and statistics are embarrassingly parallel over items, and a result must not
depend on how many processes computed it. The rule that makes results identical to a single
process:

* Every process forms *the same batches in the same order* as a single process would (the
  engine sorts requests longest first, ``collect`` batches each language's texts in order), and
  process ``rank`` runs batch ``k`` only when ``k % world == rank``. A batch's composition
  (hence its padding and every number computed from it) is the same as in a single process.
* Per-batch results are then gathered (``all_gather_object`` on a gloo group, so it works on
  CPUs and next to NCCL) and put back by index: every process ends up holding the full,
  identical result and continues with the same code; only rank 0 writes files and prints.

Launch detection reads the torch.distributed environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), which ``torchrun`` and
``accelerate launch --multi_gpu`` set. Note: ``accelerate launch --cpu --num_processes N``
without an MPI hostfile starts a *single* process (no ``WORLD_SIZE``): it then runs unsharded,
with the same results. On CPUs use ``torchrun --nproc_per_node N -m xlsteer ...``.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UsageError


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel launch (rank 0 of 1 when not launched so)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, batch_index: int) -> bool:
        """Whether this process runs the batch with this (global, 0-based) index."""
        return batch_index % self.world == self.rank

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (``[obj]`` when not distributed)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=_group())
        return out

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier(group=_group())

    def device(self, device: str) -> str:
        """The device this process uses for a requested one: plain ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        if self.active and device == "cuda":
            return f"cuda:{self.local_rank}"
        return device


_STATE: dict[str, Any] = {}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun or "
                         "accelerate launch, or unset it") from None


def current() -> Dist:
    """The launch this process belongs to; joins the process group on first use (collective)."""
    if "dist" in _STATE:
        return _STATE["dist"]
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world <= 1:
        d = Dist()
    else:
        if not 0 <= rank < world:
            raise UsageError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun or accelerate launch")
        dist = torch.distributed
        if not dist.is_available():
            raise UsageError("this torch build has no torch.distributed; run a single process")
        if not dist.is_initialized():
            # gloo: only Python objects (results) travel between processes, never activations
            dist.init_process_group(backend="gloo", init_method="env://", world_size=world, rank=rank)
            atexit.register(_shutdown)
        if dist.get_backend() != "gloo":  # e.g. accelerate already joined with NCCL: objects travel on gloo
            _STATE["group"] = dist.new_group(backend="gloo")
        d = Dist(rank=rank, world=world, local_rank=local)
    _STATE["dist"] = d
    return d


def _group() -> Any:
    return _STATE.get("group")


def _shutdown() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    return current().is_main
