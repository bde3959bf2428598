"""The :class:`Hook` base class: objects the trainer calls at its named hook points.

Kept apart from :mod:`facekd.training.trainer` so that tasks and extra hooks can subclass it
without importing the training loop (no import circle).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Sequence

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
        """Before the forward pass of each batch (``train.grad_accum_steps`` batches make a step)."""

    def after_step(self, trainer: "Trainer", batch: Dict[str, Any], loss: torch.Tensor,
                   terms: Dict[str, torch.Tensor]) -> None:
        """After the optimiser step (``trainer.step`` already counts it); ``batch`` is the step's
        last batch, ``loss`` and ``terms`` the means over its batches."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        """After the last step of ``epoch``, before verification and the epoch checkpoint."""

    def on_validate(self, trainer: "Trainer", results: Dict[str, Any]) -> None:
        """After verification; ``results`` maps val-set name -> ``VerificationResult``."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After the last epoch (also on rank != 0)."""


#: prefixes of hook-point names: a hook's method with one of them must be a hook point
HOOK_PREFIXES = ("on_", "before_", "after_")


def check_hook_names(hooks: Sequence[Hook]) -> None:
    """Refuse a hook whose method looks like a hook point but is not one (``on_epoch_ends``)."""
    for hook in hooks:
        unknown = sorted(name for name in dir(type(hook)) if name.startswith(HOOK_PREFIXES)
                         and name not in HOOK_POINTS and callable(getattr(type(hook), name)))
        if unknown:
            raise ValueError(f"{type(hook).__name__} has method(s) {unknown} named like hook points, which "
                             f"the trainer never calls; hook points: {', '.join(HOOK_POINTS)}")
