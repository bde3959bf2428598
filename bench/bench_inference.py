#!/usr/bin/env python3
"""CPU inference speed of the student (PyTorch eager, ONNX Runtime fp32 and INT8) vs the teacher.

    python3 bench/bench_inference.py                      # random-init MobileFaceNet vs IResNet-100
    python3 bench/bench_inference.py --quick --out bench.json
    python3 bench/bench_inference.py --student runs/kd/best.pt --teacher runs/teacher/best.pt \
        --teacher-onnx --val lfw:data/lfw/pairs.txt --out bench.json

For every model, backend and batch size the script reports the median latency of one batch
(after warm-up) and the throughput (images/s).  Every result is also put in relation to
numbers measured *in the same run*, so that they survive a busy or different machine:

* ratios of throughputs (student ORT fp32 / teacher, INT8 / fp32, ...);
* the achieved GFLOP/s (``2 * MACs * images/s``, MACs from
  :func:`facekd.models.count_macs`) as a share of the machine's fp32 matmul peak, timed with
  a large ``torch.mm`` at the start and the end of the run.

The targets of the export issue are printed as PASS/MISS (they are not asserted): student
ORT fp32 >= 25x the teacher's throughput, INT8 >= 1.5x fp32 throughput, and an LFW
accuracy drop of INT8 vs fp32 <= 0.2 pt (only with ``--val``).

The ONNX exports have their PReLUs rewritten (:mod:`facekd.export.prelu`, exact;
``--prelu-baseline`` also times the export with ``PRelu`` nodes), INT8 is calibrated on
``--calib`` faces (synthetic, or a folder of real aligned faces), and the student's ONNX
models are profiled per layer type (depthwise / pointwise / dense / prelu: GFLOP/s, GB/s and
the share of the roofline, ``min(peak, FLOP/byte x memory bandwidth)``).

Random-init weights (the default without checkpoints) are fine for speed; their BatchNorm
statistics are first set from one train-mode pass over synthetic faces so activations (and
the INT8 calibration ranges) have realistic scales -- a freshly initialised IResNet-100
otherwise overflows to NaN.  See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from facekd.argtypes import OneLineParser, input_size, non_negative_int, number_list, positive_float, positive_int
from facekd.export import (OnnxEmbedder, check_export, check_int8, export_onnx, load_checkpoint_model, load_faces,
                           quantize_int8, synthetic_faces)
from facekd.export.check import MIN_INT8_COSINE, take_faces
from facekd.export.cpu_features import int8_capability
from facekd.export.metadata import ExportMetadata
from facekd.export.prelu import DEFAULT_PRELU_REWRITE, INT8_PRELU_REWRITE
from facekd.export.int8_options import Int8Options
from facekd.export.quantize import int8_source
from facekd.export.profiling import add_roofline, measure_memory_bandwidth, profile_layer_types
from facekd.export.runtime import resize_faces
from facekd.models import MODELS, count_macs, count_parameters
from facekd.preprocess import normalize_uint8

from facekd.export.speed_report import (BACKEND_LABELS, ORT_FP32, ORT_FP32_PRELU, ORT_INT8, TORCH, compute_ratios,
                                        default_int8_row, evaluate_targets, format_report, int8_row, int8_speedups)
from facekd.export.timing import (MIN_RUNS, Measurement, measure, measure_matmul_peak, measurement_of,
                                  onnx_batch_runner, time_interleaved, torch_batch_runner)


# --------------------------------------------------------------------------- settings and models

@dataclass
class BenchSettings:
    """How long and on what the benchmark runs.

    Attributes:
        batch_sizes: batch sizes to time.
        threads: ``torch.set_num_threads`` and onnxruntime intra-op threads.
        runs: timed calls per measurement (the median is reported).
        warmup: untimed calls before them.
        max_seconds: a measurement stops after this many seconds of timed calls once it
            has :data:`MIN_RUNS` runs (the number actually made is reported).
        matmul_size: side of the square fp32 ``torch.mm`` that measures the machine's peak.
        matmul_repeats: timed matmuls at the start and at the end of the run (the fastest counts).
        faces: synthetic faces the batches are cycled from (also BatchNorm/drift faces).
        calibration_faces: faces for the INT8 calibration.
        input_format: ONNX input, ``float`` (normalised NCHW, what PyTorch gets) or ``uint8``.
        calibration: where the calibration faces come from: ``synthetic`` or a folder of
            (aligned) real faces (:func:`facekd.export.load_faces`).
        prelu: the PReLU rewrite of the ONNX exports (``None``: keep ``PRelu`` nodes).
        int8_prelu: the PReLU rewrite of the INT8 models (default ``dwconv1``, as ``facekd export``);
            where it differs from ``prelu`` they are quantised from a ``PRelu`` export.
        prelu_baseline: also time the student's fp32 export with its ``PRelu`` nodes.
        profile: profile the student's ONNX models per layer type (roofline table).
        profile_runs: profiled calls at the largest batch size.
        statistic: ``median`` (default) or ``min``: which per-batch time gives the throughput
            (and the ratios); ``min`` suits a machine other processes load.
    """
    batch_sizes: Tuple[int, ...] = (1, 64)
    threads: int = 2
    runs: int = 20
    warmup: int = 3
    max_seconds: float = 30.0
    matmul_size: int = 2048
    matmul_repeats: int = 10
    faces: int = 32
    calibration_faces: int = 128
    input_format: str = "float"
    calibration: str = "synthetic"
    prelu: Optional[str] = DEFAULT_PRELU_REWRITE
    int8_prelu: Optional[str] = INT8_PRELU_REWRITE
    prelu_baseline: bool = False
    profile: bool = True
    profile_runs: int = 3
    statistic: str = "median"

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchSettings":
        """Tiny settings for a smoke test (numbers are noisy): batch 1 and 8, 3 runs, 1024 matmul."""
        settings = cls(batch_sizes=(1, 8), runs=3, warmup=1, max_seconds=5.0, matmul_size=1024,
                       matmul_repeats=5, faces=8, calibration_faces=16, profile_runs=1)
        return replace(settings, **overrides)


@dataclass
class BenchModel:
    """A model to benchmark and where it came from."""
    role: str                  # "student" or "teacher"
    name: str                  # architecture, e.g. "mobilefacenet"
    model: nn.Module
    source: str                # checkpoint path or "random init"
    random_init: bool
    _description: Optional[Dict[str, Any]] = field(default=None, init=False, repr=False)

    @property
    def input_size(self) -> int:
        """Side of the square face the model takes."""
        return int(getattr(self.model, "input_size", 112))

    def describe(self) -> Dict[str, Any]:
        """JSON-ready facts: architecture, source, input size, embedding size, params, MACs (cached)."""
        if self._description is None:
            self._description = self._describe()
        return dict(self._description)

    def _describe(self) -> Dict[str, Any]:
        return {"name": self.name, "source": self.source, "random_init": self.random_init,
                "input_size": self.input_size,
                "embedding_size": int(getattr(self.model, "embedding_size", 0)) or None,
                "params": count_parameters(self.model), "macs": count_macs(self.model, self.input_size)}


def calibrate_batchnorm(model: nn.Module, faces: np.ndarray) -> nn.Module:
    """Set every BatchNorm's running statistics from one train-mode pass over ``faces`` (eval mode after).

    For random-init models only: default statistics (mean 0, variance 1) leave the
    activations unnormalised, which overflows deep networks (IResNet-100 -> NaN) and makes
    INT8 calibration meaningless.  ``faces`` are aligned uint8 faces (at least 2).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    with torch.no_grad():
        for norm in norms:
            norm.momentum = None            # cumulative average: the pass below sets the stats
            norm.reset_running_stats()
        model.train()(normalize_uint8(resize_faces(faces, int(getattr(model, "input_size", 112)))))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    return model.eval()


