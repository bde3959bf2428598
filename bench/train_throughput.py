#!/usr/bin/env python3
"""Training throughput of the teacher and student steps, on whatever device is present.

For each model (``teacher``: IResNet + ArcFace/PartialFC head; ``student``: MobileFaceNet
distilled from cached teacher embeddings with ArcFace + triplet + feature distillation) it
times, with the real :class:`facekd.training.Trainer`:

(a) ``model``: ``Trainer.train_step`` on batches already in device memory (forward,
    losses, backward, clipping, optimiser, schedule; the image normalisation on the device);
(b) ``data``: the trainer's data loader alone — read/decode, flip, degradation, collation,
    and the step's own batch preparation (:meth:`facekd.training.task.Task.prepare_batch`:
    host->device copy, normalisation, the student's cached teacher targets);
(c) ``end_to_end``: ``Trainer.fit`` over a few epochs (loader + step + logging + the
    epoch-end checkpoint), and the share of its wall time spent at epoch ends.

Images/s, the training FLOPs per image (``6 x`` the forward MACs of backbone and head) as a
share of the device's matmul peak measured in the same run (fp32 on the CPU, the autocast
dtype on CUDA), same-run ratios and the issue-12 targets (PASS/MISS, printed, not asserted).

    python3 bench/train_throughput.py                          # CPU: half-width IResNet-18, short run
    python3 bench/train_throughput.py --teacher-arch iresnet100 --out train_bench.json
    python3 bench/train_throughput.py --data aligned_tree/     # an aligned identity-folder tree
    python3 bench/train_throughput.py --models student --teaching clean_cache,view_cache,online \
        --teaching-teacher dlib                                 # issue 20: where the targets come from

``--step-variants channels_last,bf16,channels_last+bf16`` times the student once more per
variant (:data:`STEP_VARIANTS`, ``+`` combines them) with everything else equal, and reports each
variant's model step against the plain student's from the same run (``student+<variant>_speedup``).

``--step-variants store`` (or ``--store`` for every student of the run) takes the student's
teacher targets from the memory-mapped float16 store (``teacher.store``,
:mod:`facekd.training.target_store`) instead of today's in-memory float32 cache: the lookup is
inside the model step, so ``student+store_speedup`` is the store's step against today's cached
step from the same run; each student reports which cache fed it (``teacher_cache``).

``--teaching`` times the student once per source of its teacher targets
(:mod:`facekd.training.teaching`), all on the same augmented views (:data:`TEACHING_AUGMENT`):
``clean_cache`` (today's cached step), ``view_cache`` (4 fixed views per face, embedded once:
the build is reported as ``cache_build_s``) and ``online`` (the teacher embeds every batch);
``--teaching-teacher dlib`` uses the torch port of dlib's ResNet (128-d) instead of the
tiny cache teacher, so the online step pays a real teacher's forward pass.

The default data is synthetic faces written once as JPEGs into a temporary identity-folder
tree (``--synthetic tree``, the real decode path) or generated in memory (``--synthetic
generator``).  On CUDA the defaults follow the issue: IResNet-100, bf16, channels_last,
P x K = 64 x 4, 8 loader workers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from facekd.argtypes import OneLineParser, input_size, non_negative_int, number, number_list, positive_int
from facekd.config import ExperimentConfig, from_dict, to_dict
from facekd.evaluation.embed import available_cores
from facekd.models import MODELS, count_macs
from facekd.training import StudentTask, TeacherTask, Trainer
from facekd.training.distributed import DistInfo
from facekd.training.hooks import Hook
from facekd.training.throughput import (cache_kind, evaluate_targets, format_report, matmul_peak, synchronize,
                                       time_targets)

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
    threads: int = 2
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


#: ways to make the CPU training step faster, as settings changes (``--step-variants``)
STEP_VARIANTS: Dict[str, Dict[str, Any]] = {
    "channels_last": {"channels_last": True},
    "nchw": {"channels_last": False},
    "bf16": {"amp": "bf16"},
    "compile": {"compile": True},
    "store": {"store": True},
}


def variant_settings(settings: "TrainBenchSettings", variant: str) -> "TrainBenchSettings":
    """``settings`` with the changes of a ``+``-joined :data:`STEP_VARIANTS` name applied."""
    changes: Dict[str, Any] = {}
    for name in variant.split("+"):
        if name not in STEP_VARIANTS:
            raise SystemExit(f"--step-variants: unknown variant {name!r} (known: {', '.join(STEP_VARIANTS)})")
        changes.update(STEP_VARIANTS[name])
    return dataclasses.replace(settings, **changes)


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


def train_flop_per_image(trainer: Trainer) -> float:
    """6 x (backbone MACs + head MACs): forward and the two backward products of each layer."""
    task = trainer.task
    macs = count_macs(task.backbone, task.cfg.model.input_size)
    head = task.criterion.margin_head
    if head is not None:
        sampled = head.num_sampled(trainer.sampler.batch_size) if hasattr(head, "num_sampled") else head.num_classes
        macs += sampled * head.embedding_size
    return 6.0 * macs


def bench_model(role: str, settings: TrainBenchSettings, workdir: Path, data_root: Optional[Path],
                peak_gflops: float) -> Dict[str, Any]:
    """All three phases for ``role`` (``teacher`` / ``student``)."""
    device = torch.device(settings.device)
    student = role.startswith("student")
    teacher_ckpt = write_cache_teacher(settings, workdir / "cache_teacher.pth") if student else None
    cfg = experiment_config(role, settings, workdir, data_root, teacher_ckpt)
    task = (StudentTask if student else TeacherTask)(cfg)
    clock = StepClock()
    trainer = Trainer(cfg, task, dist=DistInfo(device=device), hooks=[clock])
    trainer.build()
    start = time.perf_counter()
    task.on_train_start(trainer)            # the student builds its teacher-embedding cache here
    cache_s = time.perf_counter() - start
    data = time_data(trainer, settings, keep=4)
    kept = data.pop("kept")
    model = time_model(trainer, kept, settings.model_steps[role.partition(":")[0]], settings.warmup)
    end_to_end = time_end_to_end(trainer, clock, settings)
    flop = train_flop_per_image(trainer)
    result = {
        "arch": cfg.model.name, "input_size": cfg.model.input_size, "embedding_size": cfg.model.embedding_size,
        "num_classes": task.dataset.num_classes, "num_images": len(task.dataset), "batch_size": settings.batch_size,
        "losses": [spec["name"] for spec in cfg.losses], "train_gflop_per_img": flop / 1e9,
        "model_img_s": model["img_s"], "data_img_s": data["img_s"], "end_to_end_img_s": end_to_end["img_s"],
        "model_step_ms": model["step_ms"], "end_to_end_step_ms": end_to_end["step_ms"],
        "epoch_end_s": end_to_end["epoch_end_s"], "epoch_end_share": end_to_end["epoch_end_share"],
        "model_pct_of_peak": 100.0 * model["img_s"] * flop / 1e9 / peak_gflops,
        "end_to_end_pct_of_peak": 100.0 * end_to_end["img_s"] * flop / 1e9 / peak_gflops,
        "data_over_model": data["img_s"] / model["img_s"], "end_to_end_over_model": end_to_end["img_s"] / model["img_s"],
        "timed": {"model_steps": model["steps"], "data_batches": data["batches"], "end_to_end_steps": end_to_end["steps"],
                  "cache_build_s": cache_s}}
    if student:
        result.update(teacher_cache=cache_kind(task), targets_ms=time_targets(task, kept))
    return result


def run_benchmark(settings: TrainBenchSettings, workdir: Optional[Path] = None) -> Dict[str, Any]:
    """Measure the peak, then every model in ``settings.models``; return the report (JSON-ready)."""
    device = torch.device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="facekd_train_bench_") as tmp:
        root = Path(workdir or tmp)
        data_root = Path(settings.data_dir) if settings.data_dir else None
        if data_root is None and settings.synthetic == "tree":
            from facekd.data import write_synthetic_tree

            data_root = write_synthetic_tree(root / "faces", settings.num_identities,
                                             settings.images_per_identity_data, seed=0)
        peak_start = matmul_peak(device, settings.amp, settings.matmul_size, settings.matmul_repeats)
        roles = [r for r in settings.models if not (r == "student" and settings.teaching)]
        if "student" in settings.models:
            roles += [f"student:{source}" for source in settings.teaching]
        models = {role: bench_model(role, settings, root / role.replace(":", "_"), data_root, peak_start["gflops"])
                  for role in roles}
        for variant in settings.step_variants:
            models[f"student+{variant}"] = bench_model("student", variant_settings(settings, variant),
                                                       root / f"student_{variant}", data_root, peak_start["gflops"])
        peak_end = matmul_peak(device, settings.amp, settings.matmul_size, settings.matmul_repeats)
    ratios = {f"{role}_{name}": models[role][name] for role in models
              for name in ("data_over_model", "end_to_end_over_model")}
    if "student:clean_cache" in models:      # issue 20: each target source's step against the cached one
        for source in settings.teaching:
            ratios[f"{source}_step_over_clean_cache_step"] = (models[f"student:{source}"]["model_step_ms"]
                                                              / models["student:clean_cache"]["model_step_ms"])
    for variant in settings.step_variants:   # each variant's model step against the plain student's
        if "student" in models:
            ratios[f"student+{variant}_speedup"] = (models["student"]["model_step_ms"]
                                                    / models[f"student+{variant}"]["model_step_ms"])
    if {"teacher", "student"} <= set(models):
        ratios["student_over_teacher_model"] = models["student"]["model_img_s"] / models["teacher"]["model_img_s"]
        ratios["student_over_teacher_end_to_end"] = (models["student"]["end_to_end_img_s"]
                                                     / models["teacher"]["end_to_end_img_s"])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({available_cores()} cores)"
    return {
        "device": device_name, "device_type": device.type,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cores": available_cores(),
                        "load_average_before": list(load_before) if load_before else None,
                        "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        "settings": json.loads(json.dumps(dataclasses.asdict(settings))),   # tuples as lists
        "matmul_peak": {"start": peak_start, "end": peak_end},
        "models": models, "ratios": ratios, "targets": evaluate_targets(device.type, models, settings)}


def batch_shape(text: str) -> Tuple[int, int]:
    """``--batch PxK``: two counts >= 1."""
    p, sep, k = text.lower().partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected P x K such as 64x4, got {text!r}")
    return positive_int(p), positive_int(k)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    parser.add_argument("--teacher-arch", help="teacher backbone (CPU default: half-width iresnet18, CUDA: "
                                               "iresnet100); a named arch is built at full width")
    parser.add_argument("--teacher-width", type=number_list(int, ge=1), help="teacher stage widths, e.g. 32,64,128,256")
    parser.add_argument("--teacher-loss", choices=("arcface", "partial_fc"), help="teacher margin head")
    parser.add_argument("--sample-rate", type=number(float, gt=0, le=1), help="partial_fc share of class centres")
    parser.add_argument("--models", default="teacher,student", help="which steps to time (default %(default)s)")
    parser.add_argument("--data", dest="data_dir", help="an aligned identity-folder tree (default: synthetic)")
    parser.add_argument("--synthetic", choices=("tree", "generator"),
                        help="synthetic faces as a JPEG tree on disk (default) or generated in memory")
    parser.add_argument("--identities", dest="num_identities", type=positive_int, help="synthetic identities")
    parser.add_argument("--images-per-identity-data", type=positive_int, help="synthetic images per identity")
    parser.add_argument("--batch", type=batch_shape, help="P x K, e.g. 64x4")
    parser.add_argument("--workers", type=non_negative_int, help="loader worker processes")
    parser.add_argument("--threads", type=positive_int, help="torch threads on the CPU (default: the available cores)")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"))
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--input-size", type=input_size)
    parser.add_argument("--teaching", help="time the student once per teacher.targets source, e.g. "
                                           "clean_cache,view_cache,online (same augmented views)")
    parser.add_argument("--teaching-teacher", choices=("tiny", "dlib"),
                        help="teacher of the --teaching variants (default tiny; dlib: the torch port)")
    parser.add_argument("--store", action=argparse.BooleanOptionalAction, default=None,
                        help="every student's teacher targets from the float16 memory-mapped store")
    parser.add_argument("--step-variants", help="also time the student with each of these step variants, e.g. "
                        f"channels_last,bf16,channels_last+bf16 (known: {', '.join(STEP_VARIANTS)})")
    parser.add_argument("--out", help="write the report as JSON")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> TrainBenchSettings:
    """:meth:`TrainBenchSettings.for_device` with the options given on the command line."""
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k in {f.name for f in dataclasses.fields(TrainBenchSettings)}}
    overrides.pop("device", None)
    if args.teacher_arch or args.teacher_width:
        overrides["teacher_params"] = {"width": args.teacher_width} \
            if args.teacher_width else {}
    if args.batch:
        overrides.update(identities_per_batch=args.batch[0], images_per_identity=args.batch[1])
    overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.step_variants:
        overrides["step_variants"] = tuple(v.strip() for v in args.step_variants.split(",") if v.strip())
    if args.teaching:
        overrides["teaching"] = tuple(t.strip() for t in args.teaching.split(",") if t.strip())
    return TrainBenchSettings.for_device(device, **overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark, print the table, optionally write ``--out``."""
    args = parse_args(argv)
    settings = settings_from_args(args)
    report = run_benchmark(settings)
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"\nreport: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
