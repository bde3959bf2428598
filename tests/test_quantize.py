"""PReLU graph rewrites, INT8 options, thresholds fitted at export, INT8 model selection.

A 56x56 MobileFaceNet with randomised BatchNorm statistics (tests/test_export.py's helper)
and a hand-made PReLU graph with known slopes keep this fast.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facekd.cli import main
from facekd.config import ExperimentConfig, to_dict
from facekd.errors import ConfigError, DataError
from facekd.export import (FaceEmbedder, OnnxEmbedder, check_int8, export_onnx, quantize_int8, read_metadata,
                           synthetic_faces)
from facekd.export.prelu import PRELU_REWRITES, rewrite_prelu, rewrite_prelu_file
from facekd.export.protos import int8_sibling, model_for_precision
from facekd.export import cpu_features
from facekd.export.int8_options import DEFAULT_INT8, Int8Options, int8_saturation_warning
from facekd.export.quantize import MAX_REWRITE_DIFF, int8_source
from facekd.export.threshold import fit_threshold, store_threshold

from test_export import EMBEDDING, SIZE, small_student

REPO = Path(__file__).resolve().parents[1]
EXACT = [name for name in PRELU_REWRITES if PRELU_REWRITES.get(name).exact]
#: slopes a trained PReLU has: mostly in (0, 1), some negative, some above 1
SLOPES = np.array([0.25, 0.0, 1.0, -0.3, 1.7, 0.01], np.float32)
#: int8_capability() of an AVX2-only AMD EPYC (saturating U8S8 kernels) and of a Xeon with VNNI and AMX
AVX2_ONLY = {"AVX2": True, "AVX-512": False, "VNNI": False, "AMX-INT8": False}
VNNI_AMX = {"AVX2": True, "AVX-512": True, "VNNI": True, "AMX-INT8": True}


def prelu_graph(path: Path, slopes: np.ndarray = SLOPES) -> Path:
    """``y = PRelu(Conv1x1(x), slopes)``: a one-PReLU model with known per-channel slopes."""
    channels = len(slopes)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((channels, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("PRelu", ["y", "slope"], ["out"], name="prelu")]
    graph = helper.make_graph(
        nodes, "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", channels, 5, 5])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(slopes.reshape(-1, 1, 1), "slope")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def ops(path) -> list:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module")
def student():
    return small_student()


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory, student):
    """The student exported with its PRelu nodes (prelu=None), uint8 input."""
    path = tmp_path_factory.mktemp("plain") / "student.onnx"
    export_onnx(student, path, input_format="uint8", prelu=None)
    return path


# --------------------------------------------------------------------------- PReLU rewrites

@pytest.mark.parametrize("strategy", EXACT)
def test_rewrite_equals_prelu_on_known_slopes(tmp_path, strategy):
    source = prelu_graph(tmp_path / "prelu.onnx")
    target = tmp_path / f"{strategy}.onnx"
    report = rewrite_prelu_file(source, target, strategy)
    x = np.random.default_rng(1).standard_normal((4, 3, 5, 5)).astype(np.float32) * 3
    y = run(source, x)
    conv = np.einsum("oc,nchw->nohw", numpy_helper.to_array(onnx.load(str(source)).graph.initializer[0])[:, :, 0, 0], x)
    reference = np.where(conv > 0, conv, SLOPES.reshape(1, -1, 1, 1) * conv)   # PReLU by definition
    np.testing.assert_allclose(y, reference, atol=1e-5)
    np.testing.assert_allclose(run(target, x), y, atol=1e-5, rtol=0)
    assert "PRelu" not in ops(target)
    # 'max' is exact only for slopes in [0, 1], 'dwconv1' for slopes <= 1: this graph has -0.3 and 1.7,
    # so both fall back
    assert (report.rewritten, report.fallback) == ((0, 1) if strategy in ("max", "dwconv1") else (1, 0))
    assert read_metadata(target).prelu_rewrite == strategy


def test_max_rewrite_applies_to_slopes_in_unit_interval(tmp_path):
    slopes = np.array([0.0, 0.25, 1.0], np.float32)
    source = prelu_graph(tmp_path / "prelu.onnx", slopes)
    report = rewrite_prelu_file(source, tmp_path / "max.onnx", "max")
    assert (report.rewritten, report.fallback) == (1, 0) and sorted(ops(tmp_path / "max.onnx")) == ["Conv", "Max", "Mul"]
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(run(tmp_path / "max.onnx", x), run(source, x))


def test_single_depthwise_rewrite_applies_to_slopes_up_to_one(tmp_path):
    """dwconv1 (x + Relu((a - 1) x)): one depthwise conv per PReLU, equal to PReLU for a <= 1, negative a too."""
    slopes = np.array([-0.3, 0.25, 1.0], np.float32)
    source = prelu_graph(tmp_path / "prelu.onnx", slopes)
    target = tmp_path / "dwconv1.onnx"
    report = rewrite_prelu_file(source, target, "dwconv1")
    assert (report.rewritten, report.fallback) == (1, 0)
    assert sorted(ops(target)) == ["Add", "Conv", "Conv", "Relu"]      # the model's conv + the rewrite's one
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32) * 3
    np.testing.assert_allclose(run(target, x), run(source, x), atol=1e-5, rtol=0)


def test_inexact_rewrite_is_refused_unless_asked(tmp_path):
    model = onnx.load(str(prelu_graph(tmp_path / "prelu.onnx")))
    with pytest.raises(ConfigError, match="changes the model's outputs"):
        rewrite_prelu(model, "relu")
    assert rewrite_prelu(model, "relu", exact=False).rewritten == 1
    with pytest.raises(KeyError):
        rewrite_prelu(model, "no-such-rewrite")


@pytest.mark.parametrize("fmt", ["float", "uint8"])
def test_export_rewrites_all_mobilefacenet_prelus_and_stays_equal(tmp_path, student, fmt):
    plain, rewritten = tmp_path / "plain.onnx", tmp_path / "dwconv.onnx"
    export_onnx(student, plain, input_format=fmt, prelu=None)
    meta = export_onnx(student, rewritten, input_format=fmt)             # default: dwconv
    assert ops(plain).count("PRelu") == 33 and "PRelu" not in ops(rewritten)
    assert meta.prelu_rewrite == "dwconv" and read_metadata(rewritten).prelu_rewrite == "dwconv"
    assert read_metadata(plain).prelu_rewrite == "none"
    faces = synthetic_faces(8, seed=4)[:, ::2, ::2]
    a, b = OnnxEmbedder(plain).embed_uint8(faces), OnnxEmbedder(rewritten).embed_uint8(faces)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    with torch.no_grad():
        from facekd.preprocess import normalize_uint8
        expected = student(normalize_uint8(faces)).numpy()
    assert np.abs(b - expected).max() <= 1e-4 * np.abs(expected).max()


# --------------------------------------------------------------------------- INT8

def test_int8_with_rewrite_leaves_no_float_compute(tmp_path, plain_onnx):
    calibration, held_out = synthetic_faces(16, seed=1), synthetic_faces(16, seed=2)
    chained = check_int8(quantize_int8(plain_onnx, tmp_path / "chained.onnx", calibration, Int8Options(keep_float=())),
                         held_out)
    assert chained.prelu_rewrite == "dwconv1" and chained.prelu_rewritten == 33     # INT8's own default
    assert chained.rewrite_max_abs_diff <= MAX_REWRITE_DIFF
    # every conv, relu and add runs in int8; only the uint8 input's normalisation stays float
    assert chained.float_nodes == {"Mul": 1, "Sub": 1}
    assert "PRelu" not in ops(tmp_path / "chained.onnx")
    assert chained.drift.mean_cosine >= 0.9
    old = quantize_int8(plain_onnx, tmp_path / "old.onnx", calibration, Int8Options(keep_float=("first", "last")),
                        prelu=None)
    assert old.float_nodes == {"PRelu": 33, "Conv": 2, "Mul": 1, "Sub": 1}     # what issue 13 measured
    last = quantize_int8(plain_onnx, tmp_path / "last.onnx", calibration)    # default: keep the final layer
    assert last.float_nodes == {"Conv": 1, "Mul": 1, "Sub": 1} and last.kept_float == ["/model/linear/Conv"]
    meta = read_metadata(tmp_path / "chained.onnx")
    assert (meta.quantization, meta.prelu_rewrite) == ("int8-qdq", "dwconv1")


def test_int8_of_a_rewritten_export_reports_the_export_s_rewrite(tmp_path, student):
    """A graph already rewritten (export_onnx's dwconv) has no PRelu left: INT8 keeps and reports that rewrite."""
    fp32 = tmp_path / "dwconv.onnx"
    export_onnx(student, fp32, input_format="uint8")
    report = quantize_int8(fp32, tmp_path / "int8.onnx", synthetic_faces(8, seed=1))     # default dwconv1
    assert (report.prelu_rewrite, report.prelu_rewritten) == ("dwconv", 0)
    assert read_metadata(tmp_path / "int8.onnx").prelu_rewrite == "dwconv"
    assert "PReLU rewrite 'dwconv', as in the fp32 export" in str(report)


def test_int8_source_exports_a_prelu_graph_only_when_the_rewrites_differ(tmp_path):
    exported = []

    def export(path):
        exported.append(Path(path))
        Path(path).write_bytes(b"prelu graph")

    fp32, prelu = tmp_path / "fp32.onnx", tmp_path / "prelu.onnx"
    assert int8_source(fp32, "dwconv1", "dwconv1", prelu, export) == fp32 and not exported
    assert int8_source(fp32, None, "none", prelu, export) == fp32 and not exported
    assert int8_source(fp32, "dwconv", "dwconv1", prelu, export) == prelu and exported == [prelu]
    assert int8_source(fp32, "dwconv", "dwconv1", prelu, export) == prelu and exported == [prelu]  # reused


def test_int8_qoperator_u8u8_and_option_errors(tmp_path, plain_onnx):
    calibration = synthetic_faces(8, seed=1)
    report = quantize_int8(plain_onnx, tmp_path / "qop.onnx", calibration,
                           Int8Options(quant_format="qoperator", weight_type="u8", reduce_range=True, keep_float=()))
    graph_ops = ops(tmp_path / "qop.onnx")
    assert graph_ops.count("QLinearConv") == 50 + 33 and "PRelu" not in graph_ops     # dwconv1: one per PReLU
    assert report.float_nodes == {"Mul": 1, "Sub": 1} and read_metadata(tmp_path / "qop.onnx").quantization == "int8-qoperator"
    assert "QOperator, U8U8" in str(report)
    for option, value, message in (("quant_format", "qint4", "quantisation format"),
                                   ("weight_type", "s4", "weight type")):
        with pytest.raises(ConfigError, match=message):
            Int8Options(**{option: value})          # the options are validated once, when made
    with pytest.raises(ConfigError, match="PReLU rewrite"):
        quantize_int8(plain_onnx, tmp_path / "x.onnx", calibration, prelu="relu6")


def test_equal_batch_size_divides_the_face_count():
    from facekd.export.calibration import equal_batch_size

    assert [equal_batch_size(n, 16) for n in (1, 7, 16, 20, 200, 17, 256)] == [1, 7, 16, 10, 10, 1, 16]
    with pytest.raises(ConfigError, match="at least one face"):
        equal_batch_size(0, 16)


@pytest.mark.parametrize("method, count", [("percentile", 1), ("percentile", 20), ("entropy", 20)])
def test_histogram_calibration_works_on_any_face_count(tmp_path, plain_onnx, method, count):
    """20 faces in batches of 16 left a ragged last batch: onnxruntime's histogram collector
    failed with 'inhomogeneous shape' (issue 21); every batch now has one size."""
    from facekd.export.calibration import FaceCalibrationReader

    calibration, held_out = synthetic_faces(count, seed=1), synthetic_faces(8, seed=2)
    reader = FaceCalibrationReader(OnnxEmbedder(plain_onnx, resize=True), calibration, 16)
    assert len({batch.shape for batch in reader.batches}) == 1
    assert sum(len(batch) for batch in reader.batches) == count
    report = check_int8(quantize_int8(plain_onnx, tmp_path / "q.onnx", calibration,
                                      Int8Options(calibrate_method=method)), held_out)
    assert report.calibration_faces == count and report.calibrate_method == method
    assert report.drift.faces == 8 and 0.3 <= report.drift.mean_cosine <= 1.0


def activation_scales(path) -> dict:
    """``{initialiser name: value}`` of every ``*_scale`` initialiser of a QDQ model (activations and weights)."""
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer
            if init.name.endswith("_scale")}


