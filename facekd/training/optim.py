"""Optimisers and learning-rate schedules, built by name from an ``OptimConfig``.

Schedules are per optimiser step: ``warmup_epochs`` of linear warm-up (from
``lr / warmup_steps`` up to ``lr``), then ``cosine`` decay to ``min_lr`` at the last step,
``step`` decay by ``gamma`` at each epoch in ``milestones``, or ``constant``.

Optimisers use PyTorch's multi-tensor implementations (:func:`fast_implementation`): the
fused kernel when every parameter is on a CUDA device, ``foreach`` otherwise — the same
update as the per-parameter loop, in a few kernels instead of several per parameter.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence

import torch

from facekd.errors import ConfigError
from facekd.registry import Registry

#: name -> factory(params, cfg: OptimConfig) -> torch.optim.Optimizer
OPTIMIZERS = Registry("optimizer")
#: name -> factory(cfg: OptimConfig, steps_per_epoch, total_steps) -> callable(step) -> LR factor
SCHEDULES = Registry("lr schedule")


def fast_implementation(params: Sequence[torch.Tensor]) -> Dict[str, bool]:
    """``{"fused": True}`` when every parameter is on CUDA, else ``{"foreach": True}``
    (``params``: tensors or param-group dicts)."""
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    on_cuda = bool(tensors) and all(t.device.type == "cuda" for t in tensors)
    return {"fused": True} if on_cuda else {"foreach": True}


def _params(params: Iterable) -> List:
    return list(params)


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, cfg) -> torch.optim.Optimizer:
    """SGD with momentum (insightface's choice for margin-softmax training)."""
    params = _params(params)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           **fast_implementation(params))


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, cfg) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    params = _params(params)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast_implementation(params))


class LRSchedule:
    """``factor(step)``: linear warm-up for ``warmup_steps``, then the decay ``after``."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))

    def decay(self, step: int) -> float:
        """The factor after warm-up; ``step`` counts from the end of warm-up."""
        return 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.decay(step - self.warmup_steps)


class CosineSchedule(LRSchedule):
    """Half-cosine from 1 to ``min_factor`` over the steps after warm-up."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> None:
        super().__init__(warmup_steps, total_steps)
        self.min_factor = float(min_factor)

    def decay(self, step: int) -> float:
        span = max(1, self.total_steps - self.warmup_steps - 1)
        progress = min(1.0, step / span)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StepSchedule(LRSchedule):
    """Multiply by ``gamma`` at each milestone (in optimiser steps)."""

    def __init__(self, warmup_steps: int, total_steps: int, milestone_steps: Sequence[int],
                 gamma: float) -> None:
        super().__init__(warmup_steps, total_steps)
        self.milestone_steps = sorted(int(m) for m in milestone_steps)
        self.gamma = float(gamma)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return self.gamma ** sum(step >= m for m in self.milestone_steps)


@SCHEDULES.register("cosine")
def cosine(cfg, steps_per_epoch: int, total_steps: int) -> LRSchedule:
    """Warm-up, then cosine decay to ``min_lr``."""
    return CosineSchedule(_warmup_steps(cfg, steps_per_epoch), total_steps,
                          cfg.min_lr / cfg.lr if cfg.lr else 0.0)


@SCHEDULES.register("step")
def step(cfg, steps_per_epoch: int, total_steps: int) -> LRSchedule:
    """Warm-up, then ``gamma`` decay at each epoch in ``milestones``."""
    if not cfg.milestones:
        raise ConfigError("optim.scheduler=step needs optim.milestones (epochs)")
    return StepSchedule(_warmup_steps(cfg, steps_per_epoch), total_steps,
                        [round(m * steps_per_epoch) for m in cfg.milestones], cfg.gamma)


@SCHEDULES.register("constant")
def constant(cfg, steps_per_epoch: int, total_steps: int) -> LRSchedule:
    """Warm-up, then a constant learning rate."""
    return LRSchedule(_warmup_steps(cfg, steps_per_epoch), total_steps)


def _warmup_steps(cfg, steps_per_epoch: int) -> int:
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def build_optimizer(params: Iterable, cfg) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer`` names, over ``params``."""
    try:
        factory = OPTIMIZERS.get(cfg.optimizer)
    except KeyError as error:
        raise ConfigError(f"optim.optimizer: {error.args[0]}") from None
    return factory(params, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following the schedule ``cfg.scheduler`` names."""
    try:
        factory = SCHEDULES.get(cfg.scheduler)
    except KeyError as error:
        raise ConfigError(f"optim.scheduler: {error.args[0]}") from None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factory(cfg, steps_per_epoch, total_steps))
