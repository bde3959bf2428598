"""What the training benchmark (bench/train_throughput.py) measures besides the steps: the
device's matmul peak in the training dtype, the training-speed targets (issue 12) as PASS/MISS,
and the report's text.  Kept beside the training package so the bench script stays a thin
driver of the real :class:`~facekd.training.trainer.Trainer`.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Optional

import torch

from facekd.precision import AMP_DTYPES

#: (model, quantity, threshold, device type) of issue 12
TARGETS = [
    ("teacher", "end_to_end_img_s", 4500.0, "cuda"),
    ("student", "end_to_end_img_s", 20000.0, "cuda"),
    ("teacher", "epoch_end_share", 0.02, "cuda"),
    ("student", "epoch_end_share", 0.02, "cuda"),
    ("teacher", "data_over_model", 3.0, "cpu"),
    ("student", "data_over_model", 3.0, "cpu"),
]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, amp: str, size: int, repeats: int) -> Dict[str, Any]:
    """The fastest of ``repeats`` ``size`` x ``size`` matrix products in the training dtype (GFLOP/s)."""
    dtype = AMP_DTYPES[amp] if device.type == "cuda" and AMP_DTYPES[amp] is not None else torch.float32
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    times = []
    for i in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    flops = 2.0 * size ** 3
    return {"dtype": str(dtype).replace("torch.", ""), "size": size, "gflops": flops / min(times) / 1e9,
            "gflops_median": flops / statistics.median(times) / 1e9}


def evaluate_targets(device_type: str, models: Dict[str, Dict[str, Any]], settings: Any) -> List[Dict[str, Any]]:
    """PASS/MISS of the issue-12 targets measurable here (others: ``not measured``); ``settings``
    is the bench's (its ``teacher_arch``: the teacher's target is for IResNet-100)."""
    rows = []
    for role, key, threshold, target_device in TARGETS:
        value = models.get(role, {}).get(key)
        lower_is_better = key == "epoch_end_share"
        comparable = value is not None and device_type == target_device
        if comparable and key == "end_to_end_img_s" and role == "teacher" and settings.teacher_arch != "iresnet100":
            comparable = False     # the target is for IResNet-100
        status = "not measured"
        if comparable:
            status = "PASS" if (value <= threshold if lower_is_better else value >= threshold) else "MISS"
        rows.append({"model": role, "quantity": key, "target": ("<= " if lower_is_better else ">= ") + f"{threshold:g}",
                     "device": target_device, "value": value, "status": status})
    return rows


def format_report(report: Dict[str, Any]) -> str:
    """A few lines for the terminal."""
    peak = report["matmul_peak"]["start"]
    lines = [f"device: {report['device']}  torch {report['environment']['torch']}, "
             f"{report['environment']['threads']} threads, load before {report['environment']['load_average_before']}",
             f"matmul peak ({peak['dtype']}, {peak['size']}): {peak['gflops']:.0f} GFLOP/s "
             f"(end of run: {report['matmul_peak']['end']['gflops']:.0f})", "",
             "| model | arch | batch | GFLOP/img | (a) model img/s | % peak | (b) data img/s | (c) end-to-end img/s "
             "| epoch-end share |", "|---|---|---|---|---|---|---|---|---|"]
    for role, m in report["models"].items():
        lines.append(f"| {role} | {m['arch']} | {m['batch_size']} | {m['train_gflop_per_img']:.1f} | "
                     f"{m['model_img_s']:.1f} | {m['model_pct_of_peak']:.0f} % | {m['data_img_s']:.1f} | "
                     f"{m['end_to_end_img_s']:.1f} | {100 * m['epoch_end_share']:.1f} % |")
    lines.append("")
    for role, m in report["models"].items():
        if m.get("teacher_cache"):
            lines.append(f"{role}: teacher targets from the {m['teacher_cache']} cache, lookup {m['targets_ms']:.3f} ms "
                         f"per batch in a {m['model_step_ms']:.0f} ms model step")
    lines.append("ratios (same run): " + ", ".join(f"{k} {v:.2f}x" for k, v in report["ratios"].items()))
    for row in report["targets"]:
        value = "-" if row["value"] is None else f"{row['value']:.3g}"
        lines.append(f"target {row['model']} {row['quantity']} {row['target']} ({row['device']}): "
                     f"{value} {row['status']}")
    return "\n".join(lines)


def time_targets(task: Any, batches: List[Dict[str, Any]], repeats: int = 50) -> Optional[float]:
    """Median ms of the step's teacher-target lookup for one batch (the part of the step a cache
    serves; None for online targets, which are the teacher's forward pass)."""
    targets = task.targets
    if targets is None or targets.teacher_images:
        return None
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        targets.embeddings(batches[i % len(batches)])
        synchronize(task.device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cache_kind(task: Any) -> Optional[str]:
    """Which cache feeds the student's targets: ``store float16``, ``file float32`` or None (online)."""
    targets = task.targets
    if targets is None or targets.teacher_images:
        return None
    cache = getattr(targets, "cache", None) or task.cache
    return f"{'store' if cache.store is not None else 'file'} {str(cache.embeddings.dtype).replace('torch.', '')}"
