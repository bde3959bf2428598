"""Neuron-selection distillation: regress only the teacher neurons that carry identity.

After Luo, Zhu, Liu and Tang, "Face Model Compression by Distilling Knowledge from Neurons"
(AAAI 2016).  The student regresses the teacher's top hidden layer (in facekd: the teacher
embedding), but only a selected subset of its neurons: the paper keeps the neurons that
discriminate face attributes and drops those that are noise (always inactive) or tied to
nuisance factors.  facekd has no attribute labels, so the selection uses what the training
data gives, each neuron's *identity* discriminability, measured by its Fisher ratio
(between-identity / within-identity variance, :func:`fisher_ratio`) over the teacher's
embeddings of the whole training set; near-constant neurons are dropped as noise first
(:func:`noise_neurons`).

* :func:`fisher_ratio`, :func:`noise_neurons` and :func:`select_neurons` work on any
  ``N x D`` feature matrix with identity labels;
* ``neuron_select_distill`` (:class:`NeuronSelectDistillLoss`) is the registered loss.  It
  sets ``needs_teacher_statistics = True``: the training task must call
  :meth:`~NeuronSelectDistillLoss.fit_selection` once, with the teacher's clean-view embeddings
  of every training sample and their labels, before the first step.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, Loss, LossInputs, check_choice
from facekd.losses.feature import EMBEDDING_METRICS, build_projector, projected_distance

#: rows per chunk when accumulating statistics (keeps float64 copies of large caches small)
CHUNK_ROWS = 65536

LabelsLike = Union[torch.Tensor, np.ndarray]


def _check_inputs(features: torch.Tensor, labels: LabelsLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """``features`` as a 2-d tensor and ``labels`` as contiguous int64 codes ``0..C-1``."""
    if features.dim() != 2:
        raise ValueError(f"features must be N x D, got shape {tuple(features.shape)}")
    labels = torch.as_tensor(labels).reshape(-1).to(features.device)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {labels.numel()} labels")
    _, codes = torch.unique(labels, return_inverse=True)
    return features, codes


def class_variances(features: torch.Tensor, labels: LabelsLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension between- and within-identity variances of ``features``.

    With class means ``mu_c`` (``n_c`` samples), the overall mean ``mu`` and ``N`` samples,
    for each dimension::

        between = sum_c n_c (mu_c - mu)^2 / N
        within  = sum_i (x_i - mu_{y_i})^2 / N

    (their sum is the dimension's total variance).  Computed in float64, in chunks of
    :data:`CHUNK_ROWS` rows, as two passes (means, then squared deviations from them).

    Args:
        features: ``N x D`` tensor (any float dtype, e.g. a float16 teacher cache).
        labels: ``N`` identity labels (any integer values; tensor or numpy array).

    Returns:
        ``(between, within)``, two float64 tensors of shape ``D``.

    Raises:
        ValueError: not ``N x D``, a label count that differs from ``N``, fewer than two
            identities, or non-finite features.
    """
    features, codes = _check_inputs(features, labels)
    num_classes = int(codes.max()) + 1 if codes.numel() else 0
    if num_classes < 2:
        raise ValueError(f"the Fisher ratio needs at least two identities, got {num_classes}")
    dims = features.shape[1]
    sums = torch.zeros(num_classes, dims, dtype=torch.float64, device=features.device)
    for start in range(0, features.shape[0], CHUNK_ROWS):
        chunk = features[start:start + CHUNK_ROWS].double()
        if not torch.isfinite(chunk).all():
            raise ValueError(f"features hold NaN or infinite values (rows {start}..{start + len(chunk) - 1})")
        sums.index_add_(0, codes[start:start + CHUNK_ROWS], chunk)
    counts = torch.bincount(codes, minlength=num_classes).double()
    class_means = sums / counts[:, None]
    mean = sums.sum(dim=0) / counts.sum()
    between = (counts[:, None] * (class_means - mean).pow(2)).sum(dim=0)
    within = torch.zeros(dims, dtype=torch.float64, device=features.device)
    for start in range(0, features.shape[0], CHUNK_ROWS):
        chunk = features[start:start + CHUNK_ROWS].double()
        within += (chunk - class_means[codes[start:start + CHUNK_ROWS]]).pow(2).sum(dim=0)
    total = counts.sum()
    return between / total, within / total


