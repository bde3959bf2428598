"""``teacher.kind: ensemble`` — several teachers as one: the concatenation of their unit embeddings.

Each member is any teacher source (``sface``, ``dlib``, ``onnx``, ...) with its own framing:
every member sees the aligned face its own way.  The target of a face is

    [w_1 * e_1 / |e_1|, ..., w_n * e_n / |e_n|]

(``teacher.member_weights``, default all 1), so members of different scales and sizes count
by their weights alone; the student's projector maps to the ``sum(D_i)``-d result.  With
``teacher.center: true`` the distillation target is centred on the training set, which
centres every member's block (the mean of a concatenation is the concatenation of means).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from facekd.errors import ConfigError
from facekd.teachers.base import TEACHERS, Teacher, build_registered


class EnsembleTeacher(Teacher):
    """Concatenated L2-normalised embeddings of ``members``, each scaled by its weight.

    Args:
        members: the teachers (each frames faces its own way).
        weights: one positive weight per member (default: all 1).
    """

    kind = "ensemble"

    def __init__(self, members: Sequence[Teacher], weights: Optional[Sequence[float]] = None,
                 device: torch.device = torch.device("cpu")) -> None:
        if len(members) < 1:
            raise ConfigError("teacher.kind=ensemble: teacher.members names no teacher")
        weights = [1.0] * len(members) if not weights else [float(w) for w in weights]
        if len(weights) != len(members):
            raise ConfigError(f"teacher.member_weights: {len(weights)} weights for {len(members)} members")
        if any(not np.isfinite(w) or w <= 0 for w in weights):
            raise ConfigError(f"teacher.member_weights must be positive, got {weights}")
        self.members: List[Teacher] = list(members)
        self.weights = weights
        size = sum(member.embedding_size for member in self.members)
        source = " + ".join(member.source or member.kind for member in self.members)
        super().__init__(self.members[0].framing, size, source, device)

    def weights_digest(self) -> str:
        digest = hashlib.sha256()
        for member, weight in zip(self.members, self.weights):
            digest.update(f"{member.fingerprint()}|w={weight!r};".encode())
        return digest.hexdigest()

    def fingerprint(self) -> str:
        return f"kind={self.kind}|members={self.weights_digest()}"

    def embed(self, faces: Any) -> torch.Tensor:
        """``[N, sum(D_i)]``: each member's unit embedding of ``faces``, weighted, side by side."""
        faces = faces.cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
        if len(faces) == 0:
            return torch.zeros((0, self.embedding_size))
        blocks = [weight * torch.nn.functional.normalize(member.embed(faces).float(), dim=1)
                  for member, weight in zip(self.members, self.weights)]
        return torch.cat(blocks, dim=1)

    def to(self, device: Any) -> "EnsembleTeacher":
        self.members = [member.to(device) for member in self.members]
        return super().to(device)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, "embedding_size": self.embedding_size, "weights": self.weights,
                "members": [member.describe() for member in self.members]}

    def __repr__(self) -> str:
        return f"EnsembleTeacher([{', '.join(map(repr, self.members))}], weights={self.weights})"


@TEACHERS.register("ensemble")
def build_ensemble_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"),
                           amp: str = "none") -> EnsembleTeacher:
    """The :class:`EnsembleTeacher` of ``teacher.members`` (each a teacher config) and ``teacher.member_weights``."""
    members_cfg = list(getattr(teacher_cfg, "members", None) or [])
    if any(getattr(member, "kind", None) == "ensemble" for member in members_cfg):
        raise ConfigError("teacher.members: an ensemble cannot be a member of an ensemble")
    members = [build_registered(member, device, amp) for member in members_cfg]
    return EnsembleTeacher(members, getattr(teacher_cfg, "member_weights", None), device)
