"""Training tasks: what is trained and how a step's loss is computed.

A task fulfils the :class:`~facekd.training.task.Task` contract: the
:class:`~facekd.training.trainer.Trainer` builds it (``build``) and asks for the loss of each
batch (``compute_loss``).  Both tasks (:class:`BackboneTask`) train a backbone with the weighted
losses of ``cfg.losses`` (:func:`facekd.losses.build_losses`):

* :class:`TeacherTask` (``facekd train-teacher``) — a backbone + margin head
  (``arcface``/``cosface``, s=64, m=0.5 by default); losses that need a teacher are refused.
* :class:`StudentTask` (``facekd train-student``) — adds the frozen teacher of ``cfg.teacher``
  (any :mod:`facekd.teachers` source: a facekd checkpoint or insightface ``backbone.pth``, an
  ONNX embedder, dlib's ResNet, precomputed embeddings), the low-resolution student view of
  ``cfg.degrade`` and the teacher embedding cache (:mod:`facekd.training.teacher_cache`).
  Any combination of student ArcFace, triplet distillation, plain triplet, HR->LR feature
  distillation, neuron selection and Hinton KD can be switched on and weighted in ``cfg.losses``.

Where the teacher's outputs come from (``teacher.targets``, :mod:`facekd.training.teaching`):

* embeddings: the clean cache (default; looked up by sample index and flip), a view cache of
  ``teacher.views`` fixed augmented views per face, or the teacher online on each batch's own
  view — the last two give the teacher exactly the student's (augmented, mixed) view;
* margin-free logits (``teacher_logits``): the teacher checkpoint's margin head applied to the
  target embedding (one matrix product) when it covers the run's identities, else the
  class-centre logits of :class:`~facekd.teachers.base.ClassCentreHead`;
* feature maps (a loss that reads ``teacher_feature_map``): the teacher runs online on the
  clean view of each batch (``forward_features``), and then provides the embedding too.

What the losses read is their own declaration (:attr:`facekd.losses.Loss.reads`, the union
:attr:`~facekd.losses.WeightedLoss.reads`); the task fills exactly those fields.

Whatever is fitted on the teacher's statistics of the training set (``teacher.center``,
class centres, neuron selection) comes from the clean cache, built when needed.
``data.unlabelled`` faces (label -1) follow the labelled ones in the dataset and in each
batch; only losses that do not read ``labels`` see them.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from facekd.config import ExperimentConfig, to_dict
from facekd.errors import CheckpointError, ConfigError
from facekd.losses.base import TEACHER_FIELDS
from facekd.preprocess import InputResize
from facekd.registry import Registry
from facekd.teachers import Teacher, build_teacher
from facekd.teachers.base import ClassCentreHead, class_centres
from facekd.training.data import TrainView, batch_to_input, keep_uint8
from facekd.training.task import StepBatch, Task

if TYPE_CHECKING:  # annotations only
    from facekd.training.trainer import Trainer

LOG = logging.getLogger(__name__)

#: name -> task class taking ``cfg``
TASKS = Registry("task")


def loss_params(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A ``losses:`` entry without its ``name`` and ``weight``."""
    return {k: v for k, v in spec.items() if k not in ("name", "weight")}


