"""``teacher.kind: dlib`` with ``teacher.backend: torch`` (the default): dlib's face model in torch.

The weights are read from the same ``.dat`` file dlib loads
(:mod:`facekd.models.dlib_format`, no dlib needed) into
:class:`facekd.models.dlib_resnet.DlibFaceResNet`, which runs batched on the CPU (torch's
intra-op threads, GIL released) or a GPU.  Its descriptors equal dlib-bin's
``compute_face_descriptor`` (``tests/test_dlib_torch.py``: cosine >= 0.9999 and max |diff|
<= 1e-3 per face on real chips; measured max |diff| ~1e-6).

Precision: float32 always.  bf16 autocast was measured on the CPU at max |diff| 3.7e-3
(cosine 0.99997) from dlib-bin, outside the 1e-3 tolerance, and no faster on 2 cores, so the
``amp`` of the run does not apply here; the fingerprint says ``precision=float32``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from facekd.models.dlib_resnet import DlibFaceResNet
from facekd.teachers.dlib_teacher import DLIB_BACKENDS, DLIB_FRAMING, DlibModelTeacher
from facekd.teachers.framing import Framing

#: chips per forward pass (bounds memory on large calls)
BATCH_SIZE = 64


class DlibTorchTeacher(DlibModelTeacher):
    """dlib's face ResNet as a torch module: 128-d raw descriptors of 150 px dlib chips.

    Args:
        path: dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (default: the packaged one).
        framing: must be 150 px (the network's fixed input); default :data:`DLIB_FRAMING`.
        device: where the module runs.
        batch_size: chips per forward pass.
    """

    backend = "torch"

    def __init__(self, path: Optional[str] = None, framing: Framing = DLIB_FRAMING,
                 device: Any = "cpu", batch_size: int = BATCH_SIZE) -> None:
        super().__init__(path, framing, device)
        self.network = DlibFaceResNet.from_file(self.source).to(self.device)
        self.batch_size = int(batch_size)

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}|backend={self.backend}|precision=float32"

    def to(self, device: Any) -> "DlibTorchTeacher":
        super().to(device)
        self.network.to(self.device)
        return self

    @torch.no_grad()
    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        chips = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8))
        if self.framing.channel_order == "BGR":
            chips = chips.flip(3)
        parts = [self.network(chips[i:i + self.batch_size].to(self.device).permute(0, 3, 1, 2)).float().cpu()
                 for i in range(0, len(chips), self.batch_size)]
        return torch.cat(parts)

    def describe(self) -> dict:
        return {**super().describe(), "backend": self.backend}


@DLIB_BACKENDS.register("torch")
def _torch_backend(teacher_cfg: Any, framing: Framing, device: torch.device) -> DlibTorchTeacher:
    """The torch port (default): batched, CPU or CUDA."""
    return DlibTorchTeacher(teacher_cfg.path or teacher_cfg.checkpoint, framing, device)
