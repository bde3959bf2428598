"""High-resolution -> low-resolution feature distillation.

The student sees a degraded (low-resolution) view of a face, the frozen teacher the clean
one; these losses pull the student's representation of the degraded face towards the
teacher's representation of the clean face, as in cross-resolution distillation (e.g. Ge et
al., "Low-Resolution Face Recognition in the Wild via Selective Knowledge Distillation",
IEEE TIP 2019; Massoli et al., "Cross-resolution learning for face recognition", IVC 2020).

* ``feature_distill`` matches the final embeddings.
* ``feature_map_distill`` matches an intermediate feature map through a 1x1 conv adapter
  (the "hint" regressor of Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from facekd.errors import ConfigError
from facekd.losses.base import LOSSES, Loss, LossInputs, check_choice
from facekd.registry import Registry

#: metric name -> ``f(student, teacher) -> N`` per-sample distance of L2-normalised rows
EMBEDDING_METRICS = Registry("embedding metric")


@EMBEDDING_METRICS.register("cosine")
def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between rows (inputs already normalised)."""
    return 1.0 - (student * teacher).sum(dim=1)


@EMBEDDING_METRICS.register("l2")
def squared_l2_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between rows (inputs already normalised; ``= 2 - 2 cos``)."""
    return (student - teacher).pow(2).sum(dim=1)


#: name -> ``cls(in_features, out_features)``: a head that maps the student embedding into the teacher's
#: space inside an embedding-distillation loss (it belongs to the loss: trained with it, not exported)
PROJECTORS = Registry("projector")


@PROJECTORS.register("linear")
class LinearProjector(nn.Linear):
    """A bias-free linear map ``D -> Dt`` (what ``feature_distill`` has always added when the sizes differ)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)