class TrainModule(nn.Module):
    """The backbone and the loss modules (margin heads, adapters): the unit DDP wraps.

    ``forward`` embeds the batch (with ``forward_features`` when a loss reads feature maps)
    and returns ``(total_loss, terms)`` of the weighted losses; keyword arguments are
    :class:`~facekd.losses.LossInputs` fields (teacher outputs, ``labelled_rows``).
    """

    def __init__(self, backbone: nn.Module, criterion: nn.Module, feature_maps: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.criterion = criterion
        self.feature_maps = feature_maps

    def forward(self, images: torch.Tensor, labels: torch.Tensor, **teacher: Any):
        from facekd.losses import LossInputs

        feature_map = None
        if self.feature_maps:
            feature_map, embedding = self.backbone.forward_features(images)
        else:
            embedding = self.backbone(images)
        return self.criterion(LossInputs(student_embedding=embedding, labels=labels,
                                         student_feature_map=feature_map, **teacher))


class BackboneTask(Task):
    """Common part of the tasks: data, backbone, losses, verification, checkpoint state.

    After :meth:`build`: ``dataset`` (the :class:`~facekd.data.FaceDataset`), ``train_set``
    (its :class:`~facekd.training.data.TrainView`), ``backbone``, ``criterion`` (the
    ``WeightedLoss``) and ``module`` (:class:`TrainModule`).
    """

    name = "task"

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.rank, self.world_size = 0, 1

    # ------------------------------------------------------------------ building
    def build(self, trainer: "Trainer") -> None:
        """Build dataset, backbone and losses (called once by the trainer)."""
        from facekd.data import build_train_dataset
        from facekd.losses import build_losses
        from facekd.models import build_model
        from facekd.training.preflight import check_batch_fits

        cfg = self.cfg
        self.device = trainer.device
        self.rank, self.world_size = trainer.dist.rank, trainer.dist.world_size    # where a sharded head sits
        self.dataset = build_train_dataset(cfg.data, transform=keep_uint8)
        if cfg.data.unlabelled:
            self.dataset = self.add_unlabelled(self.dataset)
        check_batch_fits(self.train_labels, cfg.train)           # before the teacher loads
        self.dataset_fingerprint = self.dataset.fingerprint()    # reads every file: once, not per checkpoint
        self.backbone = build_model(cfg.model)
        self.prepare_teacher(trainer)
        self.criterion = build_losses(cfg.losses, **self.loss_context())
        self.check_losses()
        if cfg.init_from not in (None, "teacher"):
            self.init_from_checkpoint(cfg.init_from)
        self.module = TrainModule(self.backbone, self.criterion, "student_feature_map" in self.criterion.reads)
        self.train_set = self.build_view()

    def init_from_checkpoint(self, path: str) -> None:
        """Start from the weights of a facekd checkpoint (``init_from: PATH``, a warm start): a training
        checkpoint or a stripped student (``facekd strip``, ``results/``).

        The backbone must have the checkpoint's architecture (the difference is named otherwise)
        and takes its weights; each loss module (a projector, a margin head) whose state in the
        checkpoint has the same keys and shapes takes it too, a margin head only when the
        checkpoint was trained on this run's identities, and the others start fresh (logged).
        Optimiser, schedule and step count start anew: to continue an interrupted run with its
        schedule, use ``--resume``.

        Raises:
            DataError: the file is missing or unreadable (named).
            CheckpointError: it holds no backbone weights, or another architecture.
        """
        from facekd.config import ModelConfig
        from facekd.losses.margin import MarginHead
        from facekd.training.checkpoint import load_checkpoint
        from facekd.training.student_init import architecture_differences

        state = load_checkpoint(path)
        if not isinstance(state.get("state_dict"), dict) or not isinstance(state.get("model_config"), dict):
            raise CheckpointError(f"{path}: init_from needs a facekd checkpoint, a training one or a stripped "
                                  "student (with 'state_dict' and 'model_config')")
        try:
            source_model = ModelConfig(**state["model_config"])
        except TypeError as error:
            raise CheckpointError(f"{path}: its model_config is not a facekd model config ({error})") from None
        differences = architecture_differences(self.cfg.model, source_model, other="checkpoint")
        if differences:
            raise CheckpointError(f"{path}: init_from needs this run's architecture; " + "; ".join(differences))
        try:
            self.backbone.load_state_dict(state["state_dict"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: its backbone weights do not fit this run's model ({error})") from None
        same_identities = list(state.get("classes") or []) == list(self.dataset.classes)
        losses = state.get("losses") or {}
        taken, fresh = [], []
        for key, term in self.criterion.terms.items():
            prefix = f"terms.{key}."
            saved = {name[len(prefix):]: value for name, value in losses.items() if name.startswith(prefix)}
            own = term.state_dict()
            if not own:                                  # nothing to take (a loss without parameters)
                continue
            if (set(saved) == set(own) and all(saved[k].shape == own[k].shape for k in own)
                    and (same_identities or not isinstance(term, MarginHead))):
                term.load_state_dict(saved)
                taken.append(key)
            else:
                fresh.append(key)
        LOG.info("init_from %s: backbone (step %s of its run)%s%s", path, state.get("step", "?"),
                 f"; loss modules taken: {taken}" if taken else "",
                 f"; starting fresh: {fresh}" if fresh else "")

    def add_unlabelled(self, dataset: Any) -> Any:
        """Append ``data.unlabelled``'s faces (refused for a run without distillation)."""
        raise ConfigError("data.unlabelled: faces without identities only teach through distillation "
                          "losses; train-teacher has none")

    def loss_context(self) -> Dict[str, Any]:
        """The context arguments loss factories may take."""
        return {"num_classes": self.dataset.num_classes, "embedding_size": self.cfg.model.embedding_size,
                "student_channels": getattr(self.backbone, "feature_channels", None),
                "rank": self.rank, "world_size": self.world_size}

    def prepare_teacher(self, trainer: "Trainer") -> None:
        """Load whatever the losses need besides the backbone (nothing for a teacher run)."""

    def check_losses(self) -> None:
        """Refuse loss combinations the task cannot feed."""
        readers = self.criterion.readers("student_feature_map")
        if readers and not hasattr(self.backbone, "forward_features"):
            raise ConfigError(f"model {self.cfg.model.name!r} has no forward_features; losses {readers} read "
                              "its feature maps (feature-map distillation is not available for it)")

    def build_view(self, teacher_images: bool = False, views: int = 0) -> TrainView:
        """The :class:`TrainView` of the dataset: flipped, augmented per ``cfg.augment``, degraded
        per ``cfg.degrade`` when enabled (``teacher_images`` / ``views``: see :class:`TrainView`)."""
        from facekd.data.augment import build_augment

        degrade, clean_prob = None, 0.0
        if self.cfg.degrade.enabled:
            from facekd.data import Degradation

            d = self.cfg.degrade
            degrade = Degradation(min_size=d.min_size, max_size=d.max_size, out_size=112,
                                  blur_prob=d.blur_prob, jpeg_prob=d.jpeg_prob, noise_prob=d.noise_prob)
            clean_prob = d.clean_prob
        return TrainView(self.dataset, seed=self.cfg.seed, flip=self.cfg.train.flip, degrade=degrade,
                         clean_prob=clean_prob, teacher_images=teacher_images,
                         augment=build_augment(self.cfg.augment), views=views)

    @property
    def labelled_count(self) -> int:
        """Samples with an identity: they come first in the dataset (then ``data.unlabelled``'s)."""
        return getattr(self.dataset, "labelled_count", len(self.dataset))

    @property
    def train_labels(self):
        """Labels of the labelled training samples (for the P x K sampler)."""
        return self.dataset.labels[:self.labelled_count]

    def wrap_sampler(self, sampler: Any) -> Any:
        """The trainer's P x K sampler, with ``train.unlabelled_per_batch`` unlabelled faces added."""
        unlabelled = len(self.dataset) - self.labelled_count
        per_batch = self.cfg.train.unlabelled_per_batch
        if not unlabelled:
            if per_batch:
                raise ConfigError("train.unlabelled_per_batch is set but data.unlabelled names no folder")
            return sampler
        if per_batch < 1:
            raise ConfigError("data.unlabelled is set: train.unlabelled_per_batch must be >= 1")
        from facekd.data.unlabelled import UnlabelledBatches

        return UnlabelledBatches(sampler, self.labelled_count, unlabelled, per_batch, seed=self.cfg.seed)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the per-sample random choices."""
        self.train_set.set_epoch(epoch)

    # ------------------------------------------------------------------ a step
    def prepare_batch(self, batch: Dict[str, Any]) -> StepBatch:
        """Images normalised on the device, labels, and the labelled rows (host tensor: no device sync)."""
        images = batch_to_input(batch["image"], self.cfg.model.input_size, self.device, self.cfg.train.channels_last)
        labelled_rows = int((batch["label"] >= 0).sum())
        labels = batch["label"].to(self.device, non_blocking=True)
        return StepBatch(images, labels, None if labelled_rows == len(batch["label"]) else labelled_rows)

    def teacher_outputs(self, batch: Dict[str, Any], target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """``LossInputs`` fields coming from the teacher (none for a teacher run)."""
        return {}

    def compute_loss(self, trainer: "Trainer", batch: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``(total, terms)`` of ``batch`` through the (possibly DDP-wrapped) :class:`TrainModule`."""
        step = self.prepare_batch(batch)
        extra = {} if step.labelled_rows is None else {"labelled_rows": step.labelled_rows}
        return trainer.model(step.images, step.labels, **extra, **self.teacher_outputs(batch, step.teacher_target))

    # ------------------------------------------------------------------ verification
    def verify(self, trainer: "Trainer", pair_sets: Sequence[Any]) -> Dict[str, Any]:
        """10-fold verification (flip-summed embeddings) of the backbone on each pair set."""
        from facekd.evaluation.embed import TorchEmbedder, extract_embeddings
        from facekd.evaluation.verification import evaluate, pair_embeddings

        embedder = TorchEmbedder(InputResize(self.backbone, self.cfg.model.input_size), device=str(self.device),
                                 batch_size=self.cfg.val.batch_size, amp=trainer.amp)
        results = {}
        try:
            for pair_set in pair_sets:
                embeddings = extract_embeddings(embedder, pair_set, self.cfg.val.batch_size, progress=False)
                results[pair_set.name] = evaluate(pair_embeddings(pair_set.pairs, embeddings.flip),
                                                  pair_set.issame)
        finally:
            self.module.train()
        return results

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """The task's part of a checkpoint: backbone, its config, loss modules, margin head, classes."""
        state = {"model_config": to_dict(self.cfg.model), "state_dict": self.backbone.state_dict(),
                 "losses": self.criterion.state_dict(), "classes": list(self.dataset.classes),
                 "dataset_fingerprint": self.dataset_fingerprint, "head": None}
        head = self.criterion.margin_head
        if head is not None:
            spec = self.criterion.specs[self.criterion.margin_head_key]
            state["head"] = {"name": head.loss_name, "params": loss_params(spec),
                             "num_classes": head.num_classes, "embedding_size": head.embedding_size,
                             "state_dict": head.state_dict()}
        return state

    def load_state_dict(self, state: Dict[str, Any], path: str = "<checkpoint>") -> None:
        """Restore backbone and loss modules from a checkpoint of this task."""
        try:
            self.backbone.load_state_dict(state["state_dict"])
            self.criterion.load_state_dict(state["losses"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: does not match this run's model/losses ({error})") from None
        if state.get("classes") is not None and list(state["classes"]) != list(self.dataset.classes):
            raise CheckpointError(f"{path}: was trained on other identities than this run's data")


@TASKS.register("teacher")
class TeacherTask(BackboneTask):
    """Backbone + margin head (``facekd train-teacher``)."""

    name = "teacher"

    def check_losses(self) -> None:
        super().check_losses()
        readers = [key for key, term in self.criterion.terms.items() if term.reads & TEACHER_FIELDS]
        if readers:
            raise ConfigError(f"train-teacher: losses {readers} read the teacher's outputs (each needs a teacher); "
                              "use train-student for distillation")


@TASKS.register("student")
class StudentTask(BackboneTask):
    """A student distilled from a frozen teacher (``facekd train-student``).

    The teacher is any :mod:`facekd.teachers` source (``teacher.kind``).  Losses that read
    only ``teacher_embedding`` work with every source; ``teacher_logits`` come from the
    teacher's margin head when it covers this run's identities, and otherwise are class-centre
    logits from the teacher's own embeddings of the training identities
    (:class:`facekd.teachers.base.ClassCentreHead`); ``teacher_feature_map`` needs a torch
    teacher.  ``init_from: teacher`` starts
    the student from the teacher's weights (same architecture only; "transfer, then distil").
    """

    name = "student"

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.teacher: Optional[Teacher] = None
        self.cache = None
        #: where the teacher's targets come from (:mod:`facekd.training.teaching`), set by build_view
        self.targets = None
        #: mean unit teacher embedding of the clean training faces when ``teacher.center`` is on
        self.teacher_center: Optional[torch.Tensor] = None
        #: ZCA matrix applied after centring when ``teacher.whiten`` is on
        self.teacher_whitening: Optional[torch.Tensor] = None

    def add_unlabelled(self, dataset: Any) -> Any:
        """``dataset`` followed by ``data.unlabelled``'s faces (label -1, distillation losses only)."""
        from facekd.data.unlabelled import WithUnlabelled

        combined = WithUnlabelled(dataset, self.cfg.data.unlabelled)
        LOG.info("data.unlabelled: %d faces without identity after %d labelled ones", combined.unlabelled_count,
                 combined.labelled_count)
        return combined

    def prepare_teacher(self, trainer: "Trainer") -> None:
        """Load the teacher when a configured loss reads teacher outputs (or the student starts from it)."""
        from facekd.losses import declared_reads

        if declared_reads(self.cfg.losses) & TEACHER_FIELDS or self.cfg.init_from == "teacher":
            if self.cfg.teacher is None:
                raise ConfigError("the losses (or init_from: teacher) need a teacher but the config has no "
                                  "teacher: section")
            self.teacher = build_teacher(self.cfg.teacher, self.device, getattr(trainer, "amp", "none"))
            LOG.info("teacher: %r", self.teacher)
        elif self.cfg.teacher is not None and (self.cfg.teacher.checkpoint or self.cfg.teacher.path):
            LOG.warning("no configured loss uses the teacher; it is not loaded")
        if self.cfg.init_from == "teacher":
            self.init_from_teacher()

    def init_from_teacher(self) -> None:
        """Copy the teacher's weights into the student (refused unless the architectures match)."""
        from facekd.training.student_init import init_student_from_teacher

        if self.teacher.backbone is None:
            raise ConfigError(f"init_from: teacher needs a torch teacher with the student's architecture; "
                              f"teacher.kind is {self.teacher.kind!r}")
        init_student_from_teacher(self.backbone, self.cfg.model, self.teacher.backbone, self.teacher.model_config)
        self.backbone.to(self.device)
        LOG.info("student initialised from the teacher's weights (%s)", self.teacher.source)

    def loss_context(self) -> Dict[str, Any]:
        context = super().loss_context()
        if self.teacher is not None:
            context["teacher_embedding_size"] = self.teacher.embedding_size
            context["teacher_channels"] = getattr(self.teacher.backbone, "feature_channels", None)
        return context

    @property
    def teacher_online(self) -> bool:
        """True when the teacher runs on each batch (``teacher.targets: online``, feature maps
        needed, or the cache is off)."""
        from facekd.training.teaching import targets_name

        return self.teacher is not None and targets_name(
            self.cfg.teacher, "teacher_feature_map" in self.criterion.reads) == "online"

    @property
    def needs_statistics(self) -> bool:
        """Something is fitted on the teacher's clean embeddings of the training set (centring,
        class-centre logits, neuron selection): the clean cache is built for it."""
        return self.teacher is not None and bool(
            self.cfg.teacher.center or self.statistics_terms()
            or ("teacher_logits" in self.criterion.reads and not self.teacher_head_fits))

    @property
    def teacher_head_fits(self) -> bool:
        """The teacher has a margin head over exactly this run's identities (Hinton KD uses it)."""
        return (self.teacher is not None and self.teacher.head is not None
                and list(self.teacher.classes or []) == list(self.dataset.classes))

    def check_losses(self) -> None:
        super().check_losses()
        from facekd.losses import margin_head_names

        readers = self.criterion.readers("student_logits")
        if readers and self.criterion.margin_head is None:
            raise ConfigError(f"losses {readers} read the student's logits, which come from its own margin head: "
                              f"add one of {margin_head_names()} to losses")
        readers = self.criterion.readers("teacher_feature_map")
        if self.teacher is not None and readers and not hasattr(self.teacher.backbone, "forward_features"):
            raise ConfigError(f"losses {readers} read the teacher's feature maps: they need a torch teacher "
                              "with forward_features")

    def build(self, trainer: "Trainer") -> None:
        super().build(trainer)
        if self.cfg.init_from == "teacher":
            self.init_head_from_teacher()

    def build_view(self, teacher_images: bool = False, views: int = 0) -> TrainView:
        """The training view the teacher's targets need (``teacher_image``, fixed views)."""
        if self.teacher is None or not self.criterion.reads & TEACHER_FIELDS:
            return super().build_view(teacher_images, views)
        from facekd.training.teaching import TEACHING, targets_name

        self.targets = TEACHING.build(targets_name(self.cfg.teacher, "teacher_feature_map" in self.criterion.reads),
                                      task=self)
        LOG.info("teacher targets: %s", self.targets.name)
        return super().build_view(teacher_images or self.targets.teacher_images, views or self.targets.views)

    def init_head_from_teacher(self) -> None:
        """With ``init_from: teacher``, start the student's margin head from the teacher's class centres.

        Only when the teacher's head covers exactly this run's identities and has the same
        shape (the margin and scale may differ: the centres are unit directions either way).
        Otherwise the head starts fresh, which is logged: a random head's first gradients
        then pull the transferred backbone away from the teacher's function.
        """
        head = self.criterion.margin_head
        if head is None:
            return
        source = self.teacher.head if self.teacher_head_fits else None
        shape = (head.num_classes, head.embedding_size)
        if source is None or getattr(source, "weight", None) is None or tuple(source.weight.shape) != shape:
            LOG.warning("init_from: teacher: the teacher has no margin head over this run's %d identities with "
                        "the student's shape; the student's %s head starts fresh", head.num_classes, head.loss_name)
            return
        head.load_state_dict({"weight": source.weight.detach()})     # a sharded head keeps its rows
        LOG.info("student's %s head initialised from the teacher's class centres", head.loss_name)

    def on_train_start(self, trainer: "Trainer") -> None:
        """Build the teacher's targets (:mod:`facekd.training.teaching`) and, when something is
        fitted on the teacher's statistics, the clean cache it is fitted on."""
        if self.targets is None:
            return
        from facekd.training.teaching import load_cache

        if self.needs_statistics or self.targets.name == "clean_cache":
            self.cache = load_cache(self, trainer)
            clean = self.center_statistics(self.cache.embeddings[:, 0].float())
            labelled = clean[:self.labelled_count]
            if "teacher_logits" in self.criterion.reads and not self.teacher_head_fits:
                self.teacher.head = self.class_centre_head(labelled)
            for term in self.statistics_terms():
                term.fit_selection(labelled.to(self.device), self.train_labels)
        self.targets.prepare(trainer)

    def state_dict(self) -> Dict[str, Any]:
        """The base task's checkpoint part plus ``teacher_center`` (None unless ``teacher.center``)."""
        center = None if self.teacher_center is None else self.teacher_center.cpu()
        return {**super().state_dict(), "teacher_center": center}

    def center_statistics(self, clean: torch.Tensor) -> torch.Tensor:
        """Fit ``teacher_center`` when ``teacher.center`` is on; returns the embeddings the losses see.

        Warns when the teacher's unit embeddings share a dominant direction (mean norm > 0.5)
        and centring is off: a cosine target is then mostly reached by matching that direction.
        """
        mean = nn.functional.normalize(clean, dim=1).mean(0)
        if not self.cfg.teacher.center:
            if float(mean.norm()) > 0.5:
                LOG.warning("the teacher's unit embeddings of the training faces have a mean of norm %.2f (one "
                            "dominant direction): distillation targets are mostly that direction; consider "
                            "teacher.center: true", float(mean.norm()))
            return clean
        self.teacher_center, self.teacher_whitening = mean.to(self.device), None
        LOG.info("teacher embeddings centred: t/|t| - mu, |mu| = %.3f over %d training faces",
                 float(mean.norm()), len(clean))
        centred = self.centred(clean.to(self.device))
        if self.cfg.teacher.whiten:
            self.teacher_whitening = zca_whitening(centred).float()
            LOG.info("teacher embeddings whitened (ZCA over %d training faces)", len(clean))
            centred = centred @ self.teacher_whitening
        return centred

    def centred(self, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding`` as the losses see it: unchanged, or ``e/|e| - mu`` when centring is on
        (times the ZCA matrix when whitening is on too)."""
        if self.teacher_center is None:
            return embedding
        centred = nn.functional.normalize(embedding.float(), dim=1) - self.teacher_center
        return centred if self.teacher_whitening is None else centred @ self.teacher_whitening

    def statistics_terms(self) -> list:
        """Loss terms fitted once on the teacher's embeddings of the training set (neuron selection)."""
        return [t for t in self.criterion.terms.values() if t.needs_teacher_statistics]

    def class_centre_head(self, clean_embeddings: torch.Tensor) -> nn.Module:
        """Hinton KD's teacher logits for a head-less teacher: scaled cosine to the identities' centres."""
        scale = self.cfg.teacher.class_centre_scale or self.criterion.margin_head.scale
        LOG.info("teacher logits of %s = %.1f * cos(teacher embedding, centre of its identity's teacher "
                 "embeddings) over %d identities", self.criterion.readers("teacher_logits"), scale,
                 self.dataset.num_classes)
        centres = class_centres(clean_embeddings, self.train_labels, self.dataset.num_classes)
        return ClassCentreHead(centres, scale).to(self.device)

    def prepare_batch(self, batch: Dict[str, Any]) -> StepBatch:
        """The base task's step inputs plus the teacher's cached targets of the batch (when the
        targets come from a cache; online targets are computed in the step)."""
        step = super().prepare_batch(batch)
        if self.targets is not None and not self.targets.teacher_images:
            step.teacher_target = self.targets.embeddings(batch)
        return step

    def teacher_outputs(self, batch: Dict[str, Any], target: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The teacher's :class:`~facekd.losses.LossInputs` fields the losses read, no others
        (``target``: the batch's raw teacher embeddings when :meth:`prepare_batch` looked them up)."""
        reads = self.criterion.reads
        if self.teacher is None or not reads & TEACHER_FIELDS:
            return {}
        out: Dict[str, torch.Tensor] = {}
        with torch.no_grad():
            if self.teacher_online and "teacher_feature_map" in reads:
                images = self.teacher.input_batch(batch["teacher_image"])
                out["teacher_feature_map"], embedding = self.teacher.backbone.forward_features(images)
            else:
                embedding = self.targets.embeddings(batch) if target is None else target
            centred = self.centred(embedding)
            if "teacher_embedding" in reads:
                out["teacher_embedding"] = centred
            if self.teacher.head is not None and "teacher_logits" in reads:
                # the teacher's own margin head reads its raw embedding; class centres were fitted centred
                centre_head = isinstance(self.teacher.head, ClassCentreHead)
                out["teacher_logits"] = self.teacher.head.logits((centred if centre_head else embedding).float())
        return out


def zca_whitening(centred: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """The ZCA matrix ``W = U diag((lambda + eps)^-1/2) U^T`` of ``N x D`` centred rows, so that
    ``centred @ W`` has (nearly) the identity covariance and stays closest to the original axes.

    ``eps = floor * mean(lambda)`` keeps directions the rows hardly use from being blown up to
    unit variance (their few-sample noise would otherwise become a target as strong as identity).
    """
    rows = centred.double()
    covariance = rows.T @ rows / max(len(rows) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp_min(0)
    scale = (eigenvalues + floor * eigenvalues.mean()).rsqrt()
    return (eigenvectors * scale) @ eigenvectors.T

