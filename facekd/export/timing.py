"""Timing primitives of the inference benchmark (bench/bench_inference.py).

:func:`time_calls` (warm-up, then wall time per call, optionally stopped early),
:func:`time_interleaved` (several functions timed in alternating rounds, for ratios on a busy machine),
:func:`measure_matmul_peak` (the machine's fp32 matmul throughput, the yardstick for GFLOP/s),
batch runners for eager PyTorch and ONNX Runtime, and :class:`Measurement` /
:func:`measure` (one model x backend x batch size, with its throughput).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from facekd.export.check import take_faces
from facekd.export.runtime import OnnxEmbedder, resize_faces
from facekd.preprocess import normalize_uint8

#: a measurement stopped early by ``max_seconds`` still has at least this many timed runs
MIN_RUNS = 3


def time_calls(fn: Callable[[], Any], runs: int, warmup: int, max_seconds: Optional[float] = None) -> List[float]:
    """Wall seconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed calls.

    With ``max_seconds`` the timing stops early once the timed calls have taken that long
    and at least ``min(MIN_RUNS, runs)`` were made.
    """
    for _ in range(warmup):
        fn()
    times: List[float] = []
    while len(times) < runs:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if max_seconds is not None and sum(times) > max_seconds and len(times) >= min(MIN_RUNS, runs):
            break
    return times


def time_interleaved(fns: Mapping[str, Callable[[], Any]], runs: int, warmup: int,
                     max_seconds: Optional[float] = None, block_seconds: float = 0.05,
                     clock: Optional[Callable[[], float]] = None) -> Dict[str, List[float]]:
    """Wall seconds per call of each of ``fns``, timed in alternating rounds: ``{name: [seconds, ...]}``.

    Timed one after the other, two functions see different moments of a shared machine (another
    process, a clock change), and their ratio moves with it.  Here every round times a block of calls
    of each function in turn (the order rotates each round), so a slow spell hits all of them alike.
    A block is as many calls as take about ``block_seconds`` (one call of a slow function); each round
    records a block's mean per call.  ``runs`` rounds after ``warmup`` untimed calls of each; with
    ``max_seconds`` the rounds stop once they have taken that long and at least ``min(MIN_RUNS, runs)``
    were made.

    ``clock`` (default ``time.perf_counter``, wall time) reads the seconds the blocks are timed
    with; ``time.thread_time`` gives the CPU time of the calling thread instead: on a machine whose
    cores other processes oversubscribe, that leaves out the time a call waited while descheduled
    (single-threaded calls only: work of other threads is not counted).  Blocks are sized by wall time.
    """
    clock = clock or time.perf_counter
    names = list(fns)
    blocks = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        start = time.perf_counter()
        fns[name]()
        blocks[name] = max(1, round(block_seconds / max(time.perf_counter() - start, 1e-9)))
    times: Dict[str, List[float]] = {name: [] for name in names}
    spent = 0.0
    for round_index in range(runs):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            start = clock()
            for _ in range(blocks[name]):
                fns[name]()
            elapsed = clock() - start
            spent += elapsed
            times[name].append(elapsed / blocks[name])
        if max_seconds is not None and spent > max_seconds and round_index + 1 >= min(MIN_RUNS, runs):
            break
    return times


def measure_matmul_peak(size: int = 2048, repeats: int = 10, warmup: int = 2) -> Dict[str, float]:
    """The machine's fp32 matmul throughput: a ``size`` x ``size`` ``torch.mm`` timed ``repeats`` times.

    Runs on the current ``torch.get_num_threads()``.  Returns ``gflops`` from the fastest
    product (the attainable peak; ``2 * size**3`` floating-point operations each),
    ``gflops_median`` from the median one, and both times in milliseconds.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    times = time_calls(lambda: torch.mm(a, b, out=out), repeats, warmup)
    flops = 2.0 * size ** 3
    median = statistics.median(times)
    return {"size": size, "repeats": len(times), "best_ms": min(times) * 1e3, "median_ms": median * 1e3,
            "gflops": flops / min(times) / 1e9, "gflops_median": flops / median / 1e9}


def torch_batch_runner(model: nn.Module, faces: np.ndarray, batch_size: int) -> Callable[[], Any]:
    """A call embedding one normalised batch of ``batch_size`` faces with ``model`` (eager, inference mode)."""
    batch = normalize_uint8(take_faces(resize_faces(faces, int(getattr(model, "input_size", 112))), batch_size))
    model.eval()

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return run


def onnx_batch_runner(embedder: OnnxEmbedder, faces: np.ndarray, batch_size: int) -> Callable[[], Any]:
    """A call running ``embedder`` on one batch of ``batch_size`` faces, prepared in the graph's input format."""
    batch = embedder.input_format.from_uint8(take_faces(resize_faces(faces, embedder.input_size), batch_size))
    return lambda: embedder.run(batch)


@dataclass
class Measurement:
    """One model x backend x batch size."""
    model: str                 # "student" / "teacher"
    backend: str               # torch / ort-fp32 / ort-int8
    batch_size: int
    runs: int
    median_ms: float           # per batch
    min_ms: float
    images_per_s: float        # batch_size / median (or / min with ``statistic="min"``)
    macs: int                  # per image
    gflops: float              # 2 * macs * images_per_s / 1e9
    pct_peak: Optional[float] = None   # gflops / fp32 matmul peak * 100 (set by run_benchmark)

    @property
    def key(self) -> str:
        """``model/backend``, e.g. ``student/ort-fp32``."""
        return f"{self.model}/{self.backend}"


def measure(model: str, backend: str, fn: Callable[[], Any], batch_size: int, macs: int,
            settings: Any) -> Measurement:
    """Time ``fn`` (one batch of ``batch_size`` images of ``macs`` MACs each) and derive the throughput.

    ``settings`` gives ``runs``, ``warmup``, ``max_seconds`` and ``statistic`` (``median`` or ``min``),
    e.g. bench/bench_inference.py's ``BenchSettings``.
    """
    return measurement_of(model, backend, time_calls(fn, settings.runs, settings.warmup, settings.max_seconds),
                          batch_size, macs, settings.statistic)


def measurement_of(model: str, backend: str, times: List[float], batch_size: int, macs: int,
                   statistic: str = "median") -> Measurement:
    """The :class:`Measurement` of seconds per batch ``times`` (from :func:`time_calls` or
    :func:`time_interleaved`); the throughput uses their median, or their minimum with ``statistic="min"``."""
    median = statistics.median(times)
    images_per_s = batch_size / (min(times) if statistic == "min" else median)
    gflops = 2.0 * macs * images_per_s / 1e9
    return Measurement(model, backend, int(batch_size), len(times), median * 1e3, min(times) * 1e3,
                       images_per_s, int(macs), gflops)