@PROJECTORS.register("mlp")
class MLPProjector(nn.Sequential):
    """``Linear(D, H) -> BatchNorm -> ReLU -> Linear(H, Dt)``, ``H = 2 max(D, Dt)``: the prediction head of
    SimReg (Navaneet et al., BMVC 2022) / SimKD's projector, which takes the burden of matching the
    teacher's exact coordinates off the student's embedding (kept for verification; the head is dropped)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        hidden = 2 * max(in_features, out_features)
        super().__init__(nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features, bias=False))


def build_projector(loss_name: str, projector: str, embedding_size: Optional[int],
                    teacher_embedding_size: Optional[int]) -> Optional[nn.Module]:
    """The projector of an embedding-distillation loss: ``auto`` (a linear map when the sizes differ,
    else none), ``none`` or a :data:`PROJECTORS` name (which needs both sizes)."""
    if projector == "none":
        return None
    if projector == "auto":
        differ = embedding_size and teacher_embedding_size and embedding_size != teacher_embedding_size
        return LinearProjector(embedding_size, teacher_embedding_size) if differ else None
    if projector not in PROJECTORS:
        raise ConfigError(f"{loss_name}: projector must be auto, none or one of {', '.join(PROJECTORS)}, "
                          f"got {projector!r}")
    factory = PROJECTORS.get(projector)
    if not (embedding_size and teacher_embedding_size):
        raise ConfigError(f"{loss_name}: projector {projector!r} needs the student's and the teacher's embedding sizes")
    return factory(embedding_size, teacher_embedding_size)


def projected_distance(loss_name: str, student: torch.Tensor, teacher: torch.Tensor,
                       projection: Optional[nn.Module], distance, sizes_hint: str) -> torch.Tensor:
    """Mean ``distance`` between the L2-normalised (projected) student and teacher embeddings.

    ``projection`` (or None) maps the student to the teacher's size; a shape mismatch left
    after it raises a ``ValueError`` naming ``loss_name`` and the sizes to build it with.
    """
    if projection is not None:
        student = projection(student)
    if student.shape != teacher.shape:
        raise ValueError(f"{loss_name}: student embeddings {tuple(student.shape)} vs teacher "
                         f"{tuple(teacher.shape)}; build the loss with {sizes_hint} so it adds a projection")
    return distance(F.normalize(student.float()), F.normalize(teacher)).mean()


@LOSSES.register("feature_distill")
class FeatureDistillLoss(Loss):
    """Embedding distillation: student(degraded face) vs teacher(clean face).

    Both embeddings are L2-normalised, the teacher's without gradient, and the loss is the
    batch mean of the metric:

    * ``cosine``: ``1 - cos(s, t)`` (in ``[0, 2]``);
    * ``l2``: ``||s/|s| - t/|t|||^2`` (in ``[0, 4]``, twice the cosine loss).

    A projector (:data:`PROJECTORS`) may map the student embedding into the teacher's space
    first: by default (``auto``) a learnable bias-free linear map when the embedding sizes
    differ; ``mlp`` a SimReg-style head whatever the sizes.  It belongs to the loss, so it is
    saved with the loss state and must be given to the optimiser along with the other loss
    parameters; verification uses the student embedding before it.

    Args:
        embedding_size: student embedding size ``D`` (context).
        teacher_embedding_size: teacher embedding size ``Dt`` (context).
        metric: ``cosine`` (default) or ``l2``.
        projector: ``auto`` (default), ``none``, ``linear`` or ``mlp``.
    """

    loss_name = "feature_distill"
    reads = frozenset({"student_embedding", "teacher_embedding"})

    def __init__(self, embedding_size: Optional[int] = None, teacher_embedding_size: Optional[int] = None,
                 metric: str = "cosine", projector: str = "auto") -> None:
        super().__init__()
        self.distance = check_choice(EMBEDDING_METRICS, metric)
        self.metric = metric
        self.projector = projector
        self.projection = build_projector(self.loss_name, projector, embedding_size, teacher_embedding_size)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        student = inputs.student_embedding
        teacher = self.require(inputs, "teacher_embedding").detach().float()
        return projected_distance("feature_distill", student, teacher, self.projection, self.distance,
                                  "embedding_size and teacher_embedding_size")

    def extra_repr(self) -> str:
        return f"metric={self.metric!r}, projector={self.projector!r}, projection={self.projection is not None}"


def resize_to(feature_map: torch.Tensor, size) -> torch.Tensor:
    """Spatially resize an ``N x C x H x W`` map: adaptive average pooling when shrinking,
    bilinear interpolation when growing (or mixed), unchanged when already ``size``."""
    size = tuple(size)
    current = tuple(feature_map.shape[-2:])
    if current == size:
        return feature_map
    if current[0] >= size[0] and current[1] >= size[1]:
        return F.adaptive_avg_pool2d(feature_map, size)
    return F.interpolate(feature_map, size=size, mode="bilinear", align_corners=False)


@LOSSES.register("feature_map_distill")
class FeatureMapDistillLoss(Loss):
    """Intermediate feature-map distillation through a 1x1 conv adapter (FitNets-style hint).

    The student map (``N x Cs x Hs x Ws``) goes through a bias-free 1x1 convolution to the
    teacher's ``Ct`` channels and is resized to the teacher map's ``Ht x Wt`` (:func:`resize_to`).
    With ``normalize=True`` (default) each spatial position's channel vector of both maps is
    L2-normalised, so the loss compares feature directions and is insensitive to the two
    networks' activation scales.  The loss is the mean squared error over all elements
    (teacher without gradient).

    Args:
        student_channels: ``Cs`` (context; the student model's ``feature_channels``).
        teacher_channels: ``Ct`` (context; the teacher model's ``feature_channels``).
        normalize: channel-wise L2 normalisation before the MSE.
    """

    loss_name = "feature_map_distill"
    reads = frozenset({"student_feature_map", "teacher_feature_map"})

    def __init__(self, student_channels: Optional[int], teacher_channels: Optional[int],
                 normalize: bool = True) -> None:
        super().__init__()
        if student_channels is None or teacher_channels is None:
            raise ConfigError("feature_map_distill: the student and teacher models must both expose "
                              "feature_channels (a forward_features map)")
        if student_channels < 1 or teacher_channels < 1:
            raise ConfigError(f"feature_map_distill: channel counts must be positive, got "
                              f"{student_channels} and {teacher_channels}")
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        self.normalize = bool(normalize)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        student = self.require(inputs, "student_feature_map")
        teacher = self.require(inputs, "teacher_feature_map").detach().float()
        student = resize_to(self.adapter(student), teacher.shape[-2:]).float()
        if self.normalize:
            student, teacher = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
        return F.mse_loss(student, teacher)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"
