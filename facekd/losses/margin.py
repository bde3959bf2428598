"""Additive margin softmax heads: ArcFace and CosFace.

Both heads own a class-centre matrix ``W`` (``num_classes x embedding_size``) and score an
embedding ``x`` by the cosine ``cos(theta_j) = <x/|x|, W_j/|W_j|>``.  Training adds a margin to
the target class only and applies cross entropy to the scaled result:

* ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
  CVPR 2019): target logit ``s * cos(theta_y + m)``.
* CosFace (Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition",
  CVPR 2018): target logit ``s * (cos(theta_y) - m)``.

:meth:`MarginHead.logits` with ``labels=None`` gives the margin-free ``s * cos(theta)`` — the
class scores that Hinton knowledge distillation softens (:mod:`facekd.losses.hinton`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, Loss, LossInputs


class MarginHead(Loss):
    """Shared part of the margin heads: class centres, cosine logits, cross entropy.

    Subclasses implement :meth:`target_logit`, the margin applied to the target class's
    cosine.  ``forward(inputs)`` is the cross entropy of the margin logits of
    ``inputs.student_embedding`` against ``inputs.labels``.

    Args:
        num_classes: number of training identities ``C``.
        embedding_size: embedding width ``D``.
        scale: the feature scale ``s`` applied to every cosine.
        margin: the margin ``m`` (meaning depends on the subclass).
    """

    reads = frozenset({"student_embedding", "labels"})

    def __init__(self, num_classes: int, embedding_size: int, scale: float, margin: float) -> None:
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ConfigError(f"{self.loss_name}: num_classes and embedding_size must be positive, "
                              f"got {num_classes} and {embedding_size}")
        if scale <= 0:
            raise ConfigError(f"{self.loss_name}: scale must be positive, got {scale}")
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.scale = float(scale)
        self.margin = float(margin)
        self.weight = nn.Parameter(self.initial_centres())

    def initial_centres(self) -> torch.Tensor:
        """The class centres a new head starts from: N(0, 0.01) like arcface_torch, ``C x D``."""
        return torch.empty(self.num_classes, self.embedding_size).normal_(0.0, 0.01)

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """``N x C`` cosines between the embeddings and the class centres, float32 in [-1, 1]."""
        if embedding.dim() != 2 or embedding.shape[1] != self.embedding_size:
            raise ValueError(f"{self.loss_name}: expected embeddings N x {self.embedding_size}, "
                             f"got {tuple(embedding.shape)}")
        cos = F.linear(F.normalize(embedding), F.normalize(self.weight))
        return cos.float().clamp(-1.0, 1.0)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """The margin-adjusted cosine of the target class (before scaling)."""
        raise NotImplementedError

    def logits(self, embedding: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled class logits ``N x C``.

        With ``labels`` the target column of each row carries the margin (the training
        logits); with ``labels=None`` all logits are the margin-free ``s * cos(theta)``.
        """
        cos = self.cosine(embedding)
        if labels is None:
            return self.scale * cos
        index = labels.long().view(-1, 1)
        target = self.target_logit(cos.gather(1, index))
        return self.scale * cos.scatter(1, index, target)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        return F.cross_entropy(self.logits(inputs.student_embedding, inputs.labels), inputs.labels)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
                f"scale={self.scale}, margin={self.margin}")


