"""Hinton knowledge distillation on the identity logits.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (NIPS 2014 Deep
Learning Workshop, arXiv:1503.02531, 2015).  The teacher's class scores, softened by a
temperature ``T``, are the targets for the student's softened scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, Loss, LossInputs


@LOSSES.register("hinton_kd")
class HintonKDLoss(Loss):
    """Soft-target distillation: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    ``t`` are ``inputs.teacher_logits`` and ``s`` ``inputs.student_logits``: both the
    *margin-free* scaled cosine logits ``scale * cos(theta)`` of the teacher's and student's
    margin heads over the same identity set (:meth:`facekd.losses.margin.MarginHead.logits`
    with ``labels=None``; use the same ``scale`` for both heads).  The training task supplies
    the teacher logits; :class:`facekd.losses.WeightedLoss` fills the student logits from the
    student's margin head (``arcface``/``cosface`` in the same ``losses:`` list) when the task
    leaves them None.  The KL divergence is averaged over the batch (``batchmean``); the
    ``T^2`` factor keeps the gradient magnitude roughly independent of ``T`` (Hinton et al.,
    section 2).  The teacher logits get no gradient.

    Args:
        temperature: ``T`` (default 4).
        alpha: weight of the soft-target term; ``1 - alpha`` weighs the hard-label cross
            entropy on the student logits.  The default 1.0 is pure soft-target distillation
            (the hard labels are then usually covered by the ArcFace term).
    """

    loss_name = "hinton_kd"
    reads = frozenset({"student_logits", "teacher_logits", "labels"})

    def __init__(self, temperature: float = 4.0, alpha: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"hinton_kd: temperature must be positive, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"hinton_kd: alpha must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        if self.alpha == 1.0:                     # only the hard-label term reads labels
            self.reads = HintonKDLoss.reads - {"labels"}

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        student = self.require(inputs, "student_logits").float()
        teacher = self.require(inputs, "teacher_logits").detach().float()
        if student.shape != teacher.shape:
            raise ValueError(f"hinton_kd: student logits {tuple(student.shape)} vs teacher logits "
                             f"{tuple(teacher.shape)}; the two heads must cover the same identities")
        t = self.temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                      reduction="batchmean", log_target=True)
        loss = self.alpha * t * t * kl
        if self.alpha < 1.0:
            loss = loss + (1.0 - self.alpha) * F.cross_entropy(student, inputs.labels)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}"