def _ratio(between: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """``between / within``; ``inf`` where only ``within`` is 0, ``0`` where both are."""
    ratio = between / within.clamp_min(torch.finfo(torch.float64).tiny)
    perfect = (within == 0) & (between > 0)
    return torch.where(perfect, torch.full_like(ratio, float("inf")), ratio)


def _noise(variance: torch.Tensor, min_variance: float) -> torch.Tensor:
    """Dimensions whose variance is at most ``min_variance`` times the mean variance."""
    scale = variance.mean()
    if scale <= 0:
        return torch.ones_like(variance, dtype=torch.bool)
    return variance <= min_variance * scale


def fisher_ratio(features: torch.Tensor, labels: LabelsLike) -> torch.Tensor:
    """Per-dimension Fisher ratio: between-identity variance / within-identity variance.

    ``ratio[d] = between[d] / within[d]`` with the variances of :func:`class_variances`.
    A dimension with no within-identity spread is ``inf`` when its class means differ
    (perfectly discriminative) and ``0`` when it is constant.  Used to rank neurons by how
    much identity they carry (Luo et al., AAAI 2016, select neurons by discriminability).

    Args:
        features: ``N x D`` features (e.g. the teacher's embeddings of the training set).
        labels: ``N`` identity labels.

    Returns:
        float64 tensor of shape ``D``.
    """
    return _ratio(*class_variances(features, labels))


def noise_neurons(features: torch.Tensor, min_variance: float = 1e-6) -> torch.Tensor:
    """Dimensions that are noise: (near-)constant, e.g. always inactive neurons.

    A dimension is noise when its variance over the ``N`` rows is at most
    ``min_variance`` times the mean variance of all dimensions (relative, so the test does
    not depend on the features' scale); when every dimension is constant all are noise.

    Args:
        features: ``N x D``.
        min_variance: relative variance threshold (``0`` keeps everything but exact constants).

    Returns:
        bool tensor of shape ``D`` (True = noise).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be N x D, got shape {tuple(features.shape)}")
    sums = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
    for start in range(0, features.shape[0], CHUNK_ROWS):
        sums += features[start:start + CHUNK_ROWS].double().sum(dim=0)
    mean = sums / max(features.shape[0], 1)
    squares = torch.zeros_like(sums)
    for start in range(0, features.shape[0], CHUNK_ROWS):
        squares += (features[start:start + CHUNK_ROWS].double() - mean).pow(2).sum(dim=0)
    return _noise(squares / max(features.shape[0], 1), min_variance)


def select_neurons(features: torch.Tensor, labels: LabelsLike, k: int,
                   min_variance: float = 1e-6) -> torch.Tensor:
    """The ``k`` most identity-discriminative dimensions of ``features``.

    Noise dimensions (:func:`noise_neurons`) are never selected; the others are ranked by
    :func:`fisher_ratio`.

    Args:
        features: ``N x D`` (the teacher's embeddings of the training set).
        labels: ``N`` identity labels.
        k: how many dimensions to keep, ``1 <= k <= D``.
        min_variance: relative noise threshold of :func:`noise_neurons`.

    Returns:
        int64 tensor of ``k`` dimension indices, most discriminative first (ties keep the
        lower index first).

    Raises:
        ValueError: ``k`` out of range, or fewer than ``k`` dimensions that are not noise.
    """
    dims = features.shape[-1]
    if not 1 <= k <= dims:
        raise ValueError(f"cannot select {k} of {dims} neurons; need 1 <= k <= {dims}")
    between, within = class_variances(features, labels)
    ratio, noise = _ratio(between, within), _noise(between + within, min_variance)
    usable = int((~noise).sum())
    if usable < k:
        raise ValueError(f"only {usable} of {dims} neurons are not noise (near-constant); "
                         f"cannot select {k}")
    ratio = ratio.masked_fill(noise, float("-inf"))
    order = torch.sort(ratio, descending=True, stable=True).indices
    return order[:k].to(torch.long)


@LOSSES.register("neuron_select_distill")
class NeuronSelectDistillLoss(Loss):
    """Distil the teacher's identity-carrying neurons (Luo et al., AAAI 2016).

    Before training, :meth:`fit_selection` picks ``k`` neurons of the teacher embedding
    (:func:`select_neurons`: noise dropped, highest Fisher ratio between/within identities
    on the training set) and stores their indices in the ``selected`` buffer, so they are
    saved with the loss state in checkpoints and restored on resume.

    Each step, the student embedding goes through a learnable bias-free linear projection
    to ``k`` dimensions (when its size is not already ``k``; as in ``feature_distill`` the
    projection belongs to the loss and is trained with it), the teacher embedding is reduced
    to the selected neurons, both vectors are L2-normalised (the teacher's without gradient)
    and the loss is the batch mean of the metric:

    * ``cosine``: ``1 - cos(P s, t_sel)`` (in ``[0, 2]``);
    * ``l2``: ``||P s/|P s| - t_sel/|t_sel|||^2`` (in ``[0, 4]``, twice the cosine loss).

    Args:
        embedding_size: student embedding size ``D`` (context).
        teacher_embedding_size: teacher embedding size ``Dt`` (context).
        num_neurons: how many teacher neurons to keep, ``1..Dt``.
        keep_ratio: alternatively, the kept fraction of ``Dt`` (``k = round(keep_ratio * Dt)``);
            give at most one of the two; neither means ``keep_ratio = 0.5``.
        metric: ``cosine`` (default) or ``l2``.
        min_variance: relative variance below which a neuron is noise (:func:`noise_neurons`).

    Attributes:
        needs_teacher_statistics: True — call :meth:`fit_selection` before training.
        num_neurons: ``k``.
        selected: ``k`` int64 buffer of teacher neuron indices (``-1`` until fitted).
    """

    loss_name = "neuron_select_distill"
    reads = frozenset({"student_embedding", "teacher_embedding"})
    #: the task must call :meth:`fit_selection` with the teacher's training-set embeddings
    needs_teacher_statistics = True

    def __init__(self, embedding_size: Optional[int] = None, teacher_embedding_size: Optional[int] = None,
                 num_neurons: Optional[int] = None, keep_ratio: Optional[float] = None,
                 metric: str = "cosine", min_variance: float = 1e-6) -> None:
        super().__init__()
        self.distance = check_choice(EMBEDDING_METRICS, metric)
        self.metric = metric
        if not teacher_embedding_size:
            raise ConfigError("neuron_select_distill: the teacher embedding size is unknown "
                              "(the loss needs a teacher)")
        if num_neurons is not None and keep_ratio is not None:
            raise ConfigError("neuron_select_distill: give num_neurons or keep_ratio, not both")
        if num_neurons is None:
            ratio = 0.5 if keep_ratio is None else float(keep_ratio)
            if not 0.0 < ratio <= 1.0:
                raise ConfigError(f"neuron_select_distill: keep_ratio must be in (0, 1], got {keep_ratio}")
            num_neurons = max(1, round(ratio * teacher_embedding_size))
        if not 1 <= int(num_neurons) <= teacher_embedding_size:
            raise ConfigError(f"neuron_select_distill: num_neurons must be in 1..{teacher_embedding_size} "
                              f"(the teacher embedding size), got {num_neurons}")
        if min_variance < 0:
            raise ConfigError(f"neuron_select_distill: min_variance must be >= 0, got {min_variance}")
        self.num_neurons = int(num_neurons)
        self.teacher_embedding_size = int(teacher_embedding_size)
        self.min_variance = float(min_variance)
        self.projection = build_projector(self.loss_name, "auto", embedding_size, self.num_neurons)
        self.register_buffer("selected", torch.full((self.num_neurons,), -1, dtype=torch.long))
        self._fitted = False
        self.register_load_state_dict_post_hook(NeuronSelectDistillLoss._after_load)

    @staticmethod
    def _after_load(module: "NeuronSelectDistillLoss", incompatible_keys) -> None:
        module._fitted = bool((module.selected >= 0).all())

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit_selection` ran (or a fitted state dict was loaded)."""
        return self._fitted

    @torch.no_grad()
    def fit_selection(self, teacher_embeddings: torch.Tensor, labels: LabelsLike) -> torch.Tensor:
        """Select the neurons from the teacher's embeddings of the whole training set.

        Args:
            teacher_embeddings: ``N x Dt`` raw teacher embeddings of the clean view of every
                training sample (e.g. ``TeacherCache.embeddings[:, 0]``; any float dtype).
            labels: ``N`` identity labels of those samples (e.g. ``dataset.labels``).

        Returns:
            The selected indices (also stored in :attr:`selected`).

        Raises:
            ValueError: the embedding size is not ``Dt``, or see :func:`select_neurons`.
        """
        if teacher_embeddings.dim() != 2 or teacher_embeddings.shape[1] != self.teacher_embedding_size:
            raise ValueError(f"neuron_select_distill: teacher embeddings must be N x "
                             f"{self.teacher_embedding_size}, got {tuple(teacher_embeddings.shape)}")
        indices = select_neurons(teacher_embeddings, labels, self.num_neurons, self.min_variance)
        self.selected.copy_(indices.to(self.selected.device))
        self._fitted = True
        return self.selected.clone()

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        if not self._fitted:
            raise RuntimeError("neuron_select_distill: no neurons selected yet; call "
                               "fit_selection(teacher_embeddings, labels) with the teacher's embeddings "
                               "of the training set before training")
        teacher = self.require(inputs, "teacher_embedding").detach().float()
        if teacher.shape[1] != self.teacher_embedding_size:
            raise ValueError(f"neuron_select_distill: teacher embeddings {tuple(teacher.shape)}, expected "
                             f"{self.teacher_embedding_size} columns")
        teacher = teacher.index_select(1, self.selected)
        return projected_distance("neuron_select_distill", inputs.student_embedding, teacher, self.projection,
                                  self.distance, "embedding_size")

    def extra_repr(self) -> str:
        return (f"num_neurons={self.num_neurons}, teacher_embedding_size={self.teacher_embedding_size}, "
                f"metric={self.metric!r}, projection={self.projection is not None}, fitted={self._fitted}")