def test_entropy_calibration_narrows_ranges_minmax_does_not(tmp_path, plain_onnx):
    """onnxruntime's entropy calibrator with its defaults (128 bins = 128 quantised bins) has one
    candidate window, the full range: its scales equalled minmax's (issue 21).  facekd's own
    entropy pass (512 bins) clips outliers: activation scales shrink, weight scales stay."""
    calibration = synthetic_faces(8, seed=1)
    scales = {}
    for method in ("minmax", "entropy"):
        quantize_int8(plain_onnx, tmp_path / f"{method}.onnx", calibration, Int8Options(calibrate_method=method))
        scales[method] = activation_scales(tmp_path / f"{method}.onnx")
    assert scales["minmax"].keys() == scales["entropy"].keys()
    narrower = [name for name in scales["minmax"]
                if float(scales["entropy"][name].max()) < 0.99 * float(scales["minmax"][name].max())]
    wider = [name for name in scales["minmax"]
             if float(scales["entropy"][name].max()) > 1.0001 * float(scales["minmax"][name].max())]
    assert len(narrower) >= 20 and not wider
    assert not any("weight" in name.lower() or name.startswith("onnx::") for name in narrower)


# --------------------------------------------------------------------------- thresholds and precision

def test_int8_sibling_and_model_for_precision(tmp_path, plain_onnx):
    assert int8_sibling("runs/student.onnx") == "runs/student_int8.onnx"
    assert model_for_precision(plain_onnx, "fp32") == str(plain_onnx)
    with pytest.raises(DataError) as info:
        model_for_precision(plain_onnx, "int8")
    assert str(info.value).startswith(int8_sibling(plain_onnx)) and "--int8" in str(info.value)
    with pytest.raises(ConfigError, match="precision"):
        model_for_precision(plain_onnx, "fp16")


