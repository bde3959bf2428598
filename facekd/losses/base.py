"""What every loss shares: the ``LOSSES`` registry, the step's :class:`LossInputs` and the
:class:`Loss` base class, whose :attr:`Loss.reads` declares the inputs a loss reads."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Optional

import torch
from torch import nn

from facekd.errors import ConfigError
from facekd.registry import Registry

def _check_loss_class(name: str, factory: Callable[..., Any]) -> None:
    """Registration check of :data:`LOSSES`: a :class:`Loss` subclass whose :attr:`~Loss.reads`
    is a non-empty frozenset of :data:`READABLE_FIELDS`."""
    if not (isinstance(factory, type) and issubclass(factory, Loss)):
        raise TypeError(f"loss {name!r}: register a subclass of facekd.losses.Loss, got {factory!r}")
    reads = factory.reads
    if not isinstance(reads, frozenset) or not reads:
        raise TypeError(f"loss {name!r}: {factory.__name__}.reads must be a non-empty frozenset of "
                        f"LossInputs fields, got {reads!r}")
    unknown = sorted(reads - set(READABLE_FIELDS))
    if unknown:
        raise TypeError(f"loss {name!r}: {factory.__name__}.reads names {unknown}, which are not "
                        f"LossInputs fields a loss reads ({', '.join(READABLE_FIELDS)})")


#: name -> loss class (a :class:`Loss` subclass, checked at registration).  Classes take the
#: config parameters of a ``losses:`` entry plus whichever *context* arguments they name
#: (``num_classes``, ``embedding_size``, ``teacher_embedding_size``, ``student_channels``,
#: ``teacher_channels``); see :func:`facekd.losses.build_losses`.
LOSSES = Registry("loss", check=_check_loss_class)


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
            :class:`~facekd.losses.WeightedLoss` gives a term that reads ``labels`` only
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


#: the :class:`LossInputs` fields a loss may declare in :attr:`Loss.reads` (``labelled_rows``
#: is read by :class:`~facekd.losses.WeightedLoss`, which hands a term the rows it may see)
READABLE_FIELDS = tuple(f.name for f in fields(LossInputs) if f.name != "labelled_rows")
#: the fields that come from the teacher: a loss reading one of them needs a teacher
TEACHER_FIELDS = frozenset({"teacher_embedding", "teacher_logits", "teacher_feature_map"})


class Loss(nn.Module):
    """Base class of the registered losses: ``forward(inputs: LossInputs) -> scalar Tensor``.

    :attr:`reads` declares, once and beside the loss, which :class:`LossInputs` fields
    ``forward`` reads; :data:`LOSSES` checks it at registration.  The training task fills
    exactly the fields its losses read (teacher forward pass, teacher logits, feature maps),
    and a loss that reads ``labels`` sees only the labelled rows of a batch with unlabelled
    faces.  An instance may read fewer fields than its class declares (``hinton_kd`` with
    ``alpha = 1`` reads no labels), never more.
    """

    #: registry name, used in error messages
    loss_name: str = "loss"
    #: the :data:`READABLE_FIELDS` ``forward`` reads
    reads: FrozenSet[str] = frozenset()
    #: fitted once on the teacher's embeddings of the training set before training
    #: (``fit_selection(teacher_embeddings, labels)``), by the task that has them
    needs_teacher_statistics: ClassVar[bool] = False

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
