"""bench/bench_inference.py: report structure and arithmetic (no timing thresholds).

Tiny models keep it fast: a 56x56 MobileFaceNet student and a narrow 56x56 IResNet-18
teacher, timed once or twice per configuration.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from facekd.export import read_metadata, synthetic_faces
from facekd.export.speed_report import RATIO_SPECS
from facekd.models import MODELS

from conftest import load_script

SIZE = 56

bench = load_script("bench/bench_inference.py")


def tiny_models():
    faces = synthetic_faces(4, seed=3)
    torch.manual_seed(0)
    student = MODELS.build("mobilefacenet", embedding_size=64, input_size=SIZE)
    teacher = MODELS.build("iresnet18", embedding_size=64, input_size=SIZE, width=(8, 16, 32, 64))
    return (bench.BenchModel("student", "mobilefacenet", bench.calibrate_batchnorm(student, faces),
                             "random init", True),
            bench.BenchModel("teacher", "iresnet18", bench.calibrate_batchnorm(teacher, faces), "random init", True))


THREADS_BEFORE = torch.get_num_threads()


@pytest.fixture(scope="module")
def report_and_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    student, teacher = tiny_models()
    # one thread: quick, and immune to OpenMP stalls when other processes load the cores
    settings = bench.BenchSettings.quick(batch_sizes=(1, 3), runs=2, warmup=1, matmul_size=128,
                                         matmul_repeats=3, faces=4, calibration_faces=8, threads=1,
                                         prelu_baseline=True)
    report = bench.run_benchmark(student, teacher, settings, workdir=workdir, teacher_onnx=True)
    return report, workdir


def test_report_structure(report_and_dir):
    report, workdir = report_and_dir
    assert set(report) == {"settings", "environment", "models", "matmul_peak", "memory_bandwidth", "results",
                           "ratios", "targets", "onnx", "quantization", "int8_options", "layers"}
    # the report is JSON as it is
    assert json.loads(json.dumps(report)) == report
    assert list(report["settings"]["batch_sizes"]) == [1, 3]
    assert report["environment"]["threads"] == report["settings"]["threads"] == 1
    assert set(report["models"]) == {"student", "teacher"}
    assert report["models"]["teacher"]["input_size"] == SIZE and report["models"]["teacher"]["embedding_size"] == 64
    for name in ("student_fp32.onnx", "student_fp32_prelu.onnx", "student_int8.onnx", "teacher_fp32.onnx"):
        assert (workdir / name).is_file()          # --keep: the ONNX files stay
    assert report["onnx"]["student/ort-fp32"]["min_cosine_vs_torch"] > 0.9999
    keys = {(r["key"], r["batch_size"]) for r in report["results"]}
    assert keys == {(f"{model}/{backend}", b) for model, backend in
                    [("student", "torch"), ("student", "ort-fp32"), ("student", "ort-fp32-prelu"),
                     ("student", "ort-int8"), ("teacher", "torch"), ("teacher", "ort-fp32")] for b in (1, 3)}
    assert torch.get_num_threads() == THREADS_BEFORE   # restored afterwards


def test_results_arithmetic(report_and_dir):
    report, _ = report_and_dir
    peak = report["matmul_peak"]
    assert peak["gflops"] == max(peak["start"]["gflops"], peak["end"]["gflops"]) > 0
    for side in ("start", "end"):
        assert peak[side]["gflops"] == pytest.approx(2 * 128 ** 3 / (peak[side]["best_ms"] / 1e3) / 1e9, rel=1e-9)
        assert peak[side]["gflops"] >= peak[side]["gflops_median"]
    for r in report["results"]:
        assert 1 <= r["runs"] <= 2
        assert r["min_ms"] <= r["median_ms"]
        assert r["macs"] == report["models"][r["model"]]["macs"]
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / (r["median_ms"] / 1e3), rel=1e-9)
        assert r["gflops"] == pytest.approx(2 * r["macs"] * r["images_per_s"] / 1e9, rel=1e-9)
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / peak["gflops"], rel=1e-9)


def test_ratios_are_throughput_quotients(report_and_dir):
    report, _ = report_and_dir
    throughput = {(r["key"], r["batch_size"]): r["images_per_s"] for r in report["results"]}
    assert len(report["ratios"]) == len(RATIO_SPECS) * 2      # every ratio at both batch sizes
    for ratio in report["ratios"]:
        expected = throughput[ratio["numerator"], ratio["batch_size"]] / throughput[ratio["denominator"],
                                                                                    ratio["batch_size"]]
        assert ratio["value"] == pytest.approx(expected, rel=1e-12)
    by_name = {(r["name"], r["batch_size"]): r["value"] for r in report["ratios"]}
    for target in report["targets"]:
        if target["unit"] == "x":
            name = {"student ORT fp32 >= 25x teacher throughput": "student ORT fp32 / teacher eager",
                    "student ORT fp32 >= 25x teacher ORT fp32 throughput": "student ORT fp32 / teacher ORT fp32",
                    "INT8 >= 1.5x fp32 throughput": "student ORT INT8 / student ORT fp32"}[target["name"]]
            assert target["value"] == by_name[name, target["batch_size"]]
            assert target["status"] == ("PASS" if target["value"] >= target["threshold"] else "MISS")
    accuracy = [t for t in report["targets"] if t["unit"] == "pt"]
    assert [t["status"] for t in accuracy] == ["not measured"]
    text = bench.format_report(report)
    assert "images/s" in text and "% peak" in text and "not measured" in text
    assert "per layer type" in text and "INT8 (calibrated on 8 synthetic faces" in text


def test_layer_profile_accounts_for_every_mac(report_and_dir):
    """The per-layer-type profile's FLOPs add up to 2 x MACs x batch, split by the kinds of layer."""
    report, _ = report_and_dir
    macs = report["models"]["student"]["macs"]
    assert set(report["layers"]) == {"student/ort-fp32", "student/ort-fp32-prelu", "student/ort-int8"}
    bandwidth, peak = report["memory_bandwidth"]["gbps"], report["matmul_peak"]["gflops"]
    for key, stats in report["layers"].items():
        by_type = {s["layer_type"]: s for s in stats}
        assert {"depthwise", "pointwise", "dense", "prelu"} <= set(by_type)
        assert by_type["depthwise"]["nodes"] == 17 and by_type["pointwise"]["nodes"] == 31
        conv_flops = sum(s["gflops"] * s["ms"] / 1e3 * 1e9 for t, s in by_type.items()
                         if t in ("depthwise", "pointwise", "dense"))
        assert conv_flops == pytest.approx(2 * macs * 3, rel=1e-6)          # batch 3, the largest
        assert sum(s["share"] for s in stats) == pytest.approx(1.0)
        for s in stats:
            if s.get("roofline_gflops"):
                assert s["roofline_gflops"] == pytest.approx(min(peak, s["intensity"] * bandwidth))
                assert s["pct_roofline"] == pytest.approx(100 * s["gflops"] / s["roofline_gflops"])
    prelu_nodes = {key: next(s["nodes"] for s in stats if s["layer_type"] == "prelu")
                   for key, stats in report["layers"].items()}
    assert prelu_nodes["student/ort-fp32-prelu"] == 33                  # the PRelu nodes themselves
    assert prelu_nodes["student/ort-fp32"] >= 66 and prelu_nodes["student/ort-int8"] >= 33   # the rewrites:
    # dwconv (fp32: 2 convs + Add per PReLU) and dwconv1 (INT8: 1 conv + Add)


