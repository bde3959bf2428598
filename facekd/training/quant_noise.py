"""Pseudo-quantisation noise (``train.quant_noise``): train a network under its INT8 rounding.

An INT8 export rounds each activation to 256 levels of its range, and a student fitted closely
to its teacher amplifies that rounding more than a plain one (bench/README.md, "Where the noise
grows").  With ``train.quant_noise = s`` every activation the export rounds (the outputs of
BatchNorm, PReLU and MobileFaceNet's bottlenecks) gets, in training mode only, uniform noise of
``s`` rounding steps of its batch range::

    x + s * (max(x) - min(x)) / 255 * U(-1/2, 1/2)

the additive model of rounding that DiffQ (Défossez et al. 2021) and Quant-Noise (Fan et al.
2020) train under, so that the network learns to be insensitive to it.  Gradients pass through
``x`` unchanged; eval mode (validation, export) computes the plain function.

By default the range is treated as a constant (detached).  With ``train.quant_noise_range_grad`` the gradient
also flows through it (to each tensor's extreme elements): the expected loss grows with the step size
(by ``(s * step)**2 * tr(H) / 24`` for a loss of curvature ``H``), so the network learns to keep each
activation's range compact against its spread, as the INT8 export's per-tensor step rewards; a
rescaling of a whole tensor changes signal and noise alike and gains nothing.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from facekd.models.mobilefacenet import Bottleneck

#: the modules whose outputs an INT8 export rounds (a BatchNorm's is its folded convolution's): the
#: rounding points facekd.export.int8_finetune.simulate_int8 rounds exactly, as training-time noise
ROUNDED_OUTPUTS = (nn.BatchNorm2d, nn.PReLU, Bottleneck)
#: rounding steps across an activation's range (uint8: int8_finetune.ACTIVATION_LEVELS; not imported,
#: so that training does not load the export package)
LEVELS = 255


def add_quant_noise(x: torch.Tensor, strength: float, range_grad: bool = False) -> torch.Tensor:
    """``x`` plus uniform noise of ``strength`` uint8 rounding steps of its range.

    One noise pattern per call, shared by the batch (dimension 0): drawing a number per element
    made a compiled MobileFaceNet step 2.6x slower on the CPU, one per pattern 1.05x.
    ``range_grad``: the gradient flows through the range too (else it is detached).
    """
    low, high = torch.aminmax(x if range_grad else x.detach())
    noise = torch.rand((1, *x.shape[1:]), dtype=x.dtype, device=x.device) - 0.5
    return x + noise * ((high - low) * (strength / LEVELS))


class QuantNoiseHook:
    """Forward hook adding :func:`add_quant_noise` to a module's output while it is training."""

    def __init__(self, strength: float, range_grad: bool = False) -> None:
        self.strength = float(strength)
        self.range_grad = bool(range_grad)

    def __call__(self, module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        return add_quant_noise(output, self.strength, self.range_grad) if module.training else output


def attach_quant_noise(model: nn.Module, strength: float, range_grad: bool = False) -> List[RemovableHandle]:
    """Hook :class:`QuantNoiseHook` onto every :data:`ROUNDED_OUTPUTS` module of ``model``
    (``range_grad``: see :func:`add_quant_noise`).

    Returns the handles (``handle.remove()`` detaches one); ``strength`` 0 attaches nothing.
    State-dict keys and checkpoints are unchanged.
    """
    if strength <= 0:
        return []
    hook = QuantNoiseHook(strength, range_grad)
    return [module.register_forward_hook(hook) for module in model.modules() if isinstance(module, ROUNDED_OUTPUTS)]
