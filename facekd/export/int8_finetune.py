"""Quantisation-aware fine-tuning: float weights that survive ``facekd export --int8``.

Some trained students fail the INT8 check however they are calibrated: the shipped 30-epoch
56 px students reach a per-face cosine of only 0.982-0.989 against PyTorch (bench/README.md,
"INT8 options").  The error is not a range problem (calibrating on the check faces themselves
does not fix it); 8-bit rounding noise accumulates over the 16 bottlenecks.  The remedy of
the field is to let the network learn around the rounding (Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"; Krishnamoorthi
2018): fine-tune it with the INT8 model's rounding simulated in the forward pass and a
straight-through gradient.

:func:`finetune_for_int8` does that to a BatchNorm-folded copy of the model, where onnxruntime's
QDQ model rounds (:class:`SimulatedConv`, :class:`SimulatedPReLU`):

* weights: symmetric int8 per output channel (``[-64, 64]`` with ``reduce_range``, the export's
  default, else ``[-127, 127]``: onnxruntime's ``s8`` ranges);
* activations: uint8 per tensor, asymmetric, over the range observed on the calibration faces
  (zero included): every convolution's input and output, and inside each PReLU the two
  tensors of its INT8 rewrite ``dwconv1`` (:mod:`facekd.export.prelu`: ``Relu((slope - 1) y)``
  and the sum);
* the last weight layer stays float, as :data:`facekd.export.int8_options.DEFAULT_INT8` keeps it.

The loss needs no labels: the simulated INT8 student's embedding of a face (randomly flipped)
is pulled towards the *original* float student's embedding of the same face (``1 - cosine``),
so the fine-tuned model keeps computing the function the user trained while its weights move
to where rounding hurts less.  The result is unfolded back into the original architecture
(each BatchNorm becomes ``x + bias``), so it is an ordinary checkpoint that ``facekd eval`` and
``facekd export --int8`` read; onnxruntime then calibrates and quantises it as any other.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facekd.embedding_math import row_cosine
from facekd.errors import ConfigError
from facekd.export.fold import FoldPair, find_fold_pairs, fold_batchnorm, set_module
from facekd.export.int8_options import DEFAULT_INT8
from facekd.export.runtime import resize_faces
from facekd.preprocess import normalize_uint8

#: onnxruntime's uint8 activation range and symmetric int8 weight ranges (8-bit, 7-bit: ``reduce_range``)
ACTIVATION_LEVELS = (0, 255)
WEIGHT_LEVELS = (-127, 127)
REDUCED_WEIGHT_LEVELS = (-64, 64)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quantize_weight(weight: torch.Tensor, levels: Tuple[int, int] = WEIGHT_LEVELS) -> torch.Tensor:
    """``weight`` rounded to symmetric int8 ``levels`` with one scale per output channel (dim 0)."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    scale = (absmax / levels[1]).view(-1, *([1] * (weight.dim() - 1)))
    return torch.clamp(_round_ste(weight / scale), *levels) * scale


