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
