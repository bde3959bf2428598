"""The :class:`Hook` base class: objects the trainer calls at its named hook points.

Kept apart from :mod:`facekd.training.trainer` so that tasks and extra hooks can subclass it
without importing the training loop (no import circle).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

import torch

if TYPE_CHECKING:  # annotations only
    from facekd.training.trainer import Trainer

#: the hook points, in the order a run calls them
HOOK_POINTS = ("on_train_start", "before_step", "after_step", "on_epoch_end", "on_validate",
               "on_train_end")


class Hook:
    """Base of objects called at the trainer's hook points (every method is optional)."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """After everything is built (and a checkpoint restored), before the first step."""

    def before_step(self, trainer: "Trainer", batch: Dict[str, Any]) -> None:
        """Before the forward pass of a step."""

    def after_step(self, trainer: "Trainer", batch: Dict[str, Any], loss: torch.Tensor,
                   terms: Dict[str, torch.Tensor]) -> None:
        """After the optimiser step (``trainer.step`` already counts it)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        """After the last step of ``epoch``, before verification and the epoch checkpoint."""

    def on_validate(self, trainer: "Trainer", results: Dict[str, Any]) -> None:
        """After verification; ``results`` maps val-set name -> ``VerificationResult``."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After the last epoch (also on rank != 0)."""
