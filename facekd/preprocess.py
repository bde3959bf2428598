"""The one preprocessing convention used by training, evaluation and export.

Faces are RGB, aligned to 112x112 by the 5-point arcface template, and scaled to
``(x / 255 - 0.5) / 0.5`` so pixel values lie in [-1, 1] (insightface's convention).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 112
CHANNEL_ORDER = "RGB"
MEAN = 0.5   # applied after /255, identical for all channels
STD = 0.5
#: name of :func:`resize_batch`'s method (part of teacher-cache keys)
RESIZE_METHOD = "batch-torch-area-down/bilinear-up"


def normalize_uint8(images: np.ndarray) -> torch.Tensor:
    """Convert uint8 RGB image(s) ``HxWx3`` or ``NxHxWx3`` to normalised float ``(N)x3xHxW``."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {array.dtype}")
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected HxWx3 or NxHxWx3 RGB images, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
    tensor = tensor.movedim(-1, -3)  # channels first
    return (tensor / 255.0 - MEAN) / STD


def denormalize_to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize_uint8` (for visualisation): ``(N)x3xHxW`` -> ``(N)xHxWx3``."""
    array = ((tensor.detach().cpu().float() * STD + MEAN) * 255.0).round().clamp(0, 255)
    return array.movedim(-3, -1).to(torch.uint8).numpy()


def resize_batch(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float ``(N)x3xHxW`` batch to ``size`` x ``size`` (area when shrinking, else bilinear)."""
    if batch.shape[-1] == size and batch.shape[-2] == size:
        return batch
    single = batch.dim() == 3
    if single:
        batch = batch[None]
    shrink = batch.shape[-1] > size
    out = F.interpolate(batch, size=(size, size), mode="area" if shrink else "bilinear",
                        **({} if shrink else {"align_corners": False}))
    return out[0] if single else out


class InputResize(nn.Module):
    """Wrap a backbone so that it accepts 112x112 batches whatever its ``input_size``.

    Used wherever 112x112 faces meet a model trained at another size (verification during
    training, ``facekd eval``).
    """

    def __init__(self, model: nn.Module, input_size: int) -> None:
        super().__init__()
        self.model = model
        self.input_size = int(input_size)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(resize_batch(batch, self.input_size))
