"""Mixed precision: the autocast modes facekd knows and how to enter them.

One table (:data:`AMP_DTYPES`) names the modes — ``none``, ``bf16``, ``fp16`` — for training
(:class:`facekd.training.trainer.Trainer`), the teacher-embedding cache and evaluation
(:class:`facekd.evaluation.embed.TorchEmbedder`).  This module imports nothing else from
facekd but :mod:`facekd.errors`, so any module may use it without an import circle.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Optional

import torch

from facekd.errors import ConfigError

LOG = logging.getLogger(__name__)

#: autocast mode name -> the dtype autocast computes in (None: no autocast, float32)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str) -> Optional[torch.dtype]:
    """The dtype of autocast mode ``amp`` (None for ``none``); :class:`ConfigError` if unknown."""
    try:
        return AMP_DTYPES[amp]
    except KeyError:
        raise ConfigError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}") from None


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast mode usable on ``device``: fp16 needs CUDA, bf16 CUDA with bf16 or the CPU."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        LOG.warning("train.amp=fp16 needs a GPU; training in float32 on %s", device)
        return "none"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        LOG.warning("this GPU has no bf16; training in float32")
        return "none"
    return amp


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` on ``device`` (``none``: a null context)."""
    dtype = amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