def test_compute_ratios_and_targets_on_known_numbers():
    def m(key, batch, ips):
        model, backend = key.split("/")
        return bench.Measurement(model, backend, batch, 3, batch / ips * 1e3, 1.0, ips, 10, 1.0)

    measurements = [m("student/ort-fp32", 1, 300.0), m("student/ort-int8", 1, 600.0), m("teacher/torch", 1, 10.0),
                    m("student/ort-fp32", 64, 200.0), m("student/ort-int8", 64, 250.0)]
    ratios = {(r["name"], r["batch_size"]): r["value"] for r in bench.compute_ratios(measurements)}
    assert ratios == {("student ORT fp32 / teacher eager", 1): 30.0, ("student ORT INT8 / teacher eager", 1): 60.0,
                      ("student ORT INT8 / student ORT fp32", 1): 2.0,
                      ("student ORT INT8 / student ORT fp32", 64): 1.25}
    targets = bench.evaluate_targets(bench.compute_ratios(measurements),
                                     {"lfw": {"drop": 0.001}, "cfp": {"drop": 0.0035}})
    status = {(t["name"], t["batch_size"]): (t["value"], t["status"]) for t in targets}
    assert status[("student ORT fp32 >= 25x teacher throughput", 1)] == (30.0, "PASS")
    assert status[("INT8 >= 1.5x fp32 throughput", 1)] == (2.0, "PASS")
    assert status[("INT8 >= 1.5x fp32 throughput", 64)] == (1.25, "MISS")
    value, verdict = status[("INT8 accuracy drop <= 0.2 pt (lfw)", None)]
    assert math.isclose(value, 0.1) and verdict == "PASS"
    value, verdict = status[("INT8 accuracy drop <= 0.2 pt (cfp)", None)]
    assert math.isclose(value, 0.35) and verdict == "MISS"


