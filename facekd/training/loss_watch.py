"""The training losses between two host syncs (:class:`LossWatch`): the NaN guard of the step.

Kept apart from :mod:`facekd.training.trainer` (the loop) so that it can be used and tested alone.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch

from facekd.training.distributed import DistInfo, all_finite


class LossWatch:
    """The losses of the steps since the last check, kept on the device (no host sync per step).

    :meth:`add` stores a step's detached loss; :meth:`all_finite` converts them all at once
    (one host sync, and one all-reduce in DDP so every rank stops at the same step) and
    :meth:`first_bad` names the first non-finite one for the error message.
    """

    def __init__(self) -> None:
        self.pending: List[Tuple[int, int, torch.Tensor, Dict[str, Any]]] = []

    def add(self, step: int, epoch: int, loss: torch.Tensor, terms: Dict[str, Any]) -> None:
        """Remember the loss (and its terms) of optimiser step ``step`` (1-based) of ``epoch``."""
        self.pending.append((int(step), int(epoch), loss.detach(), terms))

    def all_finite(self, dist: DistInfo) -> bool:
        """True when every pending loss is finite on every rank; forgets them if so."""
        if not self.pending and not dist.distributed:
            return True
        values = torch.stack([loss.reshape(()) for _, _, loss, _ in self.pending]) if self.pending \
            else torch.zeros(1, device=dist.device)
        ok = all_finite(values, dist)
        if ok:
            self.pending.clear()
        return ok

    def first_bad(self) -> Tuple[int, int, torch.Tensor, Dict[str, Any]]:
        """``(step, epoch, loss, terms)`` of the first non-finite pending loss (the last one when
        this rank's losses are finite and another rank's are not)."""
        for entry in self.pending:
            if not bool(torch.isfinite(entry[2]).all()):
                return entry
        return self.pending[-1]