def test_fit_and_store_threshold(tmp_path, plain_onnx):
    from facekd.data.synthetic import synthetic_pair_set
    from facekd.evaluation import evaluate, extract_embeddings, pair_embeddings

    path = tmp_path / "student.onnx"
    path.write_bytes(Path(plain_onnx).read_bytes())
    pair_set = synthetic_pair_set(num_pairs=40, num_folds=2, cache=True)
    fit = fit_threshold(OnnxEmbedder(path, resize=True), pair_set)
    embeddings = extract_embeddings(OnnxEmbedder(path, resize=True), pair_set, progress=False)
    result = evaluate(pair_embeddings(pair_set.pairs, embeddings.flip), pair_set.issame)
    assert fit.threshold == pytest.approx(1 - result.threshold_mean / 2)
    assert fit.accuracy == pytest.approx(result.accuracy_mean) and "synthetic" in fit.source
    store_threshold(path, fit)
    meta = read_metadata(path)
    assert meta.threshold == pytest.approx(fit.threshold) and meta.threshold_flip is True
    assert meta.threshold_source == fit.source and meta.embedding_size == EMBEDDING
    assert np.array_equal(OnnxEmbedder(path).embed_uint8(synthetic_faces(2)[:, ::2, ::2]),
                          OnnxEmbedder(plain_onnx).embed_uint8(synthetic_faces(2)[:, ::2, ::2]))


