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

Single process only.  Multi-GPU sharding (what ``partial_fc_v2`` adds on top) would keep
``C / world_size`` centres per rank, all-gather the embeddings and labels of the global
batch, sample within each rank's shard, and compute the softmax normaliser with an
all-reduce of the per-rank max and sum of exponentials, so no rank ever holds all centres
or the full ``N x C`` logits; the gradient of the embeddings is then all-reduced back.
Here the centres live on one device and DDP replicates them (fine up to a few 100k x 512).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, LossInputs
from facekd.losses.margin import ArcFace, CosFace


class PartialFCMixin:
    """Sampled-centre training for a :class:`~facekd.losses.margin.MarginHead` subclass.

    Put it before the head in the bases; the head supplies the class centres
    (``weight``), ``scale`` and the margin function ``target_logit``.

    Attributes:
        sample_rate: share of the class centres scored per step (``(0, 1]``).
        last_index: the sorted centre indices sampled by the latest training forward.
    """

    sample_rate: float = 1.0
    last_index: Optional[torch.Tensor] = None

    def _init_sampling(self, sample_rate: float) -> None:
        if not 0.0 < float(sample_rate) <= 1.0:
            raise ConfigError(f"{self.loss_name}: sample_rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)

    def num_sampled(self, batch_size: int) -> int:
        """Centres scored for a batch of ``batch_size``: ``max(ceil(rate * C), batch_size)``, at most ``C``."""
        return min(self.num_classes, max(int(math.ceil(self.sample_rate * self.num_classes)), int(batch_size)))

    def sample_centres(self, labels: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the centres to score: all of ``labels`` plus random others."""
        k = self.num_sampled(labels.numel())
        if k == self.num_classes:
            return torch.arange(self.num_classes, device=self.weight.device)
        scores = torch.rand(self.num_classes, device=self.weight.device)
        scores[labels.long().view(-1)] = 2.0          # positives always win the top-k
        return torch.topk(scores, k, sorted=False).indices.sort().values

    def sampled_logits(self, embedding: torch.Tensor, labels: torch.Tensor):
        """``(logits N x k, local labels N, index k)`` of the margin softmax over sampled centres."""
        index = self.sample_centres(labels)
        local = torch.searchsorted(index, labels.long())
        cos = F.linear(F.normalize(embedding), F.normalize(self.weight[index])).float().clamp(-1.0, 1.0)
        column = local.view(-1, 1)
        logits = self.scale * cos.scatter(1, column, self.target_logit(cos.gather(1, column)))
        return logits, local, index

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        """Cross entropy over the sampled centres (all centres in eval mode)."""
        if not self.training:
            return super().forward(inputs)
        logits, local, index = self.sampled_logits(inputs.student_embedding, inputs.labels)
        self.last_index = index.detach()
        return F.cross_entropy(logits, local)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sample_rate={self.sample_rate}"


@LOSSES.register("partial_fc")
class PartialFC(PartialFCMixin, ArcFace):
    """ArcFace over sampled class centres (PartialFC).

    Args:
        num_classes, embedding_size: from the training context.
        sample_rate: share of centres scored per step (arcface_torch uses 0.1-0.3 for 100k+ classes).
        scale, margin, easy_margin: as :class:`~facekd.losses.margin.ArcFace`.
    """

    loss_name = "partial_fc"

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 0.1, scale: float = 64.0,
                 margin: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__(num_classes, embedding_size, scale=scale, margin=margin, easy_margin=easy_margin)
        self._init_sampling(sample_rate)


@LOSSES.register("partial_fc_cosface")
class PartialFCCosFace(PartialFCMixin, CosFace):
    """CosFace over sampled class centres (PartialFC with the CosFace margin).

    Args:
        num_classes, embedding_size: from the training context.
        sample_rate: share of centres scored per step.
        scale, margin: as :class:`~facekd.losses.margin.CosFace`.
    """

    loss_name = "partial_fc_cosface"

    def __init__(self, num_classes: int, embedding_size: int, sample_rate: float = 0.1, scale: float = 64.0,
                 margin: float = 0.35) -> None:
        super().__init__(num_classes, embedding_size, scale=scale, margin=margin)
        self._init_sampling(sample_rate)