def load_bench_model(role: str, spec: Optional[str], default_arch: str, embedding_size: int,
                     input_size: int, faces: np.ndarray) -> BenchModel:
    """A :class:`BenchModel` from a checkpoint path or an architecture name (random init).

    ``spec`` is a facekd checkpoint (rebuilt with :func:`facekd.export.load_checkpoint_model`;
    ``default_arch``/``embedding_size``/``input_size`` describe a plain state dict), a
    :data:`facekd.models.MODELS` name, or ``None`` for ``default_arch``.  Random-init models
    get their BatchNorm statistics from ``faces`` (:func:`calibrate_batchnorm`).
    """
    spec = spec or default_arch
    if os.path.isfile(spec):
        model, info = load_checkpoint_model(spec, default_arch, embedding_size, input_size)
        return BenchModel(role, str(info.model_config.get("name")), model, spec, random_init=False)
    if spec not in MODELS:
        raise SystemExit(f"--{role} {spec!r}: neither a checkpoint file nor a model name "
                         f"(known: {', '.join(MODELS)})")
    torch.manual_seed(0)
    model = MODELS.build(spec, embedding_size=embedding_size, input_size=input_size)
    return BenchModel(role, spec, calibrate_batchnorm(model, faces), "random init", random_init=True)


# --------------------------------------------------------------------------- the benchmark

