"""PartialFC: margin-softmax over a sampled subset of the class centres (arcface_torch's
``partial_fc_v2`` idea; An et al., "Partial FC: Training 10 Million Identities on a Single
Machine", ICCVW 2021).

With 100k+ identities (Glint360K: 360k, WebFace42M: 2M) the full ``N x C`` logit matrix and
its softmax dominate a teacher step.  PartialFC scores each batch against ``k`` class centres
only: every positive class of the batch plus random negatives, ``k = max(ceil(sample_rate *
C), batch size)`` (capped at ``C``).  Only those ``k`` centres get a gradient; the rest are
untouched by the loss this step.

* ``partial_fc`` uses the ArcFace margin and ``partial_fc_cosface`` the CosFace margin; the
  margin function is the one of :class:`~facekd.losses.margin.ArcFace` /
  :class:`~facekd.losses.margin.CosFace` (inherited, not re-implemented), so with
  ``sample_rate=1.0`` the loss *is* the full head's loss.
* The heads are :class:`~facekd.losses.margin.MarginHead` subclasses: their class centres
  are saved with a teacher checkpoint, and :meth:`logits` with ``labels=None`` still gives
  the margin-free logits over *all* classes (Hinton KD, verification of the head).
* Sampling uses the global torch generator (restored on ``--resume``) and needs no host
  sync: ``k`` depends on the batch shape only, positives are forced in by giving them a
  score of 2 before a top-k of uniform random scores (arcface_torch draws ``unique(labels)``
  first, which syncs and changes ``k`` from batch to batch).

* Model parallel: built with ``world_size > 1`` (the training task passes its ``rank`` and
  ``world_size``), a head holds only its :class:`~facekd.losses.partial_fc_sharded.ClassShard`
  of about ``C / W`` centres and computes the loss of the global batch across the ranks
  (:mod:`facekd.losses.partial_fc_sharded`); the trainer keeps it outside DDP and saves the
  whole head (:mod:`facekd.training.sharding`).  Loading a whole head (any checkpoint) into a
  sharded one keeps the shard's rows, so a run resumes at another world size.  With
  ``world_size = 1`` nothing changes.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, LossInputs
from facekd.losses.margin import ArcFace, CosFace
from facekd.losses.partial_fc_sharded import ClassShard, initial_centres, sharded_margin_loss


class PartialFCMixin:
    """Sampled-centre training for a :class:`~facekd.losses.margin.MarginHead` subclass.

    Put it before the head in the bases; the head supplies the class centres
    (``weight``), ``scale`` and the margin function ``target_logit``.

    Attributes:
        sample_rate: share of the class centres scored per step (``(0, 1]``).
        shard: the centres this process holds (all of them unless sharded).
        last_index: the sorted centre indices (into the shard) sampled by the latest training forward.
    """

    sample_rate: float = 1.0
    last_index: Optional[torch.Tensor] = None

    def _init_sampling(self, sample_rate: float) -> None:
        if not 0.0 < float(sample_rate) <= 1.0:
            raise ConfigError(f"{self.loss_name}: sample_rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)

    def initial_centres(self) -> torch.Tensor:
        """The head's initial centres (only the shard's rows when sharded)."""
        if self.shard.sharded:
            return initial_centres(self.shard, self.embedding_size)
        return super().initial_centres()

    def sharded_parameters(self) -> Dict[str, ClassShard]:
        """``{"weight": shard}`` when the centres are split over ranks, else ``{}``."""
        return {"weight": self.shard} if self.shard.sharded else {}

    def num_sampled(self, batch_size: int) -> int:
        """Centres of the shard scored for a (global) batch of ``batch_size``:
        ``max(ceil(rate * shard size), batch_size)``, at most the shard size."""
        size = self.shard.size
        return min(size, max(int(math.ceil(self.sample_rate * size)), int(batch_size)))

    def sample_centres(self, labels: torch.Tensor) -> torch.Tensor:
        """Sorted indices (into the shard) of the centres to score: every label the shard
        holds plus random others."""
        shard = self.shard
        k = self.num_sampled(labels.numel())
        # sharded: every rank draws the scores (one per class, alike on every rank) unless all take everything
        if k == shard.size and (not shard.sharded or self.sample_rate == 1.0):
            return torch.arange(shard.size, device=self.weight.device)
        scores = torch.rand(self.num_classes, device=self.weight.device)
        scores[labels.long().view(-1)] = 2.0          # positives always win the top-k
        return torch.topk(scores[shard.start:shard.stop], k, sorted=False).indices.sort().values

    def sampled_logits(self, embedding: torch.Tensor, labels: torch.Tensor):
        """``(logits N x k, local labels N, index k)`` of the margin softmax over sampled centres."""
        index = self.sample_centres(labels)
        local = torch.searchsorted(index, labels.long())
        cos = F.linear(F.normalize(embedding), F.normalize(self.weight[index])).float().clamp(-1.0, 1.0)
        column = local.view(-1, 1)
        logits = self.scale * cos.scatter(1, column, self.target_logit(cos.gather(1, column)))
        return logits, local, index

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        """Cross entropy over the sampled centres (all centres in eval mode); sharded: the
        global batch's loss, the same on every rank."""
        if self.shard.sharded:
            return sharded_margin_loss(self, inputs.student_embedding, inputs.labels)
        if not self.training:
            return super().forward(inputs)
        logits, local, index = self.sampled_logits(inputs.student_embedding, inputs.labels)
        self.last_index = index.detach()
        return F.cross_entropy(logits, local)

    def cosine(self, embedding: torch.Tensor) -> torch.Tensor:
        """``N x C`` cosines to all centres (not available when the centres are sharded)."""
        if self.shard.sharded:
            raise ConfigError(f"{self.loss_name}: the class centres are sharded over {self.shard.world_size} "
                              f"ranks; logits over all classes (hinton_kd) need an unsharded head")
        return super().cosine(embedding)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a whole head (any checkpoint, whatever its world size) loads into a shard as its rows
        weight = state_dict.get(prefix + "weight")
        if self.shard.sharded and weight is not None and weight.shape[0] == self.num_classes:
            state_dict[prefix + "weight"] = self.shard.take(weight)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        shard = f", shard={self.shard.start}:{self.shard.stop}" if self.shard.sharded else ""
        return f"{super().extra_repr()}, sample_rate={self.sample_rate}{shard}"


