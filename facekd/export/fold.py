"""Fold inference-mode BatchNorm into the preceding convolution or linear layer.

:func:`fold_batchnorm` returns an eval-mode copy of a model in which every BatchNorm that
directly follows a ``Conv2d`` / ``Linear`` (and is that layer's only consumer) has been
merged into the layer's weight and bias and replaced by ``nn.Identity``.  The pairs are
found on a ``torch.fx`` trace of the model, so any architecture works; the model's class,
attributes and methods (``forward_features``, ``embedding_size``) are kept because the
fold is applied by module surgery on the copy, not by replacing it with a graph module.

Patterns folded:

* ``Conv2d -> BatchNorm2d`` (MobileFaceNet's ``ConvBN``, IResNet's conv/bn pairs);
* ``Conv2d -> flatten -> BatchNorm1d`` when the conv's output is ``C x 1 x 1`` (the
  BatchNorm's ``num_features`` equals the conv's ``out_channels``) — MobileFaceNet's final
  linear 1x1 conv + BN;
* ``Linear -> BatchNorm1d`` (IResNet's ``fc`` + ``features``).

BatchNorms that *precede* a convolution (IResNet's pre-activation ``bn1``) are left alone:
folding them forward is inexact at zero-padded borders.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

LOG = logging.getLogger(__name__)

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_FLATTENS = {torch.flatten, torch.Tensor.flatten, "flatten", "view", "reshape"}


@dataclass(frozen=True)
class FoldPair:
    """One BatchNorm (``bn``, a qualified module name) folded into layer ``layer``."""
    layer: str
    bn: str


def _modules_by_name(model: nn.Module) -> Dict[str, nn.Module]:
    return dict(model.named_modules())


def _users(node) -> List:
    return list(node.users)


def _is_flatten(node, modules: Dict[str, nn.Module]) -> bool:
    if node.op in ("call_function", "call_method"):
        return node.target in _FLATTENS
    return node.op == "call_module" and isinstance(modules.get(node.target), nn.Flatten)


def find_fold_pairs(model: nn.Module) -> List[FoldPair]:
    """The (layer, BatchNorm) pairs of ``model`` that :func:`fold_batchnorm` can merge.

    Uses a ``torch.fx`` symbolic trace; a model that cannot be traced falls back to the
    ``Conv2d`` followed by ``BatchNorm2d`` pairs inside ``nn.Sequential`` containers.
    """
    modules = _modules_by_name(model)
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as error:  # data-dependent control flow: fall back to Sequential pairs
        LOG.info("fold_batchnorm: torch.fx cannot trace %s (%s); folding Sequential pairs only",
                 type(model).__name__, error)
        return _sequential_pairs(model)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BATCHNORMS):
            continue
        bn = modules[node.target]
        source = node.args[0] if node.args else None
        through_flatten = source is not None and _is_flatten(source, modules) and len(_users(source)) == 1
        if through_flatten:
            source = source.args[0]
        if source is None or source.op != "call_module" or len(_users(source)) != 1:
            continue
        layer = modules[source.target]
        if isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not through_flatten:
            ok = layer.out_channels == bn.num_features
        elif isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm1d) and through_flatten:
            ok = layer.out_channels == bn.num_features   # only possible when the map is 1x1
        elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d) and not through_flatten:
            ok = layer.out_features == bn.num_features
        else:
            ok = False
        if ok and bn.track_running_stats and bn.running_mean is not None:
            pairs.append(FoldPair(source.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> List[FoldPair]:
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                prefix = f"{name}." if name else ""
                pairs.append(FoldPair(prefix + conv_name, prefix + bn_name))
    return pairs


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace ``model``'s submodule at qualified ``name`` (e.g. ``"conv1.0"``) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _fuse(layer: nn.Module, bn: nn.Module) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return fuse_linear_bn_eval(layer, bn)
    return fuse_conv_bn_eval(layer, bn)


def fold_batchnorm(model: nn.Module, pairs: Optional[List[FoldPair]] = None) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded into the preceding layers.

    Args:
        model: any ``nn.Module`` (left untouched).
        pairs: the pairs to fold (default: :func:`find_fold_pairs`).

    Returns:
        A deep copy in eval mode computing the same function (up to float rounding) with
        the folded BatchNorms replaced by ``nn.Identity``.  ``folded_pairs`` on the copy
        lists what was folded.
    """
    pairs = find_fold_pairs(model) if pairs is None else pairs
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for pair in pairs:
            layer, bn = folded.get_submodule(pair.layer), folded.get_submodule(pair.bn)
            set_module(folded, pair.layer, _fuse(layer, bn))
            set_module(folded, pair.bn, nn.Identity())
    folded.folded_pairs = list(pairs)
    return folded


def count_batchnorm(model: nn.Module) -> Tuple[int, int]:
    """``(batchnorms, foldable)``: BatchNorm modules in ``model`` and how many can be folded."""
    total = sum(isinstance(m, _BATCHNORMS) for m in model.modules())
    return total, len(find_fold_pairs(model))
