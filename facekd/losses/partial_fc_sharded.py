"""Model-parallel PartialFC: the class centres split across the ranks of a process group.

A PartialFC head (:mod:`facekd.losses.partial_fc`) built with ``world_size > 1`` holds only its
:class:`ClassShard` of the ``C`` centres (a contiguous block of about ``C / W`` rows; the
first ``C % W`` ranks hold one more), so no rank ever holds all centres or the ``N x C``
logits.  One step (:func:`sharded_margin_loss`):

1. the embeddings (with gradient) and labels of the *global* batch are all-gathered
   (:func:`gather_rows`, :func:`gather_labels`; every rank's batch has the same size);
2. each rank samples within its shard: its positives plus random others, scored by one
   uniform vector over all ``C`` classes that every rank draws alike from the global
   generator (so the generators stay in step: rank 0's state is what a checkpoint keeps);
3. each rank scores the global batch against its sampled centres, with the margin on the
   rows whose label it holds;
4. the softmax normaliser crosses ranks (:func:`sharded_cross_entropy`): an all-reduce of the
   per-row maximum, then of the sums of exponentials and of the target logits.

Every rank returns the same value, the mean loss over the global batch.  Gradients: a rank's
centres get exactly their share of the global loss's gradient (the head stays outside DDP);
the embedding gradients of all ranks' logits are summed back to the rank that computed the
rows, times ``W``, because DDP *averages* the backbone's gradients over the ``W`` ranks — the
backbone then gets the gradient of the single-process head on the global batch.

The centres of a shard start from N(0, 0.01) drawn block by block from generators seeded with
``torch.initial_seed()`` and the block number (:func:`initial_centres`), so a run starts from the
same global head at any ``W > 1`` without any rank drawing all ``C x D`` numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from facekd.errors import ConfigError

#: rows per seeded block of :func:`initial_centres` (a block of 512-d centres: 64 MiB)
INIT_BLOCK_ROWS = 1 << 15


@dataclass(frozen=True)
class ClassShard:
    """The block of class centres rank ``rank`` of ``world_size`` holds: rows ``start:stop`` of ``C``."""

    num_classes: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is not in a world of {self.world_size}")
        if self.sharded and self.num_classes < self.world_size:
            raise ConfigError(f"{self.num_classes} classes cannot be sharded over {self.world_size} ranks")

    @property
    def sharded(self) -> bool:
        """True when the centres are split over more than one rank."""
        return self.world_size > 1

    @property
    def start(self) -> int:
        """First class of the shard (arcface_torch's split: the first ``C % W`` ranks hold one more)."""
        base, extra = divmod(self.num_classes, self.world_size)
        return base * self.rank + min(self.rank, extra)

    @property
    def size(self) -> int:
        """Number of classes in the shard."""
        base, extra = divmod(self.num_classes, self.world_size)
        return base + int(self.rank < extra)

    @property
    def stop(self) -> int:
        """One past the last class of the shard."""
        return self.start + self.size

    def of_rank(self, rank: int) -> "ClassShard":
        """Rank ``rank``'s shard of the same classes and world."""
        return ClassShard(self.num_classes, rank, self.world_size)

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """The shard's rows of a tensor with one row per class."""
        if rows.shape[0] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} rows (one per class), got {rows.shape[0]}")
        return rows[self.start:self.stop]


