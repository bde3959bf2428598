"""Loading backbone weights: facekd checkpoints and insightface ``backbone.pth`` files."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Union

import torch
from torch import nn

from facekd.errors import CheckpointError, DataError

#: keys under which checkpoint dicts commonly keep the backbone's weights
STATE_DICT_KEYS = ("state_dict", "model", "backbone", "model_state_dict")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: keys the file lacked or had in excess."""
    path: str
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """True when every key matched."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        if self.exact:
            return f"{self.path}: all keys matched"
        return (f"{self.path}: {len(self.missing)} missing key(s) {self.missing[:8]}, "
                f"{len(self.unexpected)} unexpected key(s) {self.unexpected[:8]}")


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """``torch.load`` on CPU with a clear error for a missing or corrupt file."""
    if not os.path.isfile(path):
        raise DataError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle, zip and torch errors all mean "not a checkpoint"
        raise DataError(path, f"not a readable PyTorch checkpoint ({error})") from None


def extract_state_dict(checkpoint: Mapping[str, Any], path: str = "<checkpoint>") -> Dict[str, torch.Tensor]:
    """The backbone state dict inside ``checkpoint`` with ``module.`` (DDP) prefixes removed.

    Accepts a plain state dict (insightface's ``backbone.pth``) or a dict holding one
    under one of :data:`STATE_DICT_KEYS` (facekd and most training scripts).
    """
    state = checkpoint
    for key in STATE_DICT_KEYS:
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict (looked for a plain one and under "
                              f"{list(STATE_DICT_KEYS)}; top-level keys: {list(checkpoint)[:10]})")
    prefix = "module."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def load_pretrained(model: nn.Module, path: Union[str, os.PathLike], strict: bool = True) -> LoadReport:
    """Load weights from ``path`` into ``model``.

    Args:
        model: the backbone to fill.
        path: a plain state dict or a checkpoint dict (see :func:`extract_state_dict`).
        strict: raise :class:`CheckpointError` on missing or unexpected keys; when False
            they are only reported in the returned :class:`LoadReport`.

    A tensor whose shape differs from the model's always raises, naming the key and both
    shapes (e.g. an IResNet-50 file given for an IResNet-100 model).
    """
    path = os.fspath(path)
    state = extract_state_dict(read_checkpoint(path), path)
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and own[key].shape != tensor.shape:
            raise CheckpointError(f"{path}: shape mismatch for {key}: file has "
                                  f"{tuple(tensor.shape)}, model expects {tuple(own[key].shape)}")
    report = LoadReport(path, sorted(set(own) - set(state)), sorted(set(state) - set(own)))
    if strict and not report.exact:
        raise CheckpointError(str(report))
    model.load_state_dict(state, strict=False)
    return report