def test_compare_verification_counts_changed_decisions_at_fp32_thresholds(plain_onnx):
    from facekd.data.synthetic import synthetic_pair_set
    from facekd.export.int8_check import compare_verification

    pair_set = synthetic_pair_set(num_pairs=40, num_folds=2, cache=True)
    same = compare_verification(OnnxEmbedder(plain_onnx, resize=True), OnnxEmbedder(plain_onnx, resize=True), pair_set)
    assert same["decisions_changed"] == 0 and same["pairs"] == 40 and same["flip_drop"] == 0
    assert same["int8_flip_accuracy_at_fp32_thresholds"] == pytest.approx(same["fp32_flip_accuracy"])

    class Drifting(OnnxEmbedder):     # a model whose embeddings differ from fp32's
        def run(self, batch):
            out = super().run(batch)
            return out + np.random.default_rng(len(batch)).normal(0, 2 * np.abs(out).mean(), out.shape)

    drift = compare_verification(OnnxEmbedder(plain_onnx, resize=True), Drifting(plain_onnx, resize=True), pair_set)
    assert 0 < drift["decisions_changed"] <= 40
    # each changed decision moves the at-threshold accuracy of its fold by one pair, no more
    fp32, at_fp32 = drift["fp32_flip_accuracy"], drift["int8_flip_accuracy_at_fp32_thresholds"]
    assert abs(at_fp32 - fp32) <= drift["decisions_changed"] / 20 / 2 + 1e-12


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory, student):
    """A checkpoint without any verification threshold (trained without validation)."""
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save({"model_config": {"name": "mobilefacenet", "embedding_size": EMBEDDING, "input_size": SIZE,
                                 "params": {}},
                "state_dict": student.state_dict(), "config": to_dict(ExperimentConfig())}, path)
    return path