class ActivationQuantizer(nn.Module):
    """Per-tensor uint8 rounding of an activation over a range it first observes.

    While ``observing`` it records the running min and max of what passes (unchanged);
    afterwards it rounds to 256 levels of ``[min(lo, 0), max(hi, 0)]`` (zero is exact, as in
    onnxruntime) with a straight-through gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.tensor(math.inf))
        self.register_buffer("hi", torch.tensor(-math.inf))
        self.observing = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                self.lo.copy_(torch.minimum(self.lo, x.min()))
                self.hi.copy_(torch.maximum(self.hi, x.max()))
            return x
        lo, hi = self.lo.clamp(max=0.0), self.hi.clamp(min=0.0)
        scale = ((hi - lo) / ACTIVATION_LEVELS[1]).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
        q = torch.clamp(_round_ste(x / scale) + zero, *ACTIVATION_LEVELS)
        return (q - zero) * scale


class SimulatedConv(nn.Module):
    """A (BatchNorm-folded) ``Conv2d`` as the INT8 model computes it: rounded input, weights, output."""

    def __init__(self, conv: nn.Conv2d, quantize: bool = True, weight_levels: Tuple[int, int] = WEIGHT_LEVELS) -> None:
        super().__init__()
        self.conv = conv
        self.quantize = quantize
        self.weight_levels = weight_levels
        self.input_quant = ActivationQuantizer()
        self.output_quant = ActivationQuantizer() if quantize else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        x = self.input_quant(x)
        rounding = self.quantize and not self.input_quant.observing    # calibration runs the float model
        weight = fake_quantize_weight(conv.weight, self.weight_levels) if rounding else conv.weight
        y = F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self.output_quant(y) if self.output_quant is not None else y


class SimulatedPReLU(nn.Module):
    """``PReLU`` as its INT8 rewrite (``dwconv1``, :data:`~facekd.export.prelu.INT8_PRELU_REWRITE`) runs:
    ``round(y + round(Relu((slope - 1) * y)))``."""

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        self.prelu = prelu
        self.scaled_quant = ActivationQuantizer()
        self.output_quant = ActivationQuantizer()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        slope = self.prelu.weight.view(1, -1, *([1] * (y.dim() - 2)))
        return self.output_quant(y + self.scaled_quant(F.relu((slope - 1.0) * y)))


def simulate_int8(folded: nn.Module, keep_float: Sequence[str] = ("last",),
                  reduce_range: bool = DEFAULT_INT8.reduce_range) -> nn.Module:
    """A copy of BatchNorm-folded ``folded`` whose convolutions and PReLUs round as INT8 does.

    ``keep_float`` may name ``"first"`` and/or ``"last"``: those weight layers keep float weights
    and output (their input is still rounded by the layer before).  ``reduce_range``: 7-bit
    weights, as the export's default.  Its quantisers are observing: run calibration faces
    through it, then :func:`freeze_ranges`.
    """
    unknown = set(keep_float) - {"first", "last"}
    if unknown:
        raise ConfigError(f"int8 fine-tuning: keep_float may name 'first' and 'last' only, got {sorted(unknown)}")
    sim = copy.deepcopy(folded)
    convs = [name for name, module in sim.named_modules() if isinstance(module, nn.Conv2d)]
    if any(isinstance(m, nn.Linear) for m in sim.modules()):
        raise ConfigError("int8 fine-tuning simulates convolutional students (MobileFaceNet); this model has Linear layers")
    floats = {convs[0]} if "first" in keep_float else set()
    floats |= {convs[-1]} if "last" in keep_float else set()
    for name in convs:
        set_module(sim, name, SimulatedConv(sim.get_submodule(name), quantize=name not in floats,
                                            weight_levels=REDUCED_WEIGHT_LEVELS if reduce_range else WEIGHT_LEVELS))
    for name in [n for n, m in sim.named_modules() if isinstance(m, nn.PReLU)]:
        set_module(sim, name, SimulatedPReLU(sim.get_submodule(name)))
    return sim


def remove_simulation(sim: nn.Module) -> nn.Module:
    """A copy of :func:`simulate_int8`'s ``sim`` with its float layers back in place (no rounding)."""
    plain = copy.deepcopy(sim)
    for name, module in list(plain.named_modules()):
        if isinstance(module, SimulatedConv):
            set_module(plain, name, module.conv)
        elif isinstance(module, SimulatedPReLU):
            set_module(plain, name, module.prelu)
    return plain


def freeze_ranges(sim: nn.Module) -> int:
    """Stop observing: every :class:`ActivationQuantizer` of ``sim`` rounds from now on; returns how many."""
    quantizers = [m for m in sim.modules() if isinstance(m, ActivationQuantizer)]
    for quantizer in quantizers:
        if not torch.isfinite(quantizer.lo):
            raise ConfigError("int8 fine-tuning: a quantiser saw no data; run calibration faces through the model first")
        quantizer.observing = False
    return len(quantizers)


