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

``--rounds R --baseline channels_last+compile --step-variants ...`` (issue 34) runs the baseline and
each variant in worker processes of their own (one process with ``--threads``, or ``ddp2``: two
gloo ranks of one thread sharing the P x K batch) and times them in ``R`` interleaved rounds, model
step and end to end; each round's ratio to the baseline is reported (:mod:`train_rounds`), so a busy
machine's load swings hit both sides of a ratio alike.

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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from facekd.argtypes import OneLineParser, input_size, non_negative_int, number, number_list, positive_int
from facekd.evaluation.embed import available_cores
from facekd.training.throughput import cache_kind, evaluate_targets, format_report, matmul_peak, time_targets

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the helper modules beside this script
from train_phases import (TrainBenchSettings, build_trainer, time_data, time_end_to_end, time_model,  # noqa: E402
                          train_flop_per_image, write_cache_teacher)


#: ways to make the CPU training step faster, as settings changes (``--step-variants``)
STEP_VARIANTS: Dict[str, Dict[str, Any]] = {
    "channels_last": {"channels_last": True},
    "nchw": {"channels_last": False},
    "bf16": {"amp": "bf16"},
    "compile": {"compile": True},
    "store": {"store": True},
    # issue 34: the student step at this machine's limit (time them with --rounds)
    "ddp2": {"world_size": 2, "threads": 1},        # two gloo ranks x 1 thread, P x K split between them
    "threads1": {"threads": 1},
    "batch64": {"identities_per_batch": 64},        # P x K = 64 x 4 (the LR would need scaling)
    "autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
    "workers0": {"workers": 0},                     # images load in the training process
    "workers1": {"workers": 1},
}


def variant_settings(settings: "TrainBenchSettings", variant: str) -> "TrainBenchSettings":
    """``settings`` with the changes of a ``+``-joined :data:`STEP_VARIANTS` name applied."""
    changes: Dict[str, Any] = {}
    for name in variant.split("+"):
        if name not in STEP_VARIANTS:
            raise SystemExit(f"--step-variants: unknown variant {name!r} (known: {', '.join(STEP_VARIANTS)})")
        changes.update(STEP_VARIANTS[name])
    return dataclasses.replace(settings, **changes)



def bench_model(role: str, settings: TrainBenchSettings, workdir: Path, data_root: Optional[Path],
                peak_gflops: float) -> Dict[str, Any]:
    """All three phases for ``role`` (``teacher`` / ``student``)."""
    run = build_trainer(role, settings, workdir, data_root)
    cfg, task, trainer, student = run.cfg, run.task, run.trainer, role.startswith("student")
    data = time_data(trainer, settings, keep=4)
    kept = data.pop("kept")
    model = time_model(trainer, kept, settings.model_steps[role.partition(":")[0]], settings.warmup)
    end_to_end = time_end_to_end(trainer, run.clock, settings)
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
                  "cache_build_s": run.cache_s}}
    if student:
        result.update(teacher_cache=cache_kind(task), targets_ms=time_targets(task, kept))
    return result


def bench_data(settings: TrainBenchSettings, root: Path) -> Optional[Path]:
    """``--data``, or the synthetic JPEG tree written under ``root`` (None: faces generated in memory)."""
    if settings.data_dir:
        return Path(settings.data_dir)
    if settings.synthetic != "tree":
        return None
    from facekd.data import write_synthetic_tree

    return write_synthetic_tree(root / "faces", settings.num_identities, settings.images_per_identity_data, seed=0)


def run_rounds_benchmark(settings: TrainBenchSettings, rounds: int, baseline: str,
                         steps: Optional[int] = None) -> Dict[str, Any]:
    """``--rounds``: the baseline and every ``settings.step_variants`` of the student, each in its own
    processes, timed in ``rounds`` interleaved rounds (:mod:`train_rounds`); returns the report."""
    from train_rounds import format_rounds, run_rounds, variant_names

    device = torch.device(settings.device)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    names = variant_names(baseline, settings.step_variants)
    with tempfile.TemporaryDirectory(prefix="facekd_train_rounds_") as tmp:
        root = Path(tmp)
        data_root = bench_data(settings, root)
        teacher = write_cache_teacher(settings, root / "cache_teacher.pth")
        peak_start = matmul_peak(device, "none", settings.matmul_size, settings.matmul_repeats)
        result = run_rounds({name: variant_settings(settings, name) for name in names}, rounds, root, data_root,
                            teacher, steps or settings.model_steps["student"])
        peak_end = matmul_peak(device, "none", settings.matmul_size, settings.matmul_repeats)
    report = {"device": f"cpu ({available_cores()} cores)", "baseline": baseline, "rounds": rounds,
              "environment": {"torch": torch.__version__, "cores": available_cores(),
                              "load_average_before": list(load_before) if load_before else None,
                              "load_average_after": list(os.getloadavg()) if load_before else None,
                              "date": time.strftime("%Y-%m-%d %H:%M:%S")},
              "settings": json.loads(json.dumps(dataclasses.asdict(settings))),
              "matmul_peak": {"start": peak_start, "end": peak_end}, **result}
    report["table"] = format_rounds(report, baseline)
    return report


def run_benchmark(settings: TrainBenchSettings, workdir: Optional[Path] = None) -> Dict[str, Any]:
    """Measure the peak, then every model in ``settings.models``; return the report (JSON-ready)."""
    device = torch.device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="facekd_train_bench_") as tmp:
        root = Path(workdir or tmp)
        data_root = bench_data(settings, root)
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
    parser.add_argument("--rounds", type=positive_int, help="time the baseline and --step-variants in this many "
                        "interleaved rounds, each variant in its own processes (bench/train_rounds.py)")
    parser.add_argument("--baseline", default="channels_last+compile",
                        help="the --rounds variant the others are compared with (default %(default)s)")
    parser.add_argument("--steps", type=positive_int, help="--rounds: model steps timed per round (default 5)")
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
    if args.rounds:
        report = run_rounds_benchmark(settings, args.rounds, args.baseline, args.steps)
        print(f"{report['device']}, load before {report['environment']['load_average_before']}, "
              f"after {report['environment']['load_average_after']}\n{report['table']}")
    else:
        report = run_benchmark(settings)
        print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"\nreport: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