@LOSSES.register("arcface")
class ArcFace(MarginHead):
    """ArcFace additive angular margin (Deng et al., CVPR 2019): target ``s * cos(theta + m)``.

    Follows insightface / arcface_torch: ``cos(theta + m) = cos*cos(m) - sin*sin(m)``.  Where
    ``theta + m`` would pass ``pi`` (``cos(theta) <= cos(pi - m)``) the target logit becomes
    ``cos(theta) - sin(pi - m) * m`` instead, which keeps it monotonic in ``theta``.  With
    ``easy_margin=True`` the margin is only applied where ``cos(theta) > 0``.

    Args:
        num_classes, embedding_size: from the training context.
        scale: ``s`` (default 64).
        margin: angular margin ``m`` in radians (default 0.5).
        easy_margin: the "easy margin" variant.
    """

    loss_name = "arcface"

    def __init__(self, num_classes: int, embedding_size: int, scale: float = 64.0,
                 margin: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__(num_classes, embedding_size, scale, margin)
        if not 0.0 <= margin < math.pi / 2:
            raise ConfigError(f"arcface: margin must be in [0, pi/2) radians, got {margin}")
        self.easy_margin = bool(easy_margin)
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        self.th = math.cos(math.pi - margin)        # theta + m > pi  <=>  cos(theta) < th
        self.mm = math.sin(math.pi - margin) * margin

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        # clamp keeps sqrt's gradient finite at |cos| = 1
        sin_target = (1.0 - cos_target * cos_target).clamp_min(1e-9).sqrt()
        cos_theta_m = cos_target * self.cos_m - sin_target * self.sin_m
        if self.easy_margin:
            return torch.where(cos_target > 0, cos_theta_m, cos_target)
        return torch.where(cos_target > self.th, cos_theta_m, cos_target - self.mm)


@LOSSES.register("cosface")
class CosFace(MarginHead):
    """CosFace large margin cosine loss (Wang et al., CVPR 2018): target ``s * (cos(theta) - m)``.

    Args:
        num_classes, embedding_size: from the training context.
        scale: ``s`` (default 64).
        margin: cosine margin ``m`` (default 0.35).
    """

    loss_name = "cosface"

    def __init__(self, num_classes: int, embedding_size: int, scale: float = 64.0,
                 margin: float = 0.35) -> None:
        super().__init__(num_classes, embedding_size, scale, margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin


@LOSSES.register("teacher_centre_arcface")
class TeacherCentreArcFace(ArcFace):
    """ArcFace whose class centres are the teacher's, not learnt: the class-centre half of AdaDistill
    (Boutros et al., ECCV 2024).

    Each class centre is a moving average of the (normalised) teacher embeddings of that identity's
    faces as the batches bring them, ``c_y <- momentum * c_y + (1 - momentum) * mean_batch(t/|t|)`` (the
    first batch of an identity sets it), so the student's margin softmax pulls its embedding towards the
    teacher's identity centres in the teacher's own space.  It needs the student's embedding size to be
    the teacher's; the teacher embeddings are those the losses see (centred with ``teacher.center``).
    The centres are buffers: saved in the loss state, never given to the optimiser.  AdaDistill's
    adaptive margin is not built.

    Args:
        num_classes, embedding_size, teacher_embedding_size: from the training context.
        scale, margin, easy_margin: as :class:`ArcFace`.
        momentum: the moving average's weight of the old centre, in ``[0, 1)``.
    """

    loss_name = "teacher_centre_arcface"
    reads = frozenset({"student_embedding", "labels", "teacher_embedding"})
    #: the student's embedding must live in the teacher's space (the preflight stands the teacher's size in as it)
    in_teacher_space = True

    def __init__(self, num_classes: int, embedding_size: int, teacher_embedding_size: Optional[int] = None,
                 scale: float = 64.0, margin: float = 0.5, easy_margin: bool = False, momentum: float = 0.9) -> None:
        super().__init__(num_classes, embedding_size, scale, margin, easy_margin)
        if teacher_embedding_size is not None and teacher_embedding_size != embedding_size:
            raise ConfigError(f"teacher_centre_arcface: the student's embedding size ({embedding_size}) must be the "
                              f"teacher's ({teacher_embedding_size}): the centres live in the teacher's space")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"teacher_centre_arcface: momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        del self.weight
        self.register_buffer("weight", torch.zeros(self.num_classes, self.embedding_size))

    @torch.no_grad()
    def update_centres(self, teacher: torch.Tensor, labels: torch.Tensor) -> None:
        """Move the centres of the batch's identities towards the mean of their unit teacher embeddings."""
        classes, inverse = labels.long().unique(return_inverse=True)
        sums = torch.zeros(len(classes), teacher.shape[1], device=teacher.device).index_add_(
            0, inverse, F.normalize(teacher.float()))
        means = F.normalize(sums)
        old = self.weight[classes]
        fresh = old.abs().sum(1, keepdim=True) == 0
        self.weight[classes] = torch.where(fresh, means, self.momentum * old + (1 - self.momentum) * means)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        teacher = self.require(inputs, "teacher_embedding").detach()
        self.update_centres(teacher, inputs.labels)
        return super().forward(inputs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"
