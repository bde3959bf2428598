"""Teacher sources: what a student learns from (see :mod:`facekd.teachers.base`).

``build_teacher(teacher_cfg, device, amp)`` builds the source named by ``teacher_cfg.kind``
from :data:`TEACHERS`; :class:`TeacherEmbedder` runs any teacher as an evaluation
*embedder* (``facekd eval --model kind=dlib``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from facekd.preprocess import denormalize_to_uint8
from facekd.teachers import (dlib_teacher, dlib_torch, embeddings_teacher, ensemble_teacher,  # noqa: F401 (register)
                             onnx_teacher, torch_teacher)
from facekd.teachers.base import TEACHERS, Teacher, build_registered, file_digest, state_dict_digest
from facekd.teachers.dlib_teacher import DLIB_BACKENDS, DLIB_FRAMING, DlibTeacher
from facekd.teachers.dlib_torch import DlibTorchTeacher
from facekd.teachers.embeddings_teacher import EmbeddingsTeacher, save_embeddings
from facekd.teachers.ensemble_teacher import EnsembleTeacher
from facekd.teachers.framing import DLIB_CHIP_150, TEMPLATES, Framing, framing_from_config
from facekd.teachers.onnx_teacher import ONNX_BACKENDS, OnnxTeacher, SFaceTeacher, sface_model_path
from facekd.teachers.torch_teacher import FrozenTeacher, TorchTeacher, load_teacher

__all__ = ["TEACHERS", "Teacher", "TorchTeacher", "OnnxTeacher", "DlibTeacher", "DlibTorchTeacher", "DLIB_BACKENDS",
           "EmbeddingsTeacher", "EnsembleTeacher", "FrozenTeacher", "Framing", "TEMPLATES", "DLIB_CHIP_150", "DLIB_FRAMING", "TeacherEmbedder", "SFaceTeacher",
           "sface_model_path", "PACKAGED_KINDS", "ONNX_BACKENDS", "TEACHER_BACKENDS",
           "build_teacher", "load_teacher", "framing_from_config", "save_embeddings", "file_digest",
           "state_dict_digest"]

#: teacher kinds that find their model in an installed package when no path is given
PACKAGED_KINDS = ("dlib", "sface", "ensemble")
#: teacher kinds that run on more than one engine -> their ``teacher.backend`` names
TEACHER_BACKENDS = {"dlib": tuple(DLIB_BACKENDS), "onnx": ONNX_BACKENDS, "sface": ONNX_BACKENDS}


def build_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"), amp: str = "none") -> Teacher:
    """The teacher of a ``TeacherConfig`` (``kind``: a :data:`TEACHERS` name)."""
    return build_registered(teacher_cfg, device, amp)


class TeacherEmbedder:
    """A :class:`Teacher` as an evaluation embedder: normalised 112x112 float batch in, ``[N, D]`` out.

    The batch (the student's convention) is turned back into uint8 pixels (exactly: the
    normalisation is a bijection on 0..255) and framed the teacher's way.
    """

    def __init__(self, teacher: Teacher, batch_size: int = 0) -> None:
        self.teacher = teacher
        self.batch_size = int(batch_size or 0)

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        faces = denormalize_to_uint8(torch.as_tensor(batch))
        step = self.batch_size or max(len(faces), 1)
        return torch.cat([self.teacher.embed(faces[i:i + step]) for i in range(0, len(faces), step)]).numpy()
