"""The contract between the :class:`~facekd.training.trainer.Trainer` and a training task.

A task says *what* is trained and how a batch becomes a loss; the trainer owns the loop
(sampler, loader, optimiser, AMP, DDP, checkpoints).  :class:`Task` lists every member the
trainer uses, so a task that misses one fails when it is created, not in the middle of a
run.  The concrete tasks (``teacher``, ``student``) live in :mod:`facekd.training.tasks`,
a layer above the trainer: the trainer depends on this contract only.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from facekd.training.hooks import Hook

if TYPE_CHECKING:  # annotations only
    from facekd.training.trainer import Trainer


@dataclass
class StepBatch:
    """A loader batch as a step feeds it to the model, before any model runs.

    Attributes:
        images: the model input on the task's device (normalised, at the model's input size).
        labels: ``N`` int64 labels on the device (``-1``: a face without identity).
        labelled_rows: the number of leading rows with an identity when some have none, else None.
        teacher_target: the teacher's raw embeddings looked up in a cache (student task with
            cached targets), else None (no teacher, or the teacher runs in the step).
    """

    images: torch.Tensor
    labels: torch.Tensor
    labelled_rows: Optional[int] = None
    teacher_target: Optional[torch.Tensor] = None


class Task(Hook, abc.ABC):
    """What the trainer needs from a task (a :class:`Hook`: it is called first at every hook point).

    Attributes (set by :meth:`build`):
        name: the task's name, stored in its checkpoints (a ``teacher`` checkpoint cannot
            resume a ``student`` run).
        module: the ``nn.Module`` trained (and wrapped by DDP); its parameters are optimised.
        backbone: the embedding network inside :attr:`module` (``train.compile`` compiles it).
        train_set: the dataset the loader reads (items carry ``image``, ``label``, ``index``...).
    """

    name: str = "task"
    module: nn.Module
    backbone: nn.Module
    train_set: torch.utils.data.Dataset

    @abc.abstractmethod
    def build(self, trainer: "Trainer") -> None:
        """Build data, networks and losses (called once, before the sampler and optimiser)."""

    @property
    @abc.abstractmethod
    def train_labels(self) -> np.ndarray:
        """The labels the P x K sampler draws identities from."""

    def wrap_sampler(self, sampler: Any) -> Any:
        """The batch sampler the loader uses, made from the trainer's P x K ``sampler`` (default: itself)."""
        return sampler

    @abc.abstractmethod
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the per-sample random choices (the loader's process)."""

    @abc.abstractmethod
    def prepare_batch(self, batch: Dict[str, Any]) -> StepBatch:
        """What a step does to a loader batch before the model runs (device copy, normalisation,
        cached teacher targets); bench/train_throughput.py times it as the data side of a step."""

    @abc.abstractmethod
    def compute_loss(self, trainer: "Trainer", batch: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(total loss, {term: detached unweighted value})`` of a loader batch, through ``trainer.model``."""

    @abc.abstractmethod
    def verify(self, trainer: "Trainer", pair_sets: Sequence[Any]) -> Dict[str, Any]:
        """Verification results (``VerificationResult``) of the current model on each pair set, by name."""

    @abc.abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """The task's part of a checkpoint (merged into the trainer's)."""

    @abc.abstractmethod
    def load_state_dict(self, state: Dict[str, Any], path: str = "<checkpoint>") -> None:
        """Restore :meth:`state_dict`'s part from checkpoint ``state`` read from ``path``."""
