"""DDP the way large runs use it: gradient accumulation, bucket size, static graph and gradient
compression, set by ``train.grad_accum_steps`` and the ``ddp:`` section of the config.

* :func:`wrap_ddp` builds the ``DistributedDataParallel`` wrapper with ``ddp.bucket_cap_mb``
  (MiB of gradients per all-reduce) and ``ddp.static_graph`` (the same parameters get gradients
  every step, so DDP stops checking; not with accumulation: torch's ``no_sync`` fails on a
  static graph, pytorch/pytorch#143580, so the config loader refuses the pair), and registers the communication hook
  ``ddp.grad_compression`` names: torch's ``fp16_compress_hook`` / ``bf16_compress_hook``
  (each bucket divided by the world size, cast to half precision, all-reduced, cast back: half
  the bytes on the wire, about 3 significant digits per gradient).
* :class:`Accumulation` tells the trainer where a batch lies in its optimiser step with
  ``k = train.grad_accum_steps``: the first batch of a step zeroes the gradients, every
  batch's loss is divided by ``k`` before backward (the ``k`` gradients add up to the gradient
  of the mean loss over the ``k`` batches: the step of one batch ``k`` times as large, for a
  model without batch statistics), and every batch but the last runs under DDP's ``no_sync``
  (the gradients accumulate on each rank; one all-reduce per optimiser step).  A sharded head
  (:mod:`facekd.training.sharding`) sits outside DDP and accumulates its rows' gradients the
  same way.  The loss logged and checked for NaN is the mean of the ``k`` batches' losses.

Steps, the LR schedule, ``train.max_steps_per_epoch``, logs and checkpoints count optimiser
steps; an epoch is ``k`` times as many batches (the sampler's last ``len % k`` are dropped), and
a checkpoint is written only after an optimiser step, so its sampler position is a multiple of
``k`` (:meth:`Accumulation.check_resume`).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Optional, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel

from facekd.errors import CheckpointError

#: ``ddp.grad_compression`` -> the DDP communication hook of torch's ``default_hooks`` (None: DDP's own all-reduce)
COMPRESSION_HOOKS = {"none": None, "fp16": "fp16_compress_hook", "bf16": "bf16_compress_hook"}


def wrap_ddp(module: torch.nn.Module, ddp_cfg: Any, device: torch.device) -> DistributedDataParallel:
    """``module`` in ``DistributedDataParallel`` as ``ddp_cfg`` (a :class:`~facekd.config.DDPConfig`) asks.

    Parameters that must stay out of DDP (a sharded head) are excluded by the caller first.
    """
    model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                    bucket_cap_mb=float(ddp_cfg.bucket_cap_mb), static_graph=bool(ddp_cfg.static_graph))
    hook = COMPRESSION_HOOKS[ddp_cfg.grad_compression]
    if hook is not None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(state=None, hook=getattr(default_hooks, hook))
    return model


class Accumulation:
    """Where a batch lies in its optimiser step, for ``steps`` batches per step.

    ``batches_done`` (the trainer's count of the epoch's batches before this one) decides:
    a step starts at multiples of ``steps`` and ends before the next.
    """

    def __init__(self, steps: int = 1) -> None:
        if int(steps) < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self._loss: Optional[torch.Tensor] = None
        self._terms: Dict[str, Any] = {}

    def is_first(self, batches_done: int) -> bool:
        """The batch after ``batches_done`` starts an optimiser step (zero the gradients first)."""
        return batches_done % self.steps == 0

    def is_last(self, batches_done: int) -> bool:
        """The batch after ``batches_done`` ends an optimiser step (reduce, clip, step)."""
        return (batches_done + 1) % self.steps == 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss whose backward adds this batch's share of the step's gradient."""
        return loss / self.steps if self.steps > 1 else loss

    @staticmethod
    def sync(model: torch.nn.Module, last: bool) -> ContextManager:
        """DDP's ``no_sync`` unless ``last`` (or ``model`` is not DDP): the all-reduce waits for the last batch."""
        if last or not isinstance(model, DistributedDataParallel):
            return contextlib.nullcontext()
        return model.no_sync()

    def add(self, first: bool, loss: torch.Tensor, terms: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """Add a batch's (detached) loss and loss terms; the step's means so far (no host sync)."""
        if self.steps == 1:
            return loss, terms
        if first:
            self._loss, self._terms = None, {}
        self._loss = loss if self._loss is None else self._loss + loss
        for name, value in terms.items():
            self._terms[name] = value if name not in self._terms else self._terms[name] + value
        return self._loss / self.steps, {name: value / self.steps for name, value in self._terms.items()}

    def check_resume(self, batches_done: int, epoch: int, path: str) -> None:
        """Refuse a checkpoint whose sampler position is inside an optimiser step of this run."""
        if batches_done % self.steps:
            raise CheckpointError(f"{path}: written after batch {batches_done} of epoch {epoch + 1}, inside an "
                                  f"optimiser step of train.grad_accum_steps={self.steps} batches; resume it with "
                                  f"the grad_accum_steps it was written with (or from an epoch's end)")
