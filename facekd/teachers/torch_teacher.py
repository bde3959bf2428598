"""``teacher.kind: torch`` — a facekd checkpoint or an insightface ``backbone.pth``."""
from __future__ import annotations

import logging
from typing import Any, List, Optional

import numpy as np
import torch
from torch import nn

from facekd.config import ModelConfig, from_dict, to_dict
from facekd.errors import ConfigError
from facekd.teachers.base import TEACHERS, Teacher, state_dict_digest
from facekd.teachers.framing import Framing, framing_from_config

LOG = logging.getLogger(__name__)


class FrozenTeacher(nn.Module):
    """The teacher backbone (and its margin head, if the checkpoint has one), frozen in eval mode."""

    def __init__(self, backbone: nn.Module, head: Optional[nn.Module], classes: Optional[list],
                 path: str, model_config: ModelConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.classes = classes
        self.path = path
        self.model_config = model_config
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Stays in eval mode (BN statistics are frozen)."""
        return super().train(False)


def load_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu")) -> FrozenTeacher:
    """The frozen torch teacher of a ``TeacherConfig``.

    ``teacher.checkpoint`` (or ``teacher.path``) is a facekd checkpoint (its
    ``model_config`` builds the architecture; its ``head`` gives the margin-free logits for
    Hinton KD) or a plain state dict such as insightface's ``backbone.pth`` (architecture
    from ``teacher.model``, e.g. ``iresnet100``; no head).
    """
    from facekd.losses import LOSSES
    from facekd.models import build_model, load_pretrained, read_checkpoint

    path = teacher_cfg.checkpoint or teacher_cfg.path
    if not path:
        raise ConfigError("a loss needs a teacher: set teacher.checkpoint (a facekd checkpoint or an "
                          "insightface backbone.pth) and teacher.model, or another teacher.kind")
    checkpoint = read_checkpoint(path)
    model_cfg = teacher_cfg.model
    if isinstance(checkpoint.get("model_config"), dict):
        model_cfg = from_dict(ModelConfig, checkpoint["model_config"], source=f"{path} model_config")
        if to_dict(model_cfg) != to_dict(teacher_cfg.model):
            LOG.info("teacher architecture taken from %s: %s", path, to_dict(model_cfg))
    backbone = build_model(model_cfg)
    report = load_pretrained(backbone, path, strict=True)
    LOG.info("teacher: %s", report)
    head = None
    info = checkpoint.get("head") if isinstance(checkpoint.get("head"), dict) else None
    if info is not None:
        head = LOSSES.build(info["name"], num_classes=info["num_classes"], embedding_size=info["embedding_size"],
                            **info["params"])
        head.load_state_dict(info["state_dict"])
    return FrozenTeacher(backbone, head, checkpoint.get("classes"), str(path), model_cfg).to(device)


class TorchTeacher(Teacher):
    """A PyTorch backbone as a teacher; its framing is the arcface template at its input size.

    Args:
        frozen: the :class:`FrozenTeacher` (backbone, optional head and classes).
        amp: autocast mode of its forward passes (``none``/``bf16``/``fp16``).
        framing: overrides of the default framing (normalisation of the student, arcface
            template at ``model_config.input_size``).
    """

    kind = "torch"

    def __init__(self, frozen: FrozenTeacher, amp: str = "none", framing: Optional[Framing] = None) -> None:
        config = frozen.model_config
        param = next(frozen.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        super().__init__(framing or Framing(int(config.input_size)), int(config.embedding_size), frozen.path, device)
        self.frozen = frozen
        self.backbone = frozen.backbone
        self.head = frozen.head
        self.classes: Optional[List[str]] = frozen.classes
        self.model_config = config
        self.amp = amp

    def weights_digest(self) -> str:
        return state_dict_digest(self.backbone)

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}|amp={self.amp}"

    def input_batch(self, faces: torch.Tensor) -> torch.Tensor:
        """Normalised, resized float input on the teacher's device of uint8 faces ``N x H x W x 3``."""
        return self.framing.normalize(torch.as_tensor(faces).to(self.device, non_blocking=True))

    @torch.inference_mode()
    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        from facekd.precision import autocast_context

        with autocast_context(self.device, self.amp):
            return self.backbone(self.input_batch(torch.from_numpy(np.ascontiguousarray(frames)))).float()

    def embed(self, faces: Any) -> torch.Tensor:
        faces = torch.as_tensor(faces)    # the arcface framing needs no warp: stay on the tensor
        if not self.framing.is_resize:
            return super().embed(faces)
        from facekd.precision import autocast_context

        with torch.inference_mode(), autocast_context(self.device, self.amp):
            return self.backbone(self.input_batch(faces)).float().cpu()

    def to(self, device: Any) -> "TorchTeacher":
        super().to(device)
        self.frozen.to(self.device)
        return self


@TEACHERS.register("torch")
def build_torch_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"),
                        amp: str = "none") -> TorchTeacher:
    """The :class:`TorchTeacher` of ``teacher_cfg`` (``checkpoint``/``path``, ``model``, ``framing``)."""
    frozen = load_teacher(teacher_cfg, device)
    default = Framing(int(frozen.model_config.input_size))
    return TorchTeacher(frozen, amp, framing_from_config(getattr(teacher_cfg, "framing", None), default))