@LOSSES.register("partial_fc")
class PartialFC(PartialFCMixin, ArcFace):
    """ArcFace over sampled class centres (PartialFC).

    Args:
        num_classes, embedding_size, rank, world_size: from the training context.
        sample_rate: share of centres scored per step (arcface_torch uses 0.1-0.3 for 100k+ classes).
        scale, margin, easy_margin: as :class:`~facekd.losses.margin.ArcFace`.
    """

    loss_name = "partial_fc"

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 0.1, scale: float = 64.0,
                 margin: float = 0.5, easy_margin: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.shard = ClassShard(int(num_classes), rank, world_size)     # before the centres are made
        super().__init__(num_classes, embedding_size, scale=scale, margin=margin, easy_margin=easy_margin)
        self._init_sampling(sample_rate)


@LOSSES.register("partial_fc_cosface")
class PartialFCCosFace(PartialFCMixin, CosFace):
    """CosFace over sampled class centres (PartialFC with the CosFace margin).

    Args:
        num_classes, embedding_size, rank, world_size: from the training context.
        sample_rate: share of centres scored per step.
        scale, margin: as :class:`~facekd.losses.margin.CosFace`.
    """

    loss_name = "partial_fc_cosface"

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 0.1, scale: float = 64.0,
                 margin: float = 0.35, rank: int = 0, world_size: int = 1) -> None:
        self.shard = ClassShard(int(num_classes), rank, world_size)     # before the centres are made
        super().__init__(num_classes, embedding_size, scale=scale, margin=margin)
        self._init_sampling(sample_rate)
