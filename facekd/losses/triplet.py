"""Triplet losses on P x K batches: the plain triplet loss and Triplet Distillation.

Distances are Euclidean distances between L2-normalised embeddings (in ``[0, 2]``).  Every
anchor ``a`` with a positive ``p`` (same label, ``p != a``) and a negative ``n`` (other label)
in the batch forms a valid triplet; a *mining* strategy picks which of them are used:

``semihard``
    FaceNet (Schroff et al., "FaceNet: A Unified Embedding for Face Recognition and
    Clustering", CVPR 2015): for every anchor-positive pair, the closest negative inside the
    semi-hard band ``S(a,p) < S(a,n) < S(a,p) + margin``; when the band is empty, the
    hardest (closest) negative of the anchor.
``hard``
    Batch-hard (Hermans et al., "In Defense of the Triplet Loss for Person
    Re-Identification", 2017): one triplet per anchor, its farthest positive and closest
    negative.
``all``
    Batch-all (Hermans et al.): every valid triplet; the loss averages over the triplets
    with a positive loss only.

The selection uses the student distances without gradient.  Batches without any valid
triplet (e.g. one image per identity) give a zero loss that is still part of the graph.

Triplet Distillation (Feng et al., "Triplet Distillation for Deep Face Recognition",
arXiv:1905.04457, 2019) replaces the fixed margin with one that grows with how far apart the
*teacher* places the triplet: ``d = max(T(a,n) - T(a,p), 0)`` and
``F(d) = (m_max - m_min) / d_max * d + m_min`` (:func:`adaptive_margin`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, Loss, LossInputs, check_choice, zero_loss
from facekd.registry import Registry

#: ``margin_of(a, p, n)`` -> margins, for broadcastable index tensors ``a``, ``p``, ``n``
MarginFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pairwise_distance(embedding: torch.Tensor) -> torch.Tensor:
    """``N x N`` Euclidean distances between the L2-normalised rows of ``embedding`` (float32).

    Computed as ``sqrt(2 - 2 cos)``; the diagonal is ~1e-6 rather than exactly 0, which keeps
    the square root's gradient finite.
    """
    x = F.normalize(embedding.float())
    return (2.0 - 2.0 * x @ x.t()).clamp_min(1e-12).sqrt()


def adaptive_margin(d: torch.Tensor, m_min: float = 0.2, m_max: float = 0.5,
                    d_max: Union[None, float, torch.Tensor] = None) -> torch.Tensor:
    """Triplet Distillation's margin ``F(d) = (m_max - m_min) / d_max * d + m_min`` (Feng et al.).

    Args:
        d: teacher distance differences ``max(T(a,n) - T(a,p), 0)`` (any shape).
        m_min, m_max: the margin at ``d = 0`` and at ``d = d_max``.
        d_max: the difference that earns the full ``m_max``; None uses ``d.max()``.  Larger
            ``d`` are clipped to ``d_max`` so the margin never leaves ``[m_min, m_max]``; a
            ``d_max`` of 0 (all differences zero) gives ``m_min`` everywhere.

    Returns:
        margins, shaped like ``d``.
    """
    d = d.clamp_min(0.0)
    if d_max is None:
        d_max = d.max() if d.numel() else d.new_zeros(())
    d_max = torch.as_tensor(d_max, dtype=d.dtype, device=d.device)
    slope = torch.where(d_max > 0, (m_max - m_min) / d_max.clamp_min(1e-12), torch.zeros_like(d_max))
    return m_min + slope * torch.minimum(d, d_max)


# ----------------------------------------------------------------------------- mining

@dataclass
class Triplets:
    """Index tensors (int64, same length) of the selected anchors, positives and negatives."""
    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __len__(self) -> int:
        return int(self.anchor.numel())


@dataclass
class Miner:
    """A mining strategy: ``select(dist, labels, margin_of) -> Triplets``.

    ``average_active`` makes the loss average over triplets with a positive loss only
    (batch-all) instead of over every selected triplet.
    """
    select: Callable[[torch.Tensor, torch.Tensor, MarginFn], Triplets]
    average_active: bool = False


#: mining strategy name -> :class:`Miner`
MINERS = Registry("triplet mining")


def _label_masks(labels: torch.Tensor):
    """``(positive, negative)`` N x N masks: same label without the diagonal / other label."""
    same = labels.view(-1, 1) == labels.view(1, -1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _candidates(dist: torch.Tensor, labels: torch.Tensor):
    """Anchor-positive pairs ``(a, p)`` (length M) and the ``M x N`` mask of their negatives."""
    positive, negative = _label_masks(labels)
    a, p = positive.nonzero(as_tuple=True)
    return a, p, negative[a]


def _select_semihard(dist: torch.Tensor, labels: torch.Tensor, margin_of: MarginFn) -> Triplets:
    a, p, negative = _candidates(dist, labels)
    n_all = torch.arange(len(labels), device=dist.device).view(1, -1)
    d_ap = dist[a, p].view(-1, 1)
    d_an = dist[a]
    band = negative & (d_an > d_ap) & (d_an < d_ap + margin_of(a.view(-1, 1), p.view(-1, 1), n_all))
    inf = torch.full_like(d_an, float("inf"))
    semihard = torch.where(band, d_an, inf).argmin(dim=1)
    hardest = torch.where(negative, d_an, inf).argmin(dim=1)
    n = torch.where(band.any(dim=1), semihard, hardest)
    keep = negative.any(dim=1)
    return Triplets(a[keep], p[keep], n[keep])


def _select_hard(dist: torch.Tensor, labels: torch.Tensor, margin_of: MarginFn) -> Triplets:
    positive, negative = _label_masks(labels)
    p = torch.where(positive, dist, torch.full_like(dist, -float("inf"))).argmax(dim=1)
    n = torch.where(negative, dist, torch.full_like(dist, float("inf"))).argmin(dim=1)
    keep = positive.any(dim=1) & negative.any(dim=1)
    a = torch.arange(len(labels), device=dist.device)
    return Triplets(a[keep], p[keep], n[keep])


def _select_all(dist: torch.Tensor, labels: torch.Tensor, margin_of: MarginFn) -> Triplets:
    a, p, negative = _candidates(dist, labels)
    row, n = negative.nonzero(as_tuple=True)
    return Triplets(a[row], p[row], n)


MINERS.register("semihard")(Miner(_select_semihard))
MINERS.register("hard")(Miner(_select_hard))
MINERS.register("all")(Miner(_select_all, average_active=True))


def mine_triplets(embedding: torch.Tensor, labels: torch.Tensor, mining: str = "semihard",
                  margin: Union[float, MarginFn] = 0.3) -> Triplets:
    """Select triplets from a batch by ``mining`` (``semihard``, ``hard`` or ``all``).

    Args:
        embedding: ``N x D`` raw embeddings (normalised here; no gradient is used).
        labels: ``N`` identity labels.
        margin: the margin of the semi-hard band: a number, or ``margin_of(a, p, n)``
            returning per-triplet margins for broadcastable index tensors.
    """
    with torch.no_grad():
        dist = pairwise_distance(embedding)
    return check_choice(MINERS, mining).select(dist, labels.view(-1), _as_margin_fn(margin))


def _as_margin_fn(margin: Union[float, MarginFn]) -> MarginFn:
    if callable(margin):
        return margin
    return lambda a, p, n: torch.tensor(float(margin), device=a.device)


# ----------------------------------------------------------------------------- losses

class _TripletLoss(Loss):
    """Mining + ``relu(S(a,p) - S(a,n) + margin)`` averaged; subclasses supply the margins."""

    reads = frozenset({"student_embedding", "labels"})

    def __init__(self, mining: str) -> None:
        super().__init__()
        self.miner = check_choice(MINERS, mining)
        self.mining = mining

    def margin_fn(self, inputs: LossInputs) -> MarginFn:
        """``margin_of(a, p, n)`` for this batch."""
        raise NotImplementedError

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        embedding, labels = inputs.student_embedding, inputs.labels.view(-1)
        margin_of = self.margin_fn(inputs)
        dist = pairwise_distance(embedding)
        t = self.miner.select(dist.detach(), labels, margin_of)
        if len(t) == 0:
            return zero_loss(embedding)
        losses = F.relu(dist[t.anchor, t.positive] - dist[t.anchor, t.negative]
                        + margin_of(t.anchor, t.positive, t.negative))
        if self.miner.average_active:
            return losses.sum() / (losses > 0).sum().clamp_min(1)
        return losses.mean()

    def extra_repr(self) -> str:
        return f"mining={self.mining!r}"


@LOSSES.register("triplet")
class TripletLoss(_TripletLoss):
    """Plain triplet loss with a fixed margin (Schroff et al., FaceNet, CVPR 2015).

    ``mean over mined triplets of relu(S(a,p) - S(a,n) + margin)`` with ``S`` the distance
    between the L2-normalised student embeddings.  The baseline of Triplet Distillation.

    Args:
        margin: the fixed margin (default 0.3, between Triplet Distillation's 0.2 and 0.5).
        mining: ``semihard`` (default), ``hard`` or ``all`` (see the module docstring).
    """

    loss_name = "triplet"

    def __init__(self, margin: float = 0.3, mining: str = "semihard") -> None:
        super().__init__(mining)
        if margin < 0:
            raise ConfigError(f"triplet: margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def margin_fn(self, inputs: LossInputs) -> MarginFn:
        return _as_margin_fn(self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, {super().extra_repr()}"


@LOSSES.register("triplet_distill")
class TripletDistillLoss(_TripletLoss):
    """Triplet Distillation (Feng et al., "Triplet Distillation for Deep Face Recognition", 2019).

    For a triplet ``(a, p, n)`` the teacher's distance difference
    ``d = max(T(a,n) - T(a,p), 0)`` (``T``: distances between the normalised teacher
    embeddings of the clean images) sets the margin ``F(d)`` (:func:`adaptive_margin`): the
    student has to separate the triplet by more where the teacher separates it clearly, and
    by only ``m_min`` where the teacher finds it ambiguous.  The loss is the mean over mined
    triplets of ``relu(S(a,p) - S(a,n) + F(d))`` on student distances ``S``.  The semi-hard
    band uses the per-triplet margin ``F(d)``.

    Args:
        m_min, m_max: margin range (defaults 0.2 and 0.5).
        d_max: ``d`` that earns ``m_max``; None (default) uses the largest ``d`` over all
            valid triplets of the batch.
        mining: ``semihard`` (default), ``hard`` or ``all``.
    """

    loss_name = "triplet_distill"
    reads = frozenset({"student_embedding", "labels", "teacher_embedding"})

    def __init__(self, m_min: float = 0.2, m_max: float = 0.5, d_max: Optional[float] = None,
                 mining: str = "semihard") -> None:
        super().__init__(mining)
        if not 0 <= m_min <= m_max:
            raise ConfigError(f"triplet_distill: need 0 <= m_min <= m_max, got {m_min}, {m_max}")
        if d_max is not None and d_max <= 0:
            raise ConfigError(f"triplet_distill: d_max must be positive or null, got {d_max}")
        self.m_min, self.m_max, self.d_max = float(m_min), float(m_max), d_max

    def margin_fn(self, inputs: LossInputs) -> MarginFn:
        teacher = self.require(inputs, "teacher_embedding")
        if len(teacher) != len(inputs.student_embedding):
            raise ValueError(f"triplet_distill: {len(teacher)} teacher embeddings for "
                             f"{len(inputs.student_embedding)} student embeddings")
        with torch.no_grad():
            dist_t = pairwise_distance(teacher)

        def gap(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return (dist_t[a, n] - dist_t[a, p]).clamp_min(0.0)

        d_max = self.d_max
        if d_max is None:
            a, p, negative = _candidates(dist_t, inputs.labels.view(-1))
            n_all = torch.arange(len(dist_t), device=dist_t.device).view(1, -1)
            d = gap(a.view(-1, 1), p.view(-1, 1), n_all)
            d_max = torch.where(negative, d, torch.zeros_like(d)).max() if d.numel() else 0.0

        return lambda a, p, n: adaptive_margin(gap(a, p, n), self.m_min, self.m_max, d_max)

    def extra_repr(self) -> str:
        return f"m_min={self.m_min}, m_max={self.m_max}, d_max={self.d_max}, {super().extra_repr()}"
