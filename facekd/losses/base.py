"""What every loss shares: the ``LOSSES`` registry, the step's :class:`LossInputs` and the
:class:`Loss` base class with its capability flags."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional

import torch
from torch import nn

from facekd.errors import ConfigError
from facekd.registry import Registry

#: name -> loss factory (an ``nn.Module`` class).  Factories take the config parameters of a
#: ``losses:`` entry plus whichever *context* arguments they name (``num_classes``,
#: ``embedding_size``, ``teacher_embedding_size``, ``student_channels``,
#: ``teacher_channels``); see :func:`facekd.losses.build_losses`.
LOSSES = Registry("loss")


@dataclass
class LossInputs:
    """Everything one training step hands to the losses.

    Attributes:
        student_embedding: ``N x D`` raw (unnormalised) embeddings of the model being trained
            (for ``train-teacher`` that model is the teacher itself).
        labels: ``N`` int64 identity labels in ``0..C-1``.
        teacher_embedding: ``N x Dt`` raw embeddings of the frozen teacher on the *clean*
            (high-resolution) view of the same images, or None.
        teacher_logits: ``N x C`` margin-free teacher logits ``s * cos(theta)`` (the teacher's
            head :meth:`~facekd.losses.margin.MarginHead.logits` with ``labels=None``), or None.
        student_logits: ``N x C`` margin-free student logits from the student's own margin head;
            :class:`~facekd.losses.WeightedLoss` fills it from its margin head when a term needs
            it and it is None.
        student_feature_map: ``N x Cs x Hs x Ws`` intermediate student map (``forward_features``),
            or None.
        teacher_feature_map: ``N x Ct x Ht x Wt`` intermediate teacher map, or None.
        extra: free-form per-step values for custom losses.
        labelled_rows: when some faces of the batch have no identity (``data.unlabelled``),
            the number of leading rows that have one (the rest have label -1); None: all.
            :class:`~facekd.losses.WeightedLoss` gives a term with ``needs_labels`` only
            the labelled rows (:meth:`labelled`).
    """

    student_embedding: torch.Tensor
    labels: torch.Tensor
    teacher_embedding: Optional[torch.Tensor] = None
    teacher_logits: Optional[torch.Tensor] = None
    student_logits: Optional[torch.Tensor] = None
    student_feature_map: Optional[torch.Tensor] = None
    teacher_feature_map: Optional[torch.Tensor] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    labelled_rows: Optional[int] = None

    @property
    def all_labelled(self) -> bool:
        """Every row of the batch has an identity label."""
        return self.labelled_rows is None or self.labelled_rows >= self.labels.shape[0]

    def labelled(self) -> "LossInputs":
        """The same inputs restricted to the labelled rows (every per-row tensor sliced)."""
        if self.all_labelled:
            return self
        rows = int(self.labelled_rows)
        cut = {f.name: getattr(self, f.name)[:rows] for f in fields(self)
               if torch.is_tensor(getattr(self, f.name))}
        return replace(self, labelled_rows=None, **cut)


class Loss(nn.Module):
    """Base class of the registered losses: ``forward(inputs: LossInputs) -> scalar Tensor``.

    The class attributes say which optional :class:`LossInputs` fields the loss reads, so
    the training task computes only what is needed (teacher forward pass, teacher logits,
    feature maps).
    """

    #: registry name, used in error messages
    loss_name: str = "loss"
    #: reads ``teacher_embedding``
    needs_teacher: bool = False
    #: reads ``teacher_logits``
    needs_teacher_logits: bool = False
    #: reads ``student_logits``
    needs_student_logits: bool = False
    #: reads ``student_feature_map`` / ``teacher_feature_map``
    needs_feature_maps: bool = False
    #: reads ``labels``: gets only the labelled rows of a batch with unlabelled faces
    needs_labels: bool = False

    def require(self, inputs: LossInputs, name: str) -> torch.Tensor:
        """``getattr(inputs, name)``, or a ``ValueError`` naming this loss when it is None."""
        value = getattr(inputs, name)
        if value is None:
            raise ValueError(f"loss {self.loss_name!r} needs LossInputs.{name}, which is None")
        return value


def zero_loss(reference: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that stays connected to ``reference``'s graph (backward still works)."""
    return reference.sum() * 0.0


def check_choice(registry: Registry, name: str) -> Any:
    """``registry.get(name)``, raising :class:`ConfigError` (listing the choices) if unknown."""
    try:
        return registry.get(name)
    except KeyError as error:
        raise ConfigError(error.args[0]) from None
