"""ONNX embedders run by PyTorch (facekd.export.onnx_torch, ``teacher.backend: torch``): the same
numbers as onnxruntime for every repair and operator, SFace included; what it cannot run is refused
naming the file and the node."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from facekd.config import TeacherConfig, load_config
from facekd.errors import ConfigError, DataError
from facekd.export.onnx_torch import OPERATORS, onnx_to_torch
from facekd.teachers import build_teacher
from facekd.training.preflight import check_run

sys.path.insert(0, str(Path(__file__).parent))
from test_onnx_graph import embedder_graph, faces, opened, run_original, save, sface_or_skip  # noqa: E402


def run_torch(path, batch):
    module, _ = onnx_to_torch(path)
    with torch.no_grad():
        return module(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("options, layout, dtype", [
    ({}, "NCHW", np.float32),
    ({"weights_as_inputs": True, "unfed": ("w1", "w2")}, "NCHW", np.float32),
    ({"quantised": True}, "NCHW", np.float32),
    ({"reshape_batch": 3}, "NCHW", np.float32),
    ({"layout": "NHWC", "dtype": TensorProto.UINT8, "batch": 1, "weights_as_inputs": True}, "NHWC", np.uint8),
], ids=["clean", "weights_as_inputs", "block_quantised", "reshape_batch", "nhwc_uint8"])
def test_each_repaired_graph_gives_onnxruntimes_numbers(tmp_path, options, layout, dtype):
    path = save(embedder_graph(**options), tmp_path, "graph")
    batch = faces(3, dtype, layout)
    if dtype == np.float32:
        batch = (batch / 127.5 - 1).astype(np.float32)
    expected = opened(path).run_batch(batch)     # onnxruntime, repaired as the onnxruntime backend runs it
    got = run_torch(path, batch)
    assert got.shape == expected.shape == (3, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.abs(expected).max())


def every_operator_graph():
    """One graph through every operator of OPERATORS, with asymmetric conv pads and a folded Constant."""
    rng = np.random.default_rng(1)
    const = lambda name, shape: numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
    inits = [const("w1", (6, 3, 3, 3)), const("b1", (6,)), const("gamma", (6,)), const("beta", (6,)),
             const("mean", (6,)), numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), "var"),
             const("slope", (6, 1, 1)), const("w2", (6, 1, 3, 3)), const("fc", (10, 48)), const("fc_b", (10,)),
             const("mm", (10, 7)), numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    n = helper.make_node
    nodes = [
        n("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]), n("Cast", ["xt"], ["xf"], to=TensorProto.FLOAT),
        n("Constant", [], ["half"], value=numpy_helper.from_array(np.array(127.5, np.float32))),
        n("Sub", ["xf", "half"], ["xs"]), n("Div", ["xs", "half"], ["xd"]),
        n("Conv", ["xd", "w1", "b1"], ["c1"], pads=[0, 1, 1, 0], strides=[1, 1]),
        n("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        n("PRelu", ["bn", "slope"], ["p"]),
        n("Conv", ["p", "w2"], ["dw"], pads=[1, 1, 1, 1], group=6),
        n("Sigmoid", ["dw"], ["sg"]), n("Mul", ["p", "sg"], ["gated"]), n("Add", ["gated", "p"], ["res"]),
        n("Relu", ["res"], ["r"]), n("Dropout", ["r"], ["d"]), n("Identity", ["d"], ["i"]),
        n("MaxPool", ["i"], ["mp"], kernel_shape=[2, 2], strides=[1, 1]),
        n("AveragePool", ["i"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Concat", ["mp", "ap"], ["cat"], axis=1), n("GlobalAveragePool", ["cat"], ["gap"]),
        n("Flatten", ["cat"], ["flat"]), n("Reshape", ["gap", "shape"], ["gflat"]),
        n("Gemm", ["flat", "fc", "fc_b"], ["g"], transB=1, alpha=0.5, beta=2.0),
        n("MatMul", ["g", "mm"], ["y1"]),
    ]
    nodes.append(n("Concat", ["y1", "gflat"], ["y"], axis=1))
    graph = helper.make_graph(nodes, "every_op", [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 4, 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 19])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_every_operator_gives_onnxruntimes_numbers(tmp_path):
    model = every_operator_graph()
    used = {node.op_type for node in model.graph.node} - {"Constant"}
    assert used == set(OPERATORS)
    path = save(model, tmp_path, "every_op")
    batch = faces(4, np.uint8, "NHWC")[:, :4, :4]
    expected = run_original(path, np.ascontiguousarray(batch))
    np.testing.assert_allclose(run_torch(path, np.ascontiguousarray(batch)), expected, rtol=1e-5, atol=1e-5)


def test_an_operator_it_does_not_know_is_refused_naming_the_file_and_node(tmp_path):
    model = embedder_graph()
    model.graph.node[-1].op_type = "Softmax"         # MatMul's inputs, another operator
    model.graph.node[-1].name = "head"
    path = save(model, tmp_path, "softmax")
    with pytest.raises(DataError, match=r"softmax\.onnx: cannot run in PyTorch: node 'head' \(Softmax\): "
                                        r"operator Softmax .*use teacher\.backend: onnxruntime"):
        onnx_to_torch(path)


def test_a_node_reading_what_nothing_produces_is_refused_when_the_file_loads(tmp_path):
    model = embedder_graph()
    model.graph.node[-1].input[0] = "nowhere"
    model.graph.node[-1].name = "head"
    with pytest.raises(DataError, match=r"dangling\.onnx: cannot run in PyTorch: node 'head' \(MatMul\): "
                                        r"reads 'nowhere', which no earlier node produces"):
        onnx_to_torch(save(model, tmp_path, "dangling"))


def test_sface_torch_backend_equals_onnxruntime_and_keys_its_cache_apart():
    sface_or_skip()
    ort_teacher = build_teacher(TeacherConfig(kind="sface"))
    torch_teacher = build_teacher(TeacherConfig(kind="sface", backend="torch"))
    assert (ort_teacher.backend, torch_teacher.backend) == ("onnxruntime", "torch")
    aligned = (np.random.default_rng(2).random((5, 112, 112, 3)) * 255).astype(np.uint8)
    expected = ort_teacher.embed(aligned)
    for got in (torch_teacher.embed(aligned), torch_teacher.embed(torch.from_numpy(aligned))):
        assert got.shape == (5, 128) and got.dtype == torch.float32
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert ort_teacher.fingerprint() != torch_teacher.fingerprint()
    bf16 = build_teacher(TeacherConfig(kind="sface", backend="torch"), amp="bf16")
    cosine = torch.nn.functional.cosine_similarity(bf16.embed(aligned), expected)
    assert cosine.min() > 0.99 and bf16.fingerprint() != torch_teacher.fingerprint()


@pytest.mark.parametrize("overrides, accepted", [
    (["teacher.kind=sface", "teacher.backend=torch"], True),
    (["teacher.kind=onnx", "teacher.path=x.onnx", "teacher.backend=onnxruntime"], True),
    (["teacher.kind=dlib", "teacher.backend=dlib-bin"], True),
    (["teacher.kind=sface", "teacher.backend=dlib-bin"], False),
    (["teacher.kind=torch", "teacher.backend=torch"], False),
])
def test_teacher_backend_is_checked_against_the_kinds_engines(overrides, accepted):
    cfg = load_config(None, overrides)
    if accepted:
        check_run(cfg, "student")
    else:
        with pytest.raises(ConfigError, match="teacher.backend"):
            check_run(cfg, "student")
