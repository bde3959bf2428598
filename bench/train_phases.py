"""The pieces of ``bench/train_throughput.py`` that build and time one training run: its settings
(:class:`TrainBenchSettings`), the :class:`~facekd.config.ExperimentConfig` of the teacher or student
being timed, the trainer built from it (:func:`build_trainer`) and the three timed phases
((a) :func:`time_model`, (b) :func:`time_data`, (c) :func:`time_end_to_end`).

Kept apart from the command so that ``bench/train_rounds.py`` can build the same trainer in worker
processes (one per thread setting, or gloo ranks) and time the variants in interleaved rounds.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from facekd.config import ExperimentConfig, from_dict, to_dict
from facekd.evaluation.embed import available_cores
from facekd.models import MODELS, count_macs
from facekd.training import StudentTask, TeacherTask, Trainer
from facekd.training.distributed import DistInfo
from facekd.training.hooks import Hook
from facekd.training.throughput import synchronize


STUDENT_LOSSES = [{"name": "arcface", "weight": 1.0, "scale": 64.0, "margin": 0.5},
                  {"name": "triplet_distill", "weight": 1.0, "m_min": 0.2, "m_max": 0.5},
                  {"name": "feature_distill", "weight": 1.0, "metric": "cosine"}]
#: the views every ``--teaching`` variant of the student trains on
TEACHING_AUGMENT = [{"name": "shift_scale"}, {"name": "colour_jitter"}]
STUDENT_DEGRADE = {"enabled": True, "min_size": 14, "max_size": 56, "blur_prob": 0.3, "jpeg_prob": 0.3,
                   "noise_prob": 0.2, "clean_prob": 0.3}


@dataclass
class TrainBenchSettings:
    """Everything one benchmark run uses (:meth:`for_device` gives the defaults)."""
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"           # train.compile_mode
    threads: int = 2                        # torch threads of each process
    world_size: int = 1                     # gloo ranks (bench/train_rounds.py); P x K is split between them
    identities_per_batch: int = 8
    images_per_identity: int = 4
    workers: int = 1
    prefetch_factor: int = 4
    teacher_arch: str = "iresnet18"
    # half-width IResNet-18 on the CPU (a quarter of its MACs): keeps the default run short
    teacher_params: Dict[str, Any] = field(default_factory=lambda: {"width": [32, 64, 128, 256]})
    teacher_loss: str = "arcface"           # or partial_fc
    sample_rate: float = 0.1                # partial_fc only
    student_arch: str = "mobilefacenet"
    embedding_size: int = 512
    input_size: int = 112
    num_identities: int = 64
    images_per_identity_data: int = 8
    synthetic: str = "tree"                 # tree | generator
    data_dir: Optional[str] = None
    warmup: int = 2
    model_steps: Dict[str, int] = field(default_factory=lambda: {"teacher": 3, "student": 5})
    data_batches: int = 8
    e2e_epochs: int = 2
    e2e_steps_per_epoch: Dict[str, int] = field(default_factory=lambda: {"teacher": 2, "student": 3})
    log_every_steps: int = 10
    matmul_size: int = 2048
    matmul_repeats: int = 10
    models: Sequence[str] = ("teacher", "student")
    teaching: Sequence[str] = ()            # teacher.targets sources to time the student with
    teaching_teacher: str = "tiny"          # tiny | dlib: the teacher of the --teaching variants
    teaching_views: int = 4
    step_variants: Sequence[str] = ()       # STEP_VARIANTS names (a+b combines) timed beside the student
    store: bool = False                     # the student's teacher caches as float16 memory-mapped stores

    @property
    def batch_size(self) -> int:
        """P x K."""
        return self.identities_per_batch * self.images_per_identity

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> "TrainBenchSettings":
        """CPU: a short run (half-width IResNet-18, batch 32); CUDA: the issue's setting (IResNet-100, bf16, 256)."""
        base: Dict[str, Any] = {"device": device, "threads": available_cores()}
        if torch.device(device).type == "cuda":
            base.update(amp="bf16", channels_last=True, identities_per_batch=64, images_per_identity=4,
                        workers=min(8, max(1, available_cores() - 1)), teacher_arch="iresnet100", teacher_params={},
                        num_identities=1000, images_per_identity_data=8, warmup=10, data_batches=100,
                        model_steps={"teacher": 50, "student": 200},
                        e2e_steps_per_epoch={"teacher": 30, "student": 60}, e2e_epochs=3, log_every_steps=50,
                        matmul_size=8192, matmul_repeats=20)
        base.update(overrides)
        return cls(**base)


# --------------------------------------------------------------------------- configs

def _data_section(settings: TrainBenchSettings, root: Optional[Path]) -> Dict[str, Any]:
    common = {"num_workers": settings.workers, "input_size": 112}
    if root is None:
        return {**common, "source": "synthetic", "num_identities": settings.num_identities,
                "images_per_identity": settings.images_per_identity_data}
    return {**common, "source": "folder", "root": str(root)}


