"""Multi-process training helpers (``torchrun`` + DistributedDataParallel).

Nothing here runs at import time.  :func:`init_distributed` reads the environment
``torchrun`` sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) and
creates a process group only when ``WORLD_SIZE > 1``: NCCL when CUDA is available, gloo
otherwise.  A plain ``python train_face_student.py`` is a world of one and needs no group.

Only rank 0 logs, writes metrics and checkpoints; every rank trains on its own shard of
the P x K batches (``PKBatchSampler(rank=..., world_size=...)``).

A rank that dies or goes silent must not leave the others waiting: a collective gives up
after ``FACEKD_COLLECTIVE_TIMEOUT_S`` seconds (default 1800; gloo notices a dead peer's
closed connection at once), and :func:`lost_ranks` turns the backend's error into one
line naming this rank (the training commands raise it; see
:func:`facekd.training.launch.run_command`).
"""
from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from facekd.errors import ConfigError, FaceKDError, TrainingError, first_line

LOG = logging.getLogger(__name__)

#: environment variable: seconds a collective waits for the other ranks before it fails
TIMEOUT_ENV = "FACEKD_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
#: what gloo's and NCCL's errors say when a peer is gone or silent
_LOST_PEER = re.compile(r"gloo|nccl|connection (closed|reset)|timed out|broken pipe", re.IGNORECASE)


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, and its device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None     # None: no process group

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is in use."""
        return self.world_size > 1


def default_device(local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` when a GPU is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def collective_timeout_s() -> float:
    """Seconds a collective waits for the other ranks: ``$FACEKD_COLLECTIVE_TIMEOUT_S`` or 1800."""
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def init_distributed(device: Optional[str] = None, timeout_minutes: Optional[float] = None) -> DistInfo:
    """Join the ``torchrun`` process group if there is one; return this process's :class:`DistInfo`.

    Args:
        device: force a device (``"cpu"``, ``"cuda"``); default: CUDA when available.
        timeout_minutes: collective timeout of the process group (default:
            :func:`collective_timeout_s`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device(device) if device else default_device(local_rank)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, None)
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=collective_timeout_s() if timeout_minutes is None
                                                       else 60.0 * timeout_minutes))
    LOG.info("process group %s: rank %d of %d on %s", backend, rank, world_size, dev)
    return DistInfo(rank, world_size, local_rank, dev, backend)


def cleanup_distributed() -> None:
    """Destroy the process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True when ``value`` is finite on every rank (so all ranks stop together on NaN)."""
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if info.distributed:
        flag = flag.to(info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not info.distributed:
        return obj
    holder: List[Any] = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_rows(rows: torch.Tensor, info: DistInfo) -> List[torch.Tensor]:
    """Every rank's ``rows`` tensor (first dimension may differ between ranks), on the CPU."""
    if not info.distributed:
        return [rows.cpu()]
    device = info.device
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(info.world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=device)
    padded[:rows.shape[0]] = rows.to(device)
    gathered = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(gathered, padded)
    return [g[:int(c.item())].cpu() for g, c in zip(gathered, counts)]


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or the module itself)."""
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def lost_ranks(error: BaseException, info: DistInfo) -> Optional[TrainingError]:
    """A one-line :class:`TrainingError` for a collective that failed because another rank died
    or stopped answering; None for any other error (and in a single process)."""
    if not info.distributed or isinstance(error, FaceKDError):
        return None
    if not isinstance(error, getattr(dist, "DistError", ())) and not (
            isinstance(error, RuntimeError) and _LOST_PEER.search(str(error))):
        return None
    detail = re.sub(r"^\[[^\]]*\]\s*", "", first_line(error))   # gloo's "[file.cc:561] "
    detail = detail.split(". ")[0].rstrip(".")
    return TrainingError(f"rank {info.rank} of {info.world_size}: lost the other ranks in a collective "
                         f"({detail}): another rank died, or did not answer within the {collective_timeout_s():g} s "
                         f"timeout ({TIMEOUT_ENV}); its own log says why; this rank stops too")
