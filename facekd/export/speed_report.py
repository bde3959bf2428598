"""What the inference benchmark (bench/bench_inference.py) makes of its measurements:
throughput ratios measured in the same run (:data:`RATIO_SPECS`), the export issue's targets
as PASS/MISS rows, and the text report."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from facekd.export.check import MIN_INT8_COSINE
from facekd.export.cpu_features import describe_int8_capability
from facekd.export.timing import Measurement

#: student ORT fp32 throughput / teacher throughput must reach this
TARGET_TEACHER_SPEEDUP = 25.0
#: student ORT INT8 throughput / student ORT fp32 throughput must reach this
TARGET_INT8_SPEEDUP = 1.5
#: largest acceptable verification accuracy drop of INT8 vs fp32, in percentage points
TARGET_INT8_MAX_DROP_PT = 0.2

TORCH = "torch"
ORT_FP32 = "ort-fp32"
ORT_INT8 = "ort-int8"
ORT_FP32_PRELU = "ort-fp32-prelu"
BACKEND_LABELS = {TORCH: "PyTorch eager", ORT_FP32: "ORT fp32", ORT_INT8: "ORT INT8",
                  ORT_FP32_PRELU: "ORT fp32 PRelu"}


#: (name, numerator, denominator): throughput ratios reported when both sides were measured
RATIO_SPECS = (
    ("student ORT fp32 / teacher eager", "student/ort-fp32", "teacher/torch"),
    ("student ORT INT8 / teacher eager", "student/ort-int8", "teacher/torch"),
    ("student eager / teacher eager", "student/torch", "teacher/torch"),
    ("student ORT fp32 / teacher ORT fp32", "student/ort-fp32", "teacher/ort-fp32"),
    ("student ORT INT8 / student ORT fp32", "student/ort-int8", "student/ort-fp32"),
    ("student ORT fp32 / student eager", "student/ort-fp32", "student/torch"),
    ("student ORT fp32 / ORT fp32 PRelu", "student/ort-fp32", "student/ort-fp32-prelu"),
    ("student ORT INT8 / ORT fp32 PRelu", "student/ort-int8", "student/ort-fp32-prelu"),
    ("teacher ORT fp32 / teacher eager", "teacher/ort-fp32", "teacher/torch"),
)


def compute_ratios(measurements: Sequence[Measurement]) -> List[Dict[str, Any]]:
    """Throughput quotients of :data:`RATIO_SPECS` at each batch size where both sides were measured."""
    by_key = {(m.key, m.batch_size): m for m in measurements}
    batch_sizes = sorted({m.batch_size for m in measurements})
    ratios = []
    for name, numerator, denominator in RATIO_SPECS:
        for batch_size in batch_sizes:
            top, bottom = by_key.get((numerator, batch_size)), by_key.get((denominator, batch_size))
            if top and bottom:
                ratios.append({"name": name, "numerator": numerator, "denominator": denominator,
                               "batch_size": batch_size, "value": top.images_per_s / bottom.images_per_s})
    return ratios


def evaluate_targets(ratios: Sequence[Dict[str, Any]], verification: Optional[Dict[str, Dict[str, float]]],
                     accuracy_note: Optional[str] = None) -> List[Dict[str, Any]]:
    """The issue's targets as ``{"name", "batch_size", "value", "threshold", "status"}`` rows.

    ``status`` is ``PASS``/``MISS``, or ``not measured`` (teacher skipped, no ``--val``).
    ``verification`` maps a pair set to :func:`facekd.export.quantize.compare_verification`
    metrics (``drop`` is a fraction; the target is in percentage points).
    """
    def ratio_rows(name: str, threshold: float, label: str) -> List[Dict[str, Any]]:
        rows = [{"name": label, "batch_size": r["batch_size"], "value": r["value"], "threshold": threshold,
                 "unit": "x", "status": "PASS" if r["value"] >= threshold else "MISS"}
                for r in ratios if r["name"] == name]
        return rows or [{"name": label, "batch_size": None, "value": None, "threshold": threshold,
                         "unit": "x", "status": "not measured"}]

    targets = ratio_rows("student ORT fp32 / teacher eager", TARGET_TEACHER_SPEEDUP,
                         f"student ORT fp32 >= {TARGET_TEACHER_SPEEDUP:g}x teacher throughput")
    if any(r["name"] == "student ORT fp32 / teacher ORT fp32" for r in ratios):
        targets += ratio_rows("student ORT fp32 / teacher ORT fp32", TARGET_TEACHER_SPEEDUP,
                              f"student ORT fp32 >= {TARGET_TEACHER_SPEEDUP:g}x teacher ORT fp32 throughput")
    targets += ratio_rows("student ORT INT8 / student ORT fp32", TARGET_INT8_SPEEDUP,
                          f"INT8 >= {TARGET_INT8_SPEEDUP:g}x fp32 throughput")
    label = f"INT8 accuracy drop <= {TARGET_INT8_MAX_DROP_PT:g} pt"
    if not verification:
        targets.append({"name": label, "batch_size": None, "value": None, "threshold": TARGET_INT8_MAX_DROP_PT,
                        "unit": "pt", "status": "not measured", "note": accuracy_note or "no --val set given"})
    for set_name, metrics in (verification or {}).items():
        drop_pt = 100.0 * metrics["drop"]
        row = {"name": f"{label} ({set_name})", "batch_size": None, "value": drop_pt,
               "threshold": TARGET_INT8_MAX_DROP_PT, "unit": "pt",
               "status": "PASS" if drop_pt <= TARGET_INT8_MAX_DROP_PT else "MISS"}
        if accuracy_note:
            row["note"] = accuracy_note
        targets.append(row)
    return targets


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: Dict[str, Any]) -> str:
    """The report as text: machine, models, the timing table, ratios and targets."""
    env, peak = report["environment"], report["matmul_peak"]
    lines = [f"CPU inference benchmark: torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
             f"{env['threads']} threads ({env['cpu_count']} cores; load average before the run "
             f"{_fmt(env['loadavg_1min_before'], '.2f')})",
             f"fp32 matmul peak ({peak['size']}x{peak['size']} torch.mm, best of {peak['repeats']} at start and end): "
             f"{peak['gflops']:.1f} GFLOP/s (start {peak['start']['gflops']:.1f}, end {peak['end']['gflops']:.1f}; "
             f"medians {peak['start']['gflops_median']:.1f}, {peak['end']['gflops_median']:.1f})"]
    if env.get("int8_cpu"):
        lines.append(describe_int8_capability(env["int8_cpu"]))
    if report.get("memory_bandwidth"):
        bandwidth = report["memory_bandwidth"]
        lines.append(f"memory bandwidth (128 MB copy, best of start and end): {bandwidth['gbps']:.1f} GB/s "
                     f"(ridge point {peak['gflops'] / bandwidth['gbps']:.1f} FLOP/byte)")
    for role, d in report["models"].items():
        lines.append(f"{role}: {d['name']} {d['input_size']}px {d['embedding_size']}-d, "
                     f"{d['params'] / 1e6:.2f}M params, {d['macs'] / 1e9:.3f} GMACs/image, {d['source']}")
    if any(d["random_init"] for d in report["models"].values()):
        lines.append("  (random-init weights, BatchNorm statistics from synthetic faces: fine for speed)")
    if env.get("loadavg_1min_before") and env["loadavg_1min_before"] > 1.0:
        lines.append(f"  note: load average {env['loadavg_1min_before']:.1f} on {env['cpu_count']} cores: other processes "
                     "compete for the CPU; absolute numbers are low and PyTorch eager (OpenMP) suffers most")

    lines += ["", f"{'model':<8} {'backend':<14} {'batch':>5} {'runs':>4} {'median ms':>10} {'min ms':>8} "
                  f"{'images/s':>10} {'GFLOP/s':>8} {'% peak':>7}"
              + ("   (images/s from the min)" if report["settings"].get("statistic") == "min" else "")]
    for r in report["results"]:
        lines.append(f"{r['model']:<8} {BACKEND_LABELS[r['backend']]:<14} {r['batch_size']:>5} {r['runs']:>4} "
                     f"{r['median_ms']:>10.2f} {r['min_ms']:>8.2f} {r['images_per_s']:>10.1f} {r['gflops']:>8.2f} {r['pct_peak']:>6.1f}%")

    batch_sizes = sorted({r["batch_size"] for r in report["results"]})
    names = list(dict.fromkeys(r["name"] for r in report["ratios"]))
    if names:
        values = {(r["name"], r["batch_size"]): r["value"] for r in report["ratios"]}
        lines += ["", f"{'throughput ratio (same run)':<38}" + "".join(f"{'batch ' + str(b):>10}" for b in batch_sizes)]
        for name in names:
            lines.append(f"{name:<38}" + "".join(f"{_fmt(values.get((name, b)), '.2f') + 'x':>10}"
                                                 for b in batch_sizes))

    lines += format_speedup_vs_accuracy(report)
    lines += format_int8_options(report)
    lines += format_layers(report)
    lines += ["", "targets"]
    for t in report["targets"]:
        where = f" (batch {t['batch_size']})" if t["batch_size"] is not None else ""
        value = "" if t["value"] is None else (f": {t['value']:.2f}x" if t["unit"] == "x" else f": {t['value']:+.2f} pt")
        note = f"  [{t['note']}]" if t.get("note") else ""
        lines.append(f"  {t['name']}{where}{value}  {t['status']}{note}")
    quant = report["quantization"]
    if quant.get("drift"):
        lines.append(f"  INT8 drift vs fp32 on {quant['drift']['faces']} faces: cosine mean "
                     f"{quant['drift']['mean_cosine']:.4f}, min {quant['drift']['min_cosine']:.4f}")
    return "\n".join(lines)


def format_speedup_vs_accuracy(report: Dict[str, Any]) -> List[str]:
    """INT8 / fp32 throughput at each batch size beside the INT8 accuracy change on each pair set."""
    speedups = [r for r in report["ratios"] if r["name"] == "student ORT INT8 / student ORT fp32"]
    if not speedups:
        return []
    quant = report["quantization"]
    speed = ", ".join(f"{r['value']:.2f}x at batch {r['batch_size']}" for r in speedups)
    lines = ["", f"INT8 (calibrated on {quant['calibration_faces']} {quant.get('calibration_source', '')} faces, "
                 f"PReLU rewrite {quant.get('prelu_rewrite')}): {speed} the fp32 throughput"]
    for name, m in quant.get("verification", {}).items():
        lines.append(f"  accuracy on {name}: fp32 {100 * m['fp32_accuracy']:.2f}% -> INT8 "
                     f"{100 * m['int8_accuracy']:.2f}% ({-100 * m['drop']:+.2f} pt; flip "
                     f"{100 * m['fp32_flip_accuracy']:.2f}% -> {100 * m['int8_flip_accuracy']:.2f}%; "
                     f"{m.get('decisions_changed', '?')} of {m.get('pairs', '?')} decisions changed at fp32's "
                     "thresholds)")
    if not quant.get("verification"):
        lines.append("  accuracy: not measured (pass --val KIND:PATH with a trained --student)")
    return lines


def format_int8_options(report: Dict[str, Any]) -> List[str]:
    """The INT8 option sets of one run side by side: drift, accuracy change, speed-up at each batch size."""
    rows = report.get("int8_options") or []
    if len(rows) < 2:
        return []
    batch_sizes = sorted({int(b) for row in rows for b in row["speedup_vs_fp32"]})
    sets = list(dict.fromkeys(name for row in rows for name in row["verification"]))
    lines = ["", "INT8 options side by side (same run; cosine = per face vs fp32 on the check faces; "
                 "accuracy = flip, fp32 -> INT8)",
             "| options | cosine mean | cosine min | check | " + " | ".join(sets + [f"x fp32 batch {b}" for b in batch_sizes])
             + " |", "|" + "---|" * (4 + len(sets) + len(batch_sizes))]
    for row in rows:
        accuracy = [(f"{100 * row['verification'][name]['fp32_flip_accuracy']:.2f} -> "
                     f"{100 * row['verification'][name]['int8_flip_accuracy']:.2f} "
                     f"({row['verification'][name].get('decisions_changed', '?')} changed)")
                    if name in row["verification"] else "-" for name in sets]
        speed = [_fmt(row["speedup_vs_fp32"].get(str(b)), ".2f") for b in batch_sizes]
        lines.append(f"| `{row['options']}` | {_fmt(row['mean_cosine'], '.5f')} | {_fmt(row['min_cosine'], '.5f')} | "
                     f"{row['check'] or '-'} | " + " | ".join(accuracy + speed) + " |")
    return lines


def format_layers(report: Dict[str, Any]) -> List[str]:
    """The per-layer-type profile tables (time share, GFLOP/s, GB/s, roofline)."""
    lines: List[str] = []
    for key, stats in (report.get("layers") or {}).items():
        model, backend = key.split("/")
        batch = stats[0]["batch_size"] if stats else "-"
        lines += ["", f"{model} {BACKEND_LABELS[backend]} per layer type (onnxruntime profile, batch {batch}; "
                      "GB/s = minimum traffic; roofline = min(peak, FLOP/byte x bandwidth))",
                  f"  {'layer type':<12} {'nodes':>5} {'ms':>8} {'share':>6} {'GFLOP/s':>8} {'GB/s':>6} "
                  f"{'FLOP/B':>7} {'roofline':>9} {'% roof':>7}"]
        for st in stats:
            lines.append(f"  {st['layer_type']:<12} {st['nodes']:>5} {st['ms']:>8.2f} {100 * st['share']:>5.1f}% "
                         f"{st['gflops']:>8.2f} {st['gbps']:>6.2f} {st['intensity']:>7.2f} "
                         f"{_fmt(st.get('roofline_gflops'), '9.1f'):>9} {_fmt(st.get('pct_roofline'), '6.1f'):>6}%")
    return lines


def int8_row(options: str, quant: Any, speedups: Dict[str, float], min_cosine: float) -> Dict[str, Any]:
    """One row of the report's ``int8_options`` table."""
    drift = quant.drift
    return {"options": options, "mean_cosine": drift.mean_cosine if drift else None,
            "min_cosine": drift.min_cosine if drift else None,
            "check": None if drift is None else ("pass" if drift.min_cosine >= min_cosine else "FAIL"),
            "verification": quant.verification, "speedup_vs_fp32": speedups}


def int8_speedups(int8: Sequence[Measurement], fp32: Sequence[Measurement]) -> Dict[str, float]:
    """INT8 / ORT fp32 throughput by batch size (a JSON key), from measurements of the same run."""
    by_size = {m.batch_size: m for m in fp32}
    return {str(m.batch_size): m.images_per_s / by_size[m.batch_size].images_per_s
            for m in int8 if m.batch_size in by_size}


def default_int8_row(quant: Any, measurements: Sequence[Measurement]) -> Dict[str, Any]:
    """The ``int8_options`` row of the default INT8 model, from the student's measurements."""
    int8 = [m for m in measurements if m.key == f"student/{ORT_INT8}"]
    fp32 = [m for m in measurements if m.key == f"student/{ORT_FP32}"]
    return int8_row("default", quant, int8_speedups(int8, fp32), MIN_INT8_COSINE)