def experiment_config(role: str, settings: TrainBenchSettings, workdir: Path, data_root: Optional[Path],
                      teacher_checkpoint: Optional[Path] = None) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of the ``teacher`` or ``student[:<targets source>]`` run being timed."""
    kind = role.partition(":")[0]
    train = {"epochs": settings.e2e_epochs, "identities_per_batch": settings.identities_per_batch,
             "images_per_identity": settings.images_per_identity, "amp": settings.amp,
             "channels_last": settings.channels_last, "compile": settings.compile,
             "compile_mode": settings.compile_mode,
             "checkpoint_every_steps": 0, "log_every_steps": settings.log_every_steps,
             "max_steps_per_epoch": settings.e2e_steps_per_epoch[kind], "progress": False,
             "prefetch_factor": settings.prefetch_factor}
    data: Dict[str, Any] = {
        "name": f"bench_{role.replace(':', '_')}", "output_dir": str(workdir / role.replace(":", "_")), "data": _data_section(settings, data_root),
        "val": {"sets": [], "every_epochs": 0, "batch_size": 256}, "train": train,
        "optim": {"lr": 0.01, "warmup_epochs": 0.0}}
    if role == "teacher":
        head = {"name": settings.teacher_loss, "weight": 1.0, "scale": 64.0, "margin": 0.5}
        if settings.teacher_loss == "partial_fc":
            head["sample_rate"] = settings.sample_rate
        data.update(model={"name": settings.teacher_arch, "embedding_size": settings.embedding_size,
                           "input_size": settings.input_size, "params": dict(settings.teacher_params)},
                    losses=[head])
    else:
        teacher = {"model": _cache_teacher_model(settings), "checkpoint": str(teacher_checkpoint),
                   "cache": True, "cache_dir": str(workdir / "teacher_cache"), "store": settings.store,
                   "cache_dtype": "float16" if settings.store else "float32"}
        embedding_size = settings.embedding_size
        _, _, targets = role.partition(":")
        if targets:            # a --teaching variant: augmented views, targets from that source
            teacher.update(targets=targets, views=settings.teaching_views if targets == "view_cache" else 0)
            if settings.teaching_teacher == "dlib":
                teacher.update(kind="dlib", checkpoint=None)
                embedding_size = 128
            data["augment"] = [dict(a) for a in TEACHING_AUGMENT]
        data.update(model={"name": settings.student_arch, "embedding_size": embedding_size,
                           "input_size": settings.input_size},
                    teacher=teacher, degrade=dict(STUDENT_DEGRADE), losses=[dict(loss) for loss in STUDENT_LOSSES])
    merged = to_dict(ExperimentConfig())
    for key, value in data.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return from_dict(ExperimentConfig, merged, source="bench/train_throughput.py")


def _cache_teacher_model(settings: TrainBenchSettings) -> Dict[str, Any]:
    # only its embeddings are used (from the cache): a narrow net keeps building the cache quick
    return {"name": "iresnet18", "embedding_size": settings.embedding_size, "input_size": 56,
            "params": {"width": [8, 16, 32, 64]}}


def write_cache_teacher(settings: TrainBenchSettings, path: Path) -> Path:
    """A random-init teacher backbone saved as a plain state dict (insightface ``backbone.pth`` style)."""
    spec = _cache_teacher_model(settings)
    torch.manual_seed(0)
    model = MODELS.build(spec["name"], embedding_size=spec["embedding_size"], input_size=spec["input_size"],
                         **spec["params"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


# --------------------------------------------------------------------------- phases

class StepClock(Hook):
    """Records ``time.perf_counter()`` before every step and the epoch of each step."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self.epochs: List[int] = []

    def before_step(self, trainer: Any, batch: Dict[str, Any]) -> None:
        self.times.append(time.perf_counter())
        self.epochs.append(trainer.epoch)


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    # images on the device as the model step wants them; labels, indices, flips stay where
    # the loader puts them (the task moves labels itself, the cache looks indices up on the host)
    return {**batch, "image": batch["image"].to(device)}


def _loader_batches(trainer: Trainer) -> Iterator[Dict[str, Any]]:
    epoch = 0
    while True:
        for batch in trainer.loader(epoch):
            yield batch
        epoch += 1


def time_data(trainer: Trainer, settings: TrainBenchSettings, keep: int) -> Dict[str, Any]:
    """(b): the loader alone, whole epochs; returns img/s and the first ``keep`` batches (for the model phase)."""
    timed_epoch, trainer.steps_per_epoch = trainer.steps_per_epoch, len(trainer.sampler)
    batches = _loader_batches(trainer)
    kept = []
    for _ in range(settings.warmup):       # worker start-up is not counted
        batch = next(batches)
        trainer.task.prepare_batch(batch)     # the step's device copy, normalisation, cached targets
        kept.append(batch)
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(settings.data_batches):
        batch = next(batches)
        trainer.task.prepare_batch(batch)
        if len(kept) < keep:
            kept.append(batch)
    synchronize(trainer.device)
    seconds = time.perf_counter() - start
    trainer.steps_per_epoch = timed_epoch
    return {"img_s": settings.data_batches * settings.batch_size / seconds, "seconds": seconds,
            "batches": settings.data_batches, "kept": [_to_device(b, trainer.device) for b in kept[:keep]]}