def export_model(bench_model: BenchModel, path: Path, faces: np.ndarray, settings: BenchSettings,
                 prelu: Optional[str] = DEFAULT_PRELU_REWRITE) -> Dict[str, Any]:
    """Export ``bench_model`` to ONNX fp32 at ``path`` (BatchNorm folded, PReLU rewritten) and check it at batch 2."""
    description = bench_model.describe()
    export_onnx(bench_model.model, path, input_format=settings.input_format, prelu=prelu,
                metadata=ExportMetadata(model_name=bench_model.name, params=description["params"],
                                        macs=description["macs"]))
    check = check_export(path, bench_model.model, faces, batch_sizes=(2,), threads=settings.threads)
    return {"path": str(path), "mb": path.stat().st_size / 2 ** 20, "min_cosine_vs_torch": check.min_cosine}


def time_model(bench_model: BenchModel, onnx_paths: Dict[str, Path], faces: np.ndarray,
               settings: BenchSettings, log: Callable[[str], None] = lambda text: None,
               eager: bool = True) -> List[Measurement]:
    """Time ``bench_model`` in PyTorch eager (unless ``eager`` is false) and with each of its ONNX files,
    at every batch size.

    ``onnx_paths`` maps ``role/backend`` (``student/ort-fp32``, ...) to ONNX files.  The onnxruntime
    backends of one batch size are timed interleaved (:func:`~facekd.export.timing.time_interleaved`),
    so their ratios (INT8 / fp32) hold on a machine that other processes share; their sessions exist
    only while the model is timed.
    """
    role, macs = bench_model.role, bench_model.describe()["macs"]
    measurements = []
    for batch_size in settings.batch_sizes if eager else ():
        log(f"{role} {BACKEND_LABELS[TORCH]} batch {batch_size}")
        measurements.append(measure(role, TORCH, torch_batch_runner(bench_model.model, faces, batch_size),
                                    batch_size, macs, settings))
    embedders = {backend: OnnxEmbedder(onnx_paths[f"{role}/{backend}"], threads=settings.threads)
                 for backend in (ORT_FP32, ORT_FP32_PRELU, ORT_INT8) if f"{role}/{backend}" in onnx_paths}
    for batch_size in settings.batch_sizes if embedders else ():
        log(f"{role} {', '.join(BACKEND_LABELS[b] for b in embedders)} batch {batch_size}, interleaved")
        times = time_interleaved({backend: onnx_batch_runner(embedder, faces, batch_size)
                                  for backend, embedder in embedders.items()},
                                 settings.runs, settings.warmup, settings.max_seconds)
        measurements += [measurement_of(role, backend, seconds, batch_size, macs, settings.statistic)
                         for backend, seconds in times.items()]
    order = [TORCH, *embedders]
    return sorted(measurements, key=lambda m: (order.index(m.backend), m.batch_size))


