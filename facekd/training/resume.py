"""Which checkpoint a run resumes from, agreed by every rank before any of them loads it.

Checkpoints are written by rank 0 into ``output_dir``.  A multi-node run resumes correctly
only when every node reads the same file: put ``output_dir`` on a filesystem every node
shares, or copy ``last.pt`` into each node's ``output_dir`` before ``--resume``.  When a node
cannot see it (no shared filesystem, a stale copy), that node would start fresh while the
others resume, and the job would hang in its first collective.  :func:`agree_on_resume`
prevents that: each rank reads the step of the checkpoint it sees (-1: none), the steps are
all-gathered, and unless every rank sees the same step every rank raises the same one-line
:class:`~facekd.errors.CheckpointError` naming the ranks and the file: no hang, no
half-resumed job.  With ``--resume`` and no ``last.pt`` on any rank, all start fresh.
(:func:`resolve_resume`; a single process keeps the plain rules: no exchange.)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from facekd.errors import CheckpointError, DataError, FaceKDError
from facekd.training.checkpoint import load_checkpoint
from facekd.training.distributed import DistInfo

LOG = logging.getLogger(__name__)

#: ``--resume`` without a path: ``<output_dir>/last.pt`` when it exists (the CLI's sentinel)
AUTO_RESUME = "<last>"
#: a rank's step when it has no checkpoint to resume from / cannot read the one it has
NO_FILE, UNREADABLE = -1, -2


def checkpoint_step(path: str) -> int:
    """The ``step`` of a training checkpoint, read without loading its tensors when possible."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:       # an older or odd file: the full, checked reader says what is wrong
        state = load_checkpoint(path)
    if not isinstance(state, dict) or "step" not in state:
        raise DataError(path, "not a facekd training checkpoint (no 'step')")
    return int(state["step"])


def local_view(resume: Optional[str], output_dir: str) -> Tuple[Optional[str], str, int, str]:
    """What this rank would resume from: ``(path or None, file looked at, step, why unreadable)``."""
    if resume is None:
        return None, "", NO_FILE, ""
    path = str(Path(output_dir) / "last.pt") if resume == AUTO_RESUME else resume
    if not os.path.isfile(path):
        return None, path, NO_FILE, ""
    try:
        return path, path, checkpoint_step(path), ""
    except FaceKDError as error:
        return None, path, UNREADABLE, str(error)


def resolve_resume(resume: Optional[str], output_dir: str, info: Optional[DistInfo] = None) -> Optional[str]:
    """The checkpoint ``--resume`` means (None: start fresh); in a process group, every rank's
    agreed choice (every rank must call this).

    Args:
        resume: ``--resume``'s value: None, :data:`AUTO_RESUME` or a path.
        output_dir: the run directory (``last.pt`` for :data:`AUTO_RESUME`).
        info: this process's place in the group (None: a single process).

    Raises:
        DataError: (single process) an explicit ``resume`` path does not exist.
        CheckpointError: (every rank alike) the ranks see different steps, or some rank
            cannot see or read the file.
    """
    if info is None or not info.distributed:
        if resume is None or resume != AUTO_RESUME and os.path.isfile(resume):
            return resume
        if resume != AUTO_RESUME:
            raise DataError(resume, "checkpoint to resume from not found")
        last = Path(output_dir) / "last.pt"
        if last.exists():
            return str(last)
        LOG.info("--resume: %s does not exist yet; starting a new run", last)
        return None
    path, looked_at, step, problem = local_view(resume, output_dir)
    steps = _all_steps(step, info)
    if len(set(steps)) == 1 and steps[0] != UNREADABLE:
        if path is None and resume is not None and info.is_main:
            LOG.info("--resume: %s does not exist on any rank; starting a new run", looked_at)
        return path
    raise CheckpointError(disagreement(steps, looked_at, problem))


def _all_steps(step: int, info: DistInfo) -> List[int]:
    mine = torch.tensor([step], dtype=torch.int64, device=info.device)
    steps = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(steps, mine)
    return [int(s.item()) for s in steps]


def disagreement(steps: List[int], path: str, problem: str = "") -> str:
    """The one line every rank prints when the ranks do not see the same checkpoint."""
    by_step: Dict[int, List[int]] = {}
    for rank, step in enumerate(steps):
        by_step.setdefault(step, []).append(rank)

    def ranks(step: int) -> str:
        found = by_step[step]
        return f"rank{'s' if len(found) > 1 else ''} {', '.join(map(str, found))}"

    parts = []
    if NO_FILE in by_step:
        parts.append(f"{ranks(NO_FILE)} cannot see {path}")
    if UNREADABLE in by_step:
        parts.append(f"{ranks(UNREADABLE)} cannot read {path}" + (f" ({problem})" if problem else ""))
    parts += [f"{ranks(step)} at step {step}" for step in sorted(by_step) if step >= 0]
    return (f"resume: the ranks do not see the same checkpoint: {'; '.join(parts)}. Every node must read the "
            f"same file (a shared output_dir, or a copy of last.pt on each node); no rank started training")