def time_model(trainer: Trainer, batches: List[Dict[str, Any]], steps: int, warmup: int) -> Dict[str, Any]:
    """(a): ``train_step`` on batches already in device memory."""
    for i in range(warmup):
        trainer.train_step(batches[i % len(batches)])
    synchronize(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        trainer.train_step(batches[i % len(batches)])
    trainer.check_finite()
    synchronize(trainer.device)
    seconds = time.perf_counter() - start
    return {"img_s": steps * len(batches[0]["label"]) / seconds, "seconds": seconds, "steps": steps,
            "step_ms": 1e3 * seconds / steps}


def time_end_to_end(trainer: Trainer, clock: StepClock, settings: TrainBenchSettings) -> Dict[str, Any]:
    """(c): ``Trainer.fit`` from the start of epoch 1 (after the phases above reset the counters).

    Timed from the second step (the first waits for the loader's first batch; kernels,
    cuDNN autotuning and ``torch.compile`` were warmed up by the model phase), so every
    epoch boundary but none of the start-up is inside the window.  The epoch-end time is
    each boundary's gap minus the median step interval, plus the end of the last epoch.
    """
    trainer.step, trainer.epoch, trainer.batches_done = 0, 0, 0
    trainer.sampler.load_state_dict({"epoch": 0, "position": 0, "seed": trainer.sampler.seed})
    clock.times.clear()
    clock.epochs.clear()
    trainer.fit()
    synchronize(trainer.device)
    end = time.perf_counter()
    times, epochs = clock.times, clock.epochs
    warm = min(1, len(times) - 1)
    steps = len(times) - warm
    seconds = end - times[warm]
    gaps = [b - a for a, b in zip(times, times[1:])]
    inside = [g for g, e0, e1 in zip(gaps, epochs, epochs[1:]) if e0 == e1]
    typical = statistics.median(inside) if inside else 0.0
    boundary = [g - typical for g, e0, e1, i in zip(gaps, epochs, epochs[1:], range(len(gaps)))
                if e0 != e1 and i >= warm]
    # the last epoch's end (checkpoint + finish) is after the last step: end - last step - one step
    tail = max(0.0, end - times[-1] - typical)
    extra = sum(max(0.0, b) for b in boundary) + tail
    return {"img_s": steps * settings.batch_size / seconds, "seconds": seconds, "steps": steps,
            "step_ms": 1e3 * typical, "epoch_end_s": extra, "epoch_end_share": extra / seconds if seconds else 0.0,
            "epochs": settings.e2e_epochs}


@dataclass
class BuiltRun:
    """One timed run: its config, task, built trainer, step clock and the teacher-cache build time."""
    cfg: ExperimentConfig
    task: Any
    trainer: Trainer
    clock: StepClock
    cache_s: float


def build_trainer(role: str, settings: TrainBenchSettings, workdir: Path, data_root: Optional[Path],
                  dist: Optional[DistInfo] = None, teacher_checkpoint: Optional[Path] = None) -> BuiltRun:
    """The real :class:`Trainer` of ``role`` built and started (the student's teacher targets ready).

    ``dist``: this process's gloo rank (default: one process on ``settings.device``);
    ``teacher_checkpoint``: the cache teacher written beforehand (default: written here).
    """
    student = role.startswith("student")
    if student and teacher_checkpoint is None:
        teacher_checkpoint = write_cache_teacher(settings, workdir / "cache_teacher.pth")
    cfg = experiment_config(role, settings, workdir, data_root, teacher_checkpoint if student else None)
    task = (StudentTask if student else TeacherTask)(cfg)
    clock = StepClock()
    trainer = Trainer(cfg, task, dist=dist or DistInfo(device=torch.device(settings.device)), hooks=[clock])
    trainer.build()
    start = time.perf_counter()
    task.on_train_start(trainer)            # the student builds its teacher-embedding cache here
    return BuiltRun(cfg, task, trainer, clock, time.perf_counter() - start)


def train_flop_per_image(trainer: Trainer) -> float:
    """6 x (backbone MACs + head MACs): forward and the two backward products of each layer."""
    task = trainer.task
    macs = count_macs(task.backbone, task.cfg.model.input_size)
    head = task.criterion.margin_head
    if head is not None:
        sampled = head.num_sampled(trainer.sampler.batch_size) if hasattr(head, "num_sampled") else head.num_classes
        macs += sampled * head.embedding_size
    return 6.0 * macs

