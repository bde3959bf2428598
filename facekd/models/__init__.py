"""Backbones: IResNet-18/34/50/100 (insightface-compatible) and MobileFaceNet.

Build any of them from a name with ``MODELS.build(name, embedding_size=..., input_size=...)``
or from a :class:`facekd.config.ModelConfig` with :func:`build_model`.
"""
from __future__ import annotations

from torch import nn

from facekd.models import iresnet, mobilefacenet  # noqa: F401  (register the backbones)
from facekd.models.checkpoint import LoadReport, extract_state_dict, load_pretrained, read_checkpoint
from facekd.models.complexity import count_macs, count_parameters
from facekd.models.iresnet import IResNet
from facekd.models.mobilefacenet import MobileFaceNet
from facekd.models.registry import MODELS


def build_model(model_cfg) -> nn.Module:
    """Build the backbone a ``ModelConfig`` (or anything with name/embedding_size/input_size/params) names."""
    params = dict(getattr(model_cfg, "params", None) or {})
    return MODELS.build(model_cfg.name, embedding_size=model_cfg.embedding_size,
                        input_size=model_cfg.input_size, **params)


__all__ = ["MODELS", "build_model", "load_pretrained", "read_checkpoint", "extract_state_dict",
           "LoadReport", "count_parameters", "count_macs", "IResNet", "MobileFaceNet"]