def test_export_val_fits_thresholds_and_verify_int8_decides(tmp_path, untrained_checkpoint, capsys):
    from facekd.data.image_io import write_image

    out, report = tmp_path / "student.onnx", tmp_path / "report.json"
    code = main(["export", str(untrained_checkpoint), "--out", str(out), "--int8", "--calib-count", "16",
                 "--val", "synthetic:,num_pairs=40,num_folds=2", "--keep-float", "first,last",
                 # random weights drift far more under INT8 than trained ones: this test is about thresholds
                 "--int8-min-cosine", "0.3",
                 "--report", str(report)])
    assert code == 0
    int8 = tmp_path / "student_int8.onnx"
    fp32_meta, int8_meta = read_metadata(out), read_metadata(int8)
    data = json.loads(report.read_text())
    metrics = data["int8"]["verification"]["synthetic"]
    assert fp32_meta.threshold == pytest.approx(metrics["fp32_threshold"])
    assert int8_meta.threshold == pytest.approx(metrics["int8_threshold"])
    assert "fitted on synthetic (40 pairs, flip)" == fp32_meta.threshold_source == int8_meta.threshold_source
    assert int8_meta.quantization == "int8-qdq" and fp32_meta.quantization == "none"
    assert set(data["thresholds"]) == {str(out), str(int8)}
    # what a user judges the INT8 model by is in its metadata
    assert int8_meta.int8_accuracy_change == pytest.approx(100 * -metrics["flip_drop"], abs=1e-3)
    assert int8_meta.int8_accuracy_source.startswith("synthetic (flip): fp32 ")
    assert int8_meta.int8_min_cosine == pytest.approx(data["int8"]["drift"]["min_cosine"])
    assert Int8Options.parse(int8_meta.int8_options) == Int8Options(keep_float=("first", "last"))
    assert fp32_meta.int8_options is None and fp32_meta.int8_accuracy_change is None
    capsys.readouterr()

    face = synthetic_faces(1)[0]
    a = tmp_path / "a.png"
    write_image(a, face)
    assert main(["verify", str(out), str(a), str(a), "--aligned", "--int8"]) == 0
    printed = capsys.readouterr().out
    assert f"{int8} (int8)" in printed and "decision:   same person" in printed
    assert f"{int8_meta.threshold:.4f}" in printed
    embedder = FaceEmbedder(out, precision="int8")
    assert embedder.path == str(int8) and embedder.threshold == pytest.approx(int8_meta.threshold)
    assert embedder.flip is True and FaceEmbedder(out).precision == "fp32"


def test_export_val_without_int8_fits_the_fp32_threshold(tmp_path, untrained_checkpoint, capsys):
    out = tmp_path / "student.onnx"
    assert main(["export", str(untrained_checkpoint), "--out", str(out),
                 "--val", "synthetic:,num_pairs=40,num_folds=2"]) == 0
    assert "threshold of" in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta.threshold is not None and -1 <= meta.threshold <= 1 and "synthetic" in meta.threshold_source
    assert not Path(int8_sibling(out)).exists()


# --------------------------------------------------------------------------- import graph

def test_export_package_has_no_import_circles():
    """Every ``facekd.export.*`` import (module level or inside functions) forms an acyclic graph."""
    root = REPO / "facekd" / "export"
    graph = {}
    for path in root.glob("*.py"):
        name = f"facekd.export.{path.stem}"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facekd.export."):
                targets.add(node.module)
        graph[name] = targets - {name}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import circle: {' -> '.join(trail + [module])}"
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert "facekd.export.runtime" not in graph["facekd.export.metadata"]


def test_export_command_percentile_calibration_from_a_face_directory(tmp_path, untrained_checkpoint, capsys):
    from facekd.data.image_io import write_image

    calib = tmp_path / "aligned"
    for i, face in enumerate(synthetic_faces(20, seed=3)):
        write_image(calib / f"p{i // 4}" / f"{i}.png", face)
    out = tmp_path / "student.onnx"
    code = main(["export", str(untrained_checkpoint), "--out", str(out), "--int8", "--calib", str(calib),
                 "--calib-method", "percentile", "--int8-min-cosine", "0.3"])
    assert code == 0
    assert "percentile on 20" in capsys.readouterr().out
    assert read_metadata(tmp_path / "student_int8.onnx").quantization == "int8-qdq"


