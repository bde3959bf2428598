"""Parameter and multiply-accumulate (MAC) counts of a model.

MACs count convolutions and fully connected layers, the convention of the
MobileFaceNet paper and of insightface's model tables (BatchNorm, PReLU and additions
are not counted).
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable or not (insightface counts the frozen BN weight too)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int = 112) -> int:
    """Multiply-accumulates of one forward pass on a ``1 x 3 x input_size x input_size`` input."""
    total: List[int] = [0]

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total[0] += output.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        total[0] += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total[0]