def run_benchmark(student: BenchModel, teacher: Optional[BenchModel] = None,
                  settings: Optional[BenchSettings] = None, workdir: Optional[os.PathLike] = None,
                  teacher_onnx: bool = False, pair_sets: Sequence[Any] = (),
                  log: Callable[[str], None] = lambda text: None, int8_variants: Sequence[Int8Options] = (),
                  check_faces: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Benchmark ``student`` (eager, ORT fp32, ORT INT8) against ``teacher`` (eager, optionally ORT fp32).

    Args:
        student: the student model (its ONNX files are written to ``workdir``).
        teacher: the teacher, or ``None`` to skip it.
        settings: :class:`BenchSettings` (default: the full benchmark).
        workdir: folder for the ONNX files (default: a temporary folder, removed afterwards).
        teacher_onnx: also export the teacher and time it with onnxruntime fp32.
        pair_sets: verification pair sets on which fp32 and INT8 accuracy are compared.
        log: called with a line of progress before each step.
        int8_variants: more INT8 option sets (:class:`facekd.export.int8_options.Int8Options`), each
            quantised, checked and timed in this run beside the default (``int8_options`` in the report).
        check_faces: aligned faces for the INT8 drift (default: the synthetic timing faces); real,
            held-out faces judge INT8 as a user would.

    Returns:
        The JSON-ready report: ``settings``, ``environment``, ``models``, ``matmul_peak``,
        ``results`` (one entry per model/backend/batch size), ``ratios``, ``targets``,
        ``onnx`` (exported files) and ``quantization``.
    """
    settings = settings or BenchSettings()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="facekd-bench-") as tmp:
            return run_benchmark(student, teacher, settings, tmp, teacher_onnx, pair_sets, log, int8_variants,
                                 check_faces)
    from facekd.evaluation.runner import environment

    workdir = Path(workdir)
    # the load before this run starts: other processes competing for the cores
    loadavg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        faces = synthetic_faces(settings.faces, seed=0)
        models = [m for m in (student, teacher) if m is not None]
        descriptions = {m.role: m.describe() for m in models}

        log(f"exporting the student to ONNX fp32 and INT8 in {workdir}")
        onnx_info = {"student/ort-fp32": export_model(student, workdir / "student_fp32.onnx", faces, settings,
                                                      settings.prelu)}
        if settings.prelu_baseline:
            onnx_info["student/ort-fp32-prelu"] = export_model(student, workdir / "student_fp32_prelu.onnx",
                                                               faces, settings, prelu=None)
        quantized_from = int8_source(workdir / "student_fp32.onnx", settings.prelu, settings.int8_prelu,
                                     workdir / "student_fp32_prelu.onnx",
                                     lambda path: export_model(student, path, faces, settings, prelu=None))
        calibration = load_faces(settings.calibration, settings.calibration_faces, seed=1)
        drift_faces = faces if check_faces is None else check_faces
        quant = check_int8(quantize_int8(quantized_from, workdir / "student_int8.onnx", calibration,
                                         prelu=settings.int8_prelu, rewrite_faces=drift_faces, threads=settings.threads,
                                         calibration_source=settings.calibration),
                           drift_faces, pair_sets, threads=settings.threads)
        onnx_info["student/ort-int8"] = {"path": quant.int8_path, "mb": quant.int8_mb}
        if teacher is not None and teacher_onnx:
            log("exporting the teacher to ONNX fp32")
            onnx_info["teacher/ort-fp32"] = export_model(teacher, workdir / "teacher_fp32.onnx", faces, settings,
                                                         settings.prelu)
        paths = {key: Path(info["path"]) for key, info in onnx_info.items()}

        log(f"fp32 matmul peak ({settings.matmul_size}x{settings.matmul_size}, {settings.threads} threads) "
            "and memory bandwidth")
        peak_start = measure_matmul_peak(settings.matmul_size, settings.matmul_repeats)
        bandwidth_start = measure_memory_bandwidth()
        measurements = [m for bench_model in models for m in time_model(bench_model, paths, faces, settings, log)]
        variants = [default_int8_row(quant, measurements)] + [
            time_int8_variant(student, quantized_from, workdir / f"student_int8_{number}.onnx", options,
                              calibration, drift_faces, pair_sets, faces, settings, paths["student/ort-fp32"], log)
            for number, options in enumerate(int8_variants, 1)]
        layers = {}
        if settings.profile:
            layers = profile_student(student, paths, faces, settings, log)
        peak_end = measure_matmul_peak(settings.matmul_size, settings.matmul_repeats)
        bandwidth_end = measure_memory_bandwidth()
    finally:
        torch.set_num_threads(previous_threads)

    # the peak is the fastest matmul seen at the start or the end of the run
    peak = {"size": settings.matmul_size, "repeats": settings.matmul_repeats,
            "gflops": max(peak_start["gflops"], peak_end["gflops"]),
            "start": peak_start, "end": peak_end}
    bandwidth = {"gbps": max(bandwidth_start, bandwidth_end), "start": bandwidth_start, "end": bandwidth_end}
    for m in measurements:
        m.pct_peak = 100.0 * m.gflops / peak["gflops"]
    for stats in layers.values():
        for stat in stats:
            add_roofline(stat, peak["gflops"], bandwidth["gbps"])
    ratios = compute_ratios(measurements)
    accuracy_note = ("random-init student: the accuracy numbers are meaningless (pass --student CKPT)"
                     if quant.verification and student.random_init else None)
    report = {
        "settings": {**asdict(settings), "batch_sizes": list(settings.batch_sizes)},
        "environment": {**environment("cpu"), "threads": settings.threads,
                        "onnxruntime": _onnxruntime_version(), "cpu_count": os.cpu_count(),
                        "int8_cpu": int8_capability(),
                        "loadavg_1min_before": loadavg},
        "models": descriptions,
        "matmul_peak": peak,
        "memory_bandwidth": bandwidth,
        "results": [{**asdict(m), "key": m.key} for m in measurements],
        "ratios": ratios,
        "targets": evaluate_targets(ratios, quant.verification, accuracy_note),
        "onnx": onnx_info,
        "quantization": quant.to_dict(),
        "int8_options": variants,
        "layers": layers,
    }
    return report


def time_int8_variant(student: BenchModel, fp32_path: Path, path: Path, options: Int8Options, calibration: np.ndarray,
                      check_faces: np.ndarray, pair_sets: Sequence[Any], faces: np.ndarray,
                      settings: BenchSettings, timed_fp32: Path,
                      log: Callable[[str], None] = lambda text: None) -> Dict[str, Any]:
    """Quantise the student's fp32 export ``fp32_path`` to ``path`` with ``options``, measure its drift and
    accuracy, and time it at every batch size interleaved with the fp32 model ``timed_fp32`` (the export
    the default INT8 model is compared with): one ``int8_options`` row."""
    log(f"INT8 variant {options.describe()}")
    quant = check_int8(quantize_int8(fp32_path, path, calibration, options, prelu=settings.int8_prelu,
                                     rewrite_faces=check_faces, threads=settings.threads,
                                     calibration_source=settings.calibration),
                       check_faces, pair_sets, threads=settings.threads)
    paths = {f"student/{ORT_FP32}": timed_fp32, f"student/{ORT_INT8}": path}
    timed = time_model(student, paths, faces, settings, eager=False)
    return int8_row(options.describe(), quant, int8_speedups([m for m in timed if m.backend == ORT_INT8],
                                                          [m for m in timed if m.backend == ORT_FP32]),
                     MIN_INT8_COSINE)


def profile_student(student: BenchModel, paths: Dict[str, Path], faces: np.ndarray, settings: BenchSettings,
                    log: Callable[[str], None] = lambda text: None) -> Dict[str, List[Dict[str, Any]]]:
    """Per-layer-type profile (:func:`facekd.export.profiling.profile_layer_types`) of the student's
    ONNX models at the largest batch size: ``{"student/ort-fp32": [stat dict, ...], ...}``.

    The int8 model's FLOPs come from the fp32 graph it was quantised from (same node names).
    """
    batch_size = max(settings.batch_sizes)
    out = {}
    for backend, element_bytes in ((ORT_FP32, 4), (ORT_FP32_PRELU, 4), (ORT_INT8, 1)):
        key = f"student/{backend}"
        if key not in paths:
            continue
        log(f"profiling {key} per layer type at batch {batch_size}")
        embedder = OnnxEmbedder(paths[key], threads=settings.threads)
        feed = embedder.input_format.from_uint8(take_faces(resize_faces(faces, embedder.input_size), batch_size))
        cost_model = paths["student/ort-fp32"] if backend == ORT_INT8 else paths[key]
        stats = profile_layer_types(paths[key], feed, runs=settings.profile_runs, threads=settings.threads,
                                    element_bytes=element_bytes, cost_model=cost_model)
        out[key] = [{**stat.to_dict(), "batch_size": batch_size} for stat in stats]
    return out


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# --------------------------------------------------------------------------- command line

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", help="facekd student checkpoint (default: random-init MobileFaceNet)")
    parser.add_argument("--teacher", default="iresnet100", help="teacher checkpoint or architecture name (default: iresnet100)")
    parser.add_argument("--skip-teacher", action="store_true", help="benchmark the student only")
    parser.add_argument("--teacher-onnx", action="store_true", help="also time the teacher's ONNX (fp32)")
    parser.add_argument("--input-size", type=input_size, default=112, help="face side of random-init models (default 112)")
    parser.add_argument("--embedding-size", type=positive_int, default=128, help="random-init student's embedding size (default 128)")
    parser.add_argument("--batch-sizes", type=number_list(int, ge=1), help="comma separated (default 1,64; 1,8 with --quick)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch and onnxruntime intra-op threads (default 2)")
    parser.add_argument("--runs", type=positive_int, help="timed calls per measurement (default 20; 3 with --quick)")
    parser.add_argument("--warmup", type=non_negative_int, help="untimed calls first (default 3; 1 with --quick)")
    parser.add_argument("--max-seconds", type=positive_float,
                        help=f"stop a measurement after this many timed seconds (>= {MIN_RUNS} runs; "
                             "default 30; 5 with --quick)")
    parser.add_argument("--input-format", choices=("float", "uint8"), default="float",
                        help="ONNX input: float (normalised NCHW, like PyTorch; default) or uint8 "
                             "(normalisation in the graph)")
    parser.add_argument("--calib", default="synthetic",
                        help="INT8 calibration faces: a folder of aligned real faces (e.g. runs/cpu_scale/aligned/"
                             "celeba) or 'synthetic' (default)")
    parser.add_argument("--calib-count", type=positive_int, help="INT8 calibration faces (default 128; 16 with --quick)")
    parser.add_argument("--prelu", default=DEFAULT_PRELU_REWRITE,
                        help=f"PReLU rewrite of the ONNX exports (default {DEFAULT_PRELU_REWRITE}; 'none' keeps PRelu)")
    parser.add_argument("--int8-prelu", default=INT8_PRELU_REWRITE,
                        help=f"PReLU rewrite of the INT8 models (default {INT8_PRELU_REWRITE}; 'none' keeps PRelu)")
    parser.add_argument("--prelu-baseline", action="store_true",
                        help="also time the student's fp32 export with its PRelu nodes (what was exported before)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-layer-type profile")
    parser.add_argument("--statistic", choices=("median", "min"), default="median",
                        help="per-batch time behind throughputs and ratios: median (default) or min "
                             "(the fastest run: least affected by other processes on a shared machine)")
    parser.add_argument("--val", action="append", default=[], metavar="KIND:PATH",
                        help="verification set for the fp32-vs-INT8 accuracy drop (lfw:PATH, bin:PATH, ...); "
                             "repeatable; meaningful with a trained --student")
    parser.add_argument("--int8-variant", action="append", default=[], metavar="OPTIONS",
                        help="another INT8 option set quantised, checked and timed beside the default, as "
                             "key=value;... (facekd.export.int8_options.Int8Options.parse), e.g. "
                             "'calibrate_method=percentile' or 'keep_float=first,last'; repeatable")
    parser.add_argument("--check-faces", metavar="DIR",
                        help="held-out aligned faces for the INT8 drift (64; default: the synthetic timing faces)")
    parser.add_argument("--keep", metavar="DIR", help="write the ONNX files here instead of a temporary folder")
    parser.add_argument("--out", metavar="JSON", help="write all numbers as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny runs for a smoke test (noisy numbers)")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """:class:`BenchSettings` for the options (``--quick`` first, explicit options override it)."""
    settings = BenchSettings.quick() if args.quick else BenchSettings()
    overrides: Dict[str, Any] = {"threads": args.threads, "input_format": args.input_format,
                                 "calibration": args.calib, "prelu": None if args.prelu == "none" else args.prelu,
                                 "int8_prelu": None if args.int8_prelu == "none" else args.int8_prelu,
                                 "prelu_baseline": args.prelu_baseline, "profile": not args.no_profile,
                                 "statistic": args.statistic}
    if args.batch_sizes:
        overrides["batch_sizes"] = tuple(args.batch_sizes)
    for option, name in (("runs", "runs"), ("warmup", "warmup"), ("max_seconds", "max_seconds"),
                         ("calib_count", "calibration_faces")):
        if getattr(args, option) is not None:
            overrides[name] = getattr(args, option)
    return replace(settings, **overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark from the command line; print the table, optionally write JSON."""
    args = parse_args(argv)
    settings = settings_from_args(args)
    log = lambda text: print(f"... {text}", file=sys.stderr, flush=True)  # noqa: E731
    faces = synthetic_faces(max(settings.faces, 8), seed=0)
    log("building the models")
    student = load_bench_model("student", args.student, "mobilefacenet", args.embedding_size, args.input_size, faces)
    teacher = None if args.skip_teacher else load_bench_model("teacher", args.teacher, "iresnet100", 512,
                                                              args.input_size, faces)
    pair_sets = []
    if args.val:
        from facekd.evaluation.runner import ValSpec, build_pair_sets
        pair_sets = [pair_set for pair_set, _ in build_pair_sets([ValSpec.parse(v) for v in args.val])]
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    variants = [Int8Options.parse(text) for text in args.int8_variant]
    check_faces = load_faces(args.check_faces, 64, seed=0) if args.check_faces else None
    report = run_benchmark(student, teacher, settings, args.keep, args.teacher_onnx, pair_sets, log, variants,
                           check_faces)
    print(format_report(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