def test_failed_int8_check_keeps_no_int8_file_and_names_options_to_try(tmp_path, untrained_checkpoint, capsys):
    out = tmp_path / "student.onnx"
    code = main(["export", str(untrained_checkpoint), "--out", str(out), "--int8", "--calib-count", "8",
                 "--calib-method", "minmax", "--int8-min-cosine", "0.99999"])
    assert code != 0
    error = capsys.readouterr().err
    assert f"{tmp_path / 'student_int8.onnx'}: the INT8 model failed its check" in error
    assert "--calib-method percentile" in error and "--keep-float last,first" in error and "--calib DIR" in error
    assert f"facekd int8-finetune {untrained_checkpoint} --faces DIR" in error
    assert out.exists() and not (tmp_path / "student_int8.onnx").exists()


def test_int8_options_parse_describe_and_spec_round_trip():
    options = Int8Options.parse("calibrate_method=percentile; keep_float=first,last; reduce_range=true")
    assert options == Int8Options(keep_float=("first", "last"), calibrate_method="percentile", reduce_range=True)
    assert Int8Options.parse(options.describe()) == options == Int8Options.parse(options.spec())
    assert Int8Options.parse("default") == DEFAULT_INT8 and DEFAULT_INT8.describe() == "default"
    assert Int8Options.parse("keep_float=").keep_float == ()
    # the measured defaults (bench/README.md): percentile ranges, the last layer in float, per channel
    assert (DEFAULT_INT8.calibrate_method, DEFAULT_INT8.keep_float, DEFAULT_INT8.per_channel) == (
        "percentile", ("last",), True)
    for bad, message in (("calib=minmax", "expected key=value with a key of"),
                         ("calibrate_method=kl", "expected one of"), ("per_channel=yes", "true or false"),
                         ("percentile", "expected key=value")):
        with pytest.raises(ConfigError, match=message):
            Int8Options.parse(bad)


def test_weights_are_7_bit_by_default_and_8_bit_models_warn_where_they_saturate(tmp_path, plain_onnx, monkeypatch,
                                                                               caplog):
    """The default INT8 model's int8 weights lie in [-64, 64] (reduce_range: no int16 saturation on any
    CPU); 8-bit ones ([-127, 127]) are an option, and loading one on a CPU without VNNI or AMX warns."""
    calibration = synthetic_faces(8, seed=1)
    largest = {}
    for reduce_range in (True, False):
        path = tmp_path / f"reduce_range_{reduce_range}.onnx"
        quantize_int8(plain_onnx, path, calibration, Int8Options(reduce_range=reduce_range, calibrate_method="minmax"))
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                   if t.data_type == TensorProto.INT8]
        largest[reduce_range] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        assert Int8Options.parse(read_metadata(path).int8_options).reduce_range is reduce_range
    assert DEFAULT_INT8.reduce_range and largest == {True: 64, False: 127}

    eight_bit = tmp_path / "reduce_range_False.onnx"
    assert Int8Options(reduce_range=False).saturates_on(AVX2_ONLY) and not DEFAULT_INT8.saturates_on(AVX2_ONLY)
    assert not Int8Options(reduce_range=False).saturates_on(VNNI_AMX)
    assert not Int8Options(weight_type="u8", reduce_range=False).saturates_on(AVX2_ONLY)     # U8U8: no VPMADDUBSW
    assert int8_saturation_warning(eight_bit, "not=options", AVX2_ONLY) is None
    for capability, warned in ((AVX2_ONLY, True), (VNNI_AMX, False)):
        monkeypatch.setattr(cpu_features, "int8_capability", lambda cpuinfo=None, found=capability: found)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="facekd.export.runtime"):
            OnnxEmbedder(eight_bit)
            OnnxEmbedder(tmp_path / "reduce_range_True.onnx")
        assert caplog.text.count("INT8 model with 8-bit weights") == warned
        assert (f"{eight_bit}: INT8 model with 8-bit weights" in caplog.text) is warned

    from facekd.commands.export import int8_remedies

    args = argparse.Namespace(calib="synthetic", calib_count=256, checkpoint="s.pt")
    monkeypatch.setattr(cpu_features, "int8_capability", lambda cpuinfo=None: AVX2_ONLY)
    assert int8_remedies(Int8Options(reduce_range=False), args)[0].startswith("--reduce-range (this CPU")
    assert not any(remedy.startswith("--reduce-range") for remedy in int8_remedies(DEFAULT_INT8, args))
