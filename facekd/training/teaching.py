"""Where a student's teacher targets come from (``teacher.targets``): consistent teaching.

A distillation target is only as good as its match to what the student sees.  Three sources,
each a registered class in :data:`TEACHING`:

===============  ==========================================================================
``clean_cache``   the teacher's embedding of the clean face (or its mirror), computed once per
                  sample (:class:`~facekd.training.teacher_cache.TeacherCache`).  Whatever
                  augmentation the student's view has, the target is the clean face's vector:
                  cheap, but *inconsistent* once views are augmented (kept for comparison).
``view_cache``    ``teacher.views = K`` fixed augmented views per sample, each reproducible from
                  its seed (:meth:`~facekd.training.data.TrainView.cached_view`), embedded once;
                  each epoch the student sees one of them (degraded for HR->LR) and regresses the
                  teacher's embedding of exactly that view.  A long schedule costs a cached step.
``online``        the teacher embeds every batch's own view (``teacher_image``: the student's
                  flipped, augmented, mixed face before degradation): any number of distinct
                  views, at the cost of a teacher forward per step (cheap with the torch dlib
                  teacher, and on a GPU).
===============  ==========================================================================

The teacher's statistics of the training set (``teacher.center``'s mean, neuron selection's
Fisher ratios, Hinton KD's class centres) always come from the clean cache, which is built
whenever one of them is needed, whatever the targets' source.

With ``teacher.store`` both caches are memory-mapped files
(:class:`~facekd.training.target_store.TargetStore`): the same targets, read from disk row by
row instead of held in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch

from facekd.errors import ConfigError
from facekd.registry import Registry

#: ``teacher.targets`` -> class taking the student task
TEACHING = Registry("teacher targets source")


def cache_dir(task: Any, trainer: Any) -> str:
    """The directory of the run's teacher caches (``teacher.cache_dir``, default beside the run)."""
    return task.cfg.teacher.cache_dir or str(Path(trainer.output_dir).parent / "teacher_cache")


def load_cache(task: Any, trainer: Any, images: Any = None) -> Any:
    """The :class:`~facekd.training.teacher_cache.TeacherCache` of the task's teacher and data
    (``images``: what is embedded per sample; default the clean face and its mirror), in a
    memory-mapped store with ``teacher.store``."""
    from facekd.training.teacher_cache import TeacherCache

    cfg = task.cfg
    return TeacherCache.load_or_build(
        task.teacher, task.dataset, cache_dir(task, trainer), dist=trainer.dist, batch_size=cfg.val.batch_size,
        dtype=cfg.teacher.cache_dtype, num_workers=cfg.data.num_workers, progress=cfg.train.progress,
        images=images, store=cfg.teacher.store)


class TeacherTargets:
    """A source of the teacher's raw embeddings for a batch.

    Attributes:
        teacher_images: the training view must carry ``teacher_image`` (the teacher runs on it).
        views: fixed views per sample the training view draws from (0: a fresh view per epoch).
    """

    name = "targets"
    teacher_images = False

    def __init__(self, task: Any) -> None:
        self.task = task
        self.views = 0

    def prepare(self, trainer: Any) -> None:
        """Build what the targets need before the first step (caches)."""

    def embeddings(self, batch: Dict[str, Any]) -> torch.Tensor:
        """Raw teacher embeddings ``[B, D]`` on the task's device for ``batch``."""
        raise NotImplementedError


@TEACHING.register("clean_cache")
class CleanCacheTargets(TeacherTargets):
    """The clean face's (or mirror's) cached embedding, whatever the student's view."""

    name = "clean_cache"

    def embeddings(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self.task.cache.lookup(batch["index"], batch["flipped"]).to(self.task.device, non_blocking=True)


@TEACHING.register("view_cache")
class ViewCacheTargets(TeacherTargets):
    """The cached embedding of exactly the fixed view the student was shown (``teacher.views``)."""

    name = "view_cache"

    def __init__(self, task: Any) -> None:
        super().__init__(task)
        self.views = int(task.cfg.teacher.views)
        if self.views < 1:
            raise ConfigError(f"teacher.targets: view_cache needs teacher.views >= 1, got {self.views}")
        self.cache = None

    def prepare(self, trainer: Any) -> None:
        from facekd.training.data import ViewImages

        self.cache = load_cache(self.task, trainer, ViewImages(self.task.train_set))

    def embeddings(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self.cache.lookup(batch["index"], batch["view"]).to(self.task.device, non_blocking=True)


@TEACHING.register("online")
class OnlineTargets(TeacherTargets):
    """The teacher's embedding of each batch's own view, computed in the step."""

    name = "online"
    teacher_images = True

    def embeddings(self, batch: Dict[str, Any]) -> torch.Tensor:
        return self.task.teacher.embed(batch["teacher_image"]).to(self.task.device, non_blocking=True)


def targets_name(teacher_cfg: Any, feature_maps: bool = False) -> str:
    """The :data:`TEACHING` entry of a teacher config: ``teacher.targets``, except that a run
    with ``teacher.cache: false`` or a feature-map loss (whose maps come from the teacher's own
    forward pass) is ``online``."""
    if feature_maps or not teacher_cfg.cache:
        return "online"
    if teacher_cfg.targets not in TEACHING:
        raise ConfigError(f"teacher.targets: unknown source {teacher_cfg.targets!r}; known: {', '.join(TEACHING)}")
    return teacher_cfg.targets