def unfold_into(original: nn.Module, folded: nn.Module, pairs: Sequence[FoldPair]) -> nn.Module:
    """A copy of ``original`` computing ``folded`` (a :func:`fold_batchnorm` copy, possibly fine-tuned).

    Each folded layer's weight goes back into the original layer and its bias into the
    BatchNorm, set to the identity plus that bias (mean 0, variance ``1 - eps``, scale 1);
    every other parameter (PReLU slopes) is copied by name.
    """
    model = copy.deepcopy(original).eval()
    folded_state = folded.state_dict()
    with torch.no_grad():
        for pair in pairs:
            layer, bn = model.get_submodule(pair.layer), model.get_submodule(pair.bn)
            fused = folded.get_submodule(pair.layer)
            layer.weight.copy_(fused.weight)
            bn.weight.fill_(1.0)
            bn.bias.copy_(fused.bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        folded_names = {f"{p.layer}.{k}" for p in pairs for k in ("weight", "bias")}
        bn_names = {p.bn for p in pairs}
        for name, tensor in model.state_dict().items():
            owner = name.rpartition(".")[0]
            if name in folded_names or owner in bn_names or name not in folded_state:
                continue
            tensor.copy_(folded_state[name])
    return model


@dataclass
class Int8FinetuneReport:
    """What :func:`finetune_for_int8` did and the simulated INT8 drift before and after.

    ``*_cosine`` are per-face cosines to the original float model on ``eval_faces``
    (``{"mean", "min"}``): the simulated INT8 model before fine-tuning, after it, and the
    fine-tuned float model (how far the user's function moved).
    """
    steps: int
    lr: float
    batch_size: int
    faces: int
    quantizers: int
    loss_first: float
    loss_last: float
    simulated_before: Dict[str, float] = field(default_factory=dict)
    simulated_after: Dict[str, float] = field(default_factory=dict)
    float_after: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def _cosine_stats(model: nn.Module, reference: torch.Tensor, inputs: torch.Tensor) -> Dict[str, float]:
    with torch.no_grad():
        cos = row_cosine(model(inputs).numpy(), reference.numpy())
    return {"mean": float(np.mean(cos)), "min": float(np.min(cos))}


def finetune_for_int8(model: nn.Module, faces: np.ndarray, steps: int = 300, lr: float = 1e-5,
                      batch_size: int = 64, eval_faces: Optional[np.ndarray] = None,
                      keep_float: Sequence[str] = ("last",), seed: int = 0,
                      reduce_range: bool = DEFAULT_INT8.reduce_range) -> "tuple[nn.Module, Int8FinetuneReport]":
    """Fine-tune ``model`` so that its INT8 export drifts less from the original float model.

    Args:
        model: a trained backbone (eval mode; ``input_size`` attribute when not 112).
        faces: aligned uint8 faces ``N x 112 x 112 x 3`` (the calibration faces: the ranges are
            observed on them and the fine-tuning batches are drawn from them, randomly flipped).
        steps: Adam steps (cosine-decayed learning rate from ``lr``).
        batch_size: faces per step.
        eval_faces: faces the drift is reported on (default: ``faces``); keep them apart from
            ``faces`` for an honest number.
        keep_float: ``"first"``/``"last"`` weight layers left float, as in the INT8 export.
        seed: batch sampling and flips.
        reduce_range: 7-bit weights, as the INT8 export will quantise them (its default).

    Returns:
        ``(fine_tuned, report)``: ``fine_tuned`` has ``model``'s architecture and state-dict keys.
    """
    if steps < 0 or lr <= 0 or batch_size < 1:
        raise ConfigError(f"int8 fine-tuning: steps >= 0, lr > 0 and batch_size >= 1 required "
                          f"(got {steps}, {lr}, {batch_size})")
    size = int(getattr(model, "input_size", faces.shape[1]))
    inputs = normalize_uint8(resize_faces(faces, size))
    checks = inputs if eval_faces is None else normalize_uint8(resize_faces(eval_faces, size))
    original = copy.deepcopy(model).eval()
    pairs = find_fold_pairs(original)
    folded = fold_batchnorm(original)
    with torch.no_grad():
        targets = F.normalize(folded(inputs), dim=1)
        flipped_targets = F.normalize(folded(inputs.flip(-1)), dim=1)
        check_targets = folded(checks)
        sim = simulate_int8(folded, keep_float, reduce_range)
        for start in range(0, len(inputs), batch_size):
            sim(inputs[start:start + batch_size])
            sim(inputs[start:start + batch_size].flip(-1))
    quantizers = freeze_ranges(sim)
    before = _cosine_stats(sim, check_targets, checks)

    generator = torch.Generator().manual_seed(seed)
    params = [p for p in sim.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1))))
    losses: List[float] = []
    for _ in range(steps):
        index = torch.randint(len(inputs), (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1), inputs[index].flip(-1), inputs[index])
        target = torch.where(flip.view(-1, 1), flipped_targets[index], targets[index])
        loss = (1.0 - (F.normalize(sim(batch), dim=1) * target).sum(dim=1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())

    after = _cosine_stats(sim, check_targets, checks)
    tuned = unfold_into(original, remove_simulation(sim), pairs)
    report = Int8FinetuneReport(steps=steps, lr=lr, batch_size=batch_size, faces=len(inputs), quantizers=quantizers,
                                loss_first=losses[0] if losses else float("nan"),
                                loss_last=float(np.mean(losses[-10:])) if losses else float("nan"),
                                simulated_before=before, simulated_after=after,
                                float_after=_cosine_stats(tuned, check_targets, checks))
    return tuned, report