def initial_centres(shard: ClassShard, embedding_size: int, std: float = 0.01) -> torch.Tensor:
    """The shard's rows of a ``C x D`` N(0, ``std``) matrix that does not depend on the world size.

    Block ``b`` (rows ``b * INIT_BLOCK_ROWS``...) is drawn from a generator seeded with
    ``(torch.initial_seed(), b)``; a rank draws only the blocks its shard overlaps.
    """
    out = torch.empty(shard.size, embedding_size)
    seed = torch.initial_seed()
    for block in range(shard.start // INIT_BLOCK_ROWS, math.ceil(shard.stop / INIT_BLOCK_ROWS)):
        first = block * INIT_BLOCK_ROWS
        rows = min(INIT_BLOCK_ROWS, shard.num_classes - first)
        generator = torch.Generator().manual_seed((seed * 1_000_003 + block) % (1 << 63))
        values = torch.empty(rows, embedding_size).normal_(0.0, std, generator=generator)
        lo, hi = max(first, shard.start), min(first + rows, shard.stop)
        out[lo - shard.start:hi - shard.start] = values[lo - first:hi - first]
    return out


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-sized row blocks; backward sums the gradients of every rank's copy."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, grad_scale: float) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        rows = rows.contiguous()
        parts = [torch.empty_like(rows) for _ in range(world)]
        dist.all_gather(parts, rows)
        ctx.span = (rank * rows.shape[0], (rank + 1) * rows.shape[0])
        ctx.grad_scale = grad_scale
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start, stop = ctx.span
        return grad[start:stop] * ctx.grad_scale, None


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward passes the gradient through unchanged.

    Every rank computes the same loss from the sum, so the loss's gradient with respect to a
    rank's own addend is its gradient with respect to the sum: no communication backwards.
    """

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor) -> torch.Tensor:
        value = value.clone()
        dist.all_reduce(value)
        return value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def gather_rows(rows: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
    """Every rank's ``rows`` (same shape on every rank) stacked in rank order, with gradient.

    Backward: the gradient of this rank's rows summed over every rank's copy, times ``grad_scale``.
    """
    return _GatherRows.apply(rows, float(grad_scale))


def gather_labels(labels: torch.Tensor) -> torch.Tensor:
    """Every rank's ``labels`` (same length on every rank) in rank order."""
    parts: List[torch.Tensor] = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


def sharded_cross_entropy(logits: torch.Tensor, column: torch.Tensor, has_target: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of a softmax whose columns are split over the ranks.

    Args:
        logits: ``N x k`` this rank's columns of the global batch's logits (float32).
        column: ``N`` int64, the column of each row's target where ``has_target``.
        has_target: ``N`` bool, the row's target class is among this rank's columns
            (on exactly one rank).
    """
    row_max = logits.detach().max(dim=1).values
    dist.all_reduce(row_max, op=dist.ReduceOp.MAX)      # a constant shift: no gradient needed
    sum_exp = _SumOverRanks.apply(torch.exp(logits - row_max[:, None]).sum(dim=1))
    target = logits.gather(1, column.view(-1, 1)).squeeze(1)
    target = _SumOverRanks.apply(torch.where(has_target, target, torch.zeros_like(target)))
    return (sum_exp.log() + row_max - target).mean()


def sharded_margin_loss(head: Any, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The global batch's margin-softmax loss of a sharded PartialFC ``head`` (steps 1-4 above).

    ``head`` is a :class:`~facekd.losses.partial_fc.PartialFCMixin` head: ``shard``,
    ``weight`` (the shard's centres), ``scale``, ``target_logit`` and ``sample_centres``;
    its ``last_index`` is set to the sampled centres (indices into the shard).
    """
    shard: ClassShard = head.shard
    world = dist.get_world_size()
    if world != shard.world_size:
        raise RuntimeError(f"{head.loss_name}: built for {shard.world_size} ranks, the process group has {world}")
    embedding = gather_rows(embedding, grad_scale=world)
    labels = gather_labels(labels.long())
    index = head.sample_centres(labels) if head.training else torch.arange(shard.size, device=labels.device)
    head.last_index = index.detach()
    local = labels - shard.start
    has_target = (local >= 0) & (local < shard.size)
    column = torch.searchsorted(index, local.clamp(0, shard.size - 1)).clamp_max(index.numel() - 1).view(-1, 1)
    cos = F.linear(F.normalize(embedding), F.normalize(head.weight[index])).float().clamp(-1.0, 1.0)
    cos_target = cos.gather(1, column)
    target = torch.where(has_target.view(-1, 1), head.target_logit(cos_target), cos_target)
    logits = head.scale * cos.scatter(1, column, target)
    return sharded_cross_entropy(logits, column.view(-1), has_target)