def test_time_interleaved_alternates_blocks_and_rotates_the_order(monkeypatch):
    from facekd.export import timing

    clock, calls = [0.0], []
    slow = {"factor": 1.0}

    def costing(name, seconds):
        def call():
            calls.append(name)
            clock[0] += seconds * slow["factor"]
        return call

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    fns = {"fp32": costing("fp32", 0.05), "int8": costing("int8", 0.01)}
    times = timing.time_interleaved(fns, runs=4, warmup=1, block_seconds=0.05)
    # warm-up + one sizing call each, then blocks of ~0.05 s: 1 call of fp32, 5 of int8
    assert calls[:4] == ["fp32", "fp32", "int8", "int8"]
    rounds = calls[4:]
    assert rounds == (["fp32"] + ["int8"] * 5 + ["int8"] * 5 + ["fp32"]) * 2     # the order rotates
    assert times["fp32"] == pytest.approx([0.05] * 4) and times["int8"] == pytest.approx([0.01] * 4)

    # a slow spell from the second round on slows both alike: per-round ratios stay 5
    calls.clear()
    spell = iter([1.0] * 8 + [2.0] * 100)     # 2 sizing calls and the first round (1 + 5 calls) at speed
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def spelled(name, seconds):
        def call():
            calls.append(name)
            clock[0] += seconds * next(spell)
        return call

    times = timing.time_interleaved({"fp32": spelled("fp32", 0.05), "int8": spelled("int8", 0.01)},
                                    runs=3, warmup=0, block_seconds=0.05)
    assert [f / i for f, i in zip(times["fp32"], times["int8"])] == pytest.approx([5.0] * 3)

    # max_seconds stops after at least MIN_RUNS rounds
    times = timing.time_interleaved(fns, runs=50, warmup=0, max_seconds=0.01, block_seconds=0.05)
    assert len(times["fp32"]) == len(times["int8"]) == timing.MIN_RUNS


def test_settings_from_args():
    args = bench.parse_args(["--quick", "--runs", "7", "--batch-sizes", "2,16", "--threads", "1"])
    settings = bench.settings_from_args(args)
    quick = bench.BenchSettings.quick()
    assert (settings.runs, settings.batch_sizes, settings.threads) == (7, (2, 16), 1)
    assert (settings.warmup, settings.matmul_size) == (quick.warmup, quick.matmul_size)
    assert bench.settings_from_args(bench.parse_args([])) == bench.BenchSettings()


def test_command_line_student_only(tmp_path, capsys):
    out, keep = tmp_path / "bench.json", tmp_path / "onnx"
    code = bench.main(["--quick", "--skip-teacher", "--input-size", str(SIZE), "--embedding-size", "32",
                       "--batch-sizes", "2", "--threads", "1", "--runs", "1", "--warmup", "0",
                       "--calib-count", "4", "--keep", str(keep), "--out", str(out),
                       "--int8-variant", "keep_float=first,last"])
    assert code == 0
    report = json.loads(out.read_text())
    assert list(report["models"]) == ["student"]
    assert (report["models"]["student"]["input_size"], report["models"]["student"]["embedding_size"]) == (SIZE, 32)
    assert report["models"]["student"]["random_init"] is True
    assert {r["key"] for r in report["results"]} == {"student/torch", "student/ort-fp32", "student/ort-int8"}
    assert {r["batch_size"] for r in report["results"]} == {2}
    assert {r["name"] for r in report["ratios"]} == {"student ORT INT8 / student ORT fp32",
                                                     "student ORT fp32 / student eager"}
    teacher_target = next(t for t in report["targets"] if t["name"].startswith("student ORT fp32 >= 25x"))
    assert teacher_target["status"] == "not measured"
    assert sorted(p.name for p in keep.iterdir()) == ["student_fp32.onnx", "student_fp32_prelu.onnx",
                                                      "student_int8.onnx", "student_int8_1.onnx"]
    # INT8 has its own PReLU rewrite (dwconv1), quantised from the PRelu export
    # the variant is quantised with its own options and timed interleaved with this run's fp32 model
    default, variant = report["int8_options"]
    assert (default["options"], variant["options"]) == ("default", "keep_float=first,last")
    fp32 = next(r for r in report["results"] if r["key"] == "student/ort-fp32")
    int8 = next(r for r in report["results"] if r["key"] == "student/ort-int8")
    assert default["speedup_vs_fp32"]["2"] == pytest.approx(int8["images_per_s"] / fp32["images_per_s"])
    assert variant["speedup_vs_fp32"]["2"] > 0 and variant["check"] in ("pass", "FAIL")
    assert read_metadata(keep / "student_int8_1.onnx").int8_options.startswith("keep_float=first,last;")
    assert report["settings"]["calibration"] == "synthetic" and report["settings"]["prelu"] == "dwconv"
    printed = capsys.readouterr().out
    assert "student  ORT INT8" in printed and f"JSON: {out}" in printed
    assert "| `keep_float=first,last` |" in printed
