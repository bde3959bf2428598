"""What the trainer does for parameters split across ranks (the model-parallel PartialFC head).

A module exposing ``sharded_parameters() -> {name: ClassShard}`` holds only its rank's rows of
those parameters (:mod:`facekd.losses.partial_fc_sharded`).  :class:`ShardedParameters` finds
them in the trained module and

* keeps them out of DDP (:meth:`exclude_from_ddp`): their gradients are already exact per
  rank, and all-reducing them is what sharding avoids;
* clips gradients by the *global* norm (:meth:`clip_grad_norm_`: the replicated parameters'
  norm plus the all-reduced sum of the shards' squared norms), so every rank scales alike;
* makes an fp16 loss scaler skip a step on every rank when one rank's shard overflowed
  (:meth:`share_overflow`);
* saves them whole (:meth:`gather` on every rank, then :meth:`fill` on rank 0): a checkpoint
  has the same layout as a single process's, so a teacher loads it as usual and any world
  size resumes from it.  Each shard (and its optimiser state) travels to rank 0 alone, so no
  device holds the whole head; rank 0 assembles it in host memory.
* loads them from whole tensors: the head keeps its rows of a whole weight, and
  :meth:`slice_optimizer_state` (an optimiser load pre-hook) does the same for the optimiser.

With nothing sharded every method is a no-op or the usual single-process operation.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import torch
import torch.distributed as dist
from torch import nn

from facekd.training.distributed import DistInfo

#: (data pointer, shape) of a local tensor -> its whole version
Whole = Dict[Tuple[int, Tuple[int, ...]], torch.Tensor]


class ShardedParameters:
    """The sharded parameters of ``module`` (found through ``sharded_parameters()``)."""

    def __init__(self, module: nn.Module, info: DistInfo) -> None:
        self.info = info
        self.entries: List[Tuple[str, nn.Parameter, Any]] = []
        for prefix, sub in module.named_modules():
            for name, shard in getattr(sub, "sharded_parameters", dict)().items():
                full_name = f"{prefix}.{name}" if prefix else name
                self.entries.append((full_name, getattr(sub, name), shard))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def _is_sharded(self, param: torch.Tensor) -> bool:
        return any(param is p for _, p, _ in self.entries)

    def exclude_from_ddp(self, module: nn.Module) -> None:
        """Tell DDP (before wrapping ``module``) to leave the sharded parameters alone."""
        if self.entries:
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                module, [name for name, _, _ in self.entries])

    def clip_grad_norm_(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over the global model (every rank's shard counted once)."""
        params = list(params)
        if not self.entries:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        grads = [p.grad for p in params if p.grad is not None and not self._is_sharded(p)]
        shards = [p.grad for _, p, _ in self.entries if p.grad is not None]
        device = (grads or shards)[0].device
        total = torch.zeros((), device=device)
        if grads:
            total = torch.nn.utils.get_total_norm(grads).to(device).square()
        local = sum((g.float().square().sum() for g in shards), torch.zeros((), device=device))
        dist.all_reduce(local)
        total = (total + local).sqrt()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total

    def share_overflow(self) -> None:
        """Make every rank's shard gradient non-finite when one rank's is (no host sync), so an
        fp16 ``GradScaler`` skips the step on every rank alike; call after ``backward``."""
        grads = [p.grad for _, p, _ in self.entries if p.grad is not None]
        if not grads:
            return
        bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any().float().reshape(1)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        grads[0].view(-1)[:1].add_(torch.log1p(-bad).to(grads[0].dtype))    # -inf when bad, else + 0

    def _tensors(self, optimizer: torch.optim.Optimizer) -> List[Tuple[torch.Tensor, Any]]:
        """Each sharded parameter and its optimiser state of the same shape, with its shard."""
        found = []
        for _, param, shard in self.entries:
            found.append((param.detach(), shard))
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    found.append((value, shard))
        return found

    def gather(self, optimizer: torch.optim.Optimizer) -> Whole:
        """The whole (``C``-row, host) version of each sharded tensor; call on every rank.

        Rank 0 receives the shards one at a time and gets the map; the other ranks get ``{}``.
        """
        whole: Whole = {}
        for local, shard in self._tensors(optimizer):
            local = local.contiguous()
            if not self.info.is_main:
                dist.send(local, dst=0)
                continue
            full = torch.empty((shard.num_classes, *local.shape[1:]), dtype=local.dtype)
            full[shard.start:shard.stop] = local.cpu()
            for rank in range(1, shard.world_size):
                other = shard.of_rank(rank)
                part = torch.empty((other.size, *local.shape[1:]), dtype=local.dtype, device=local.device)
                dist.recv(part, src=rank)
                full[other.start:other.stop] = part.cpu()
            whole[_key(local)] = full
        return whole

    @staticmethod
    def fill(state: Any, whole: Whole) -> Any:
        """``state`` (a checkpoint dict) with every sharded tensor replaced by its whole version."""
        if not whole:
            return state
        if torch.is_tensor(state):
            return whole.get(_key(state), state)
        if isinstance(state, dict):
            return type(state)((k, ShardedParameters.fill(v, whole)) for k, v in state.items())
        if isinstance(state, (list, tuple)):
            return type(state)(ShardedParameters.fill(v, whole) for v in state)
        return state

    def slice_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> Dict[str, Any]:
        """A loaded optimiser state dict with the whole tensors of sharded parameters cut to
        this rank's rows (register with ``optimizer.register_load_state_dict_pre_hook``)."""
        if not self.entries:
            return state
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, param in enumerate(params):
            shard = next((s for _, p, s in self.entries if p is param), None)
            saved = state["state"].get(index) if shard is not None else None
            for key, value in (saved or {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape[0] == shard.num_classes:
                    saved[key] = shard.take(value)
        return state


def _key(tensor: torch.Tensor) -> Tuple[int, Tuple[int, ...]]:
    return tensor.data_ptr(), tuple(tensor.shape)
