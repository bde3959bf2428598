"""Rewrite ``PRelu`` nodes of an exported graph into operators onnxruntime runs (and quantises) well.

MobileFaceNet has a per-channel PReLU after 33 of its convolutions.  onnxruntime's CPU
``PRelu`` kernel is slow (a generic broadcast loop, and it forces layout reorders around
every NCHWc convolution), and its quantiser has no INT8 PReLU: a QDQ model keeps every
PReLU in float behind a Dequantize/Quantize pair, so the int8 convolutions never chain.

:func:`rewrite_prelu` replaces each ``PRelu(x, slope)`` whose slope is a constant of shape
``[C, 1, 1]`` (or broadcastable to it) by one of the :data:`PRELU_REWRITES`:

``relu-diff`` (exact)
    ``Relu(x) - slope * Relu(-x)``: ``Relu``, ``Neg``, ``Relu``, ``Mul``, ``Sub``.
``max`` (exact when every slope is in ``[0, 1]``)
    ``Max(x, slope * x)``: ``Mul``, ``Max``.  Graphs with a slope outside ``[0, 1]`` fall
    back to ``relu-diff`` for that node.
``dwconv`` (exact up to float rounding)
    ``x + DWConv1x1(Relu(DWConv1x1(x, -1)), 1 - slope)``: two depthwise 1x1 convolutions,
    the first with a fused ReLU, the second with the residual ``Add`` — shapes the
    runtime fuses in fp32 (NCHWc conv + activation / sum) and int8 (``QLinearConv``,
    ``QLinearAdd``).
``dwconv1`` (exact up to float rounding when every slope is at most 1)
    ``x + Relu(DWConv1x1(x, slope - 1))``: one depthwise 1x1 convolution with a fused ReLU and
    the residual ``Add``, a kernel fewer per PReLU than ``dwconv``; a slope above 1 falls back
    to ``relu-diff`` for that node.
``relu`` (**not** equal: a speed ceiling only)
    ``Relu(x)``, what a ReLU-trained student would run; refused unless ``exact=False``.

Every exact rewrite computes the same function as the original graph (the tests compare
outputs to 1e-5); :func:`rewrite_prelu_file` keeps the model's metadata and records the
rewrite in ``facekd.prelu_rewrite``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from facekd.errors import ConfigError
from facekd.export.protos import load_onnx_proto
from facekd.fileio import PathLike
from facekd.registry import Registry

#: name -> :class:`PReluRewrite`
PRELU_REWRITES = Registry("PReLU rewrite")
#: metadata key recording the rewrite applied to a model
METADATA_KEY = "facekd.prelu_rewrite"
#: the rewrite export and quantisation use (bench/README.md: fastest exact one, fp32 and int8)
DEFAULT_PRELU_REWRITE = "dwconv"
#: the rewrite INT8 models use (bench/README.md: 1.2x faster INT8 than ``dwconv``, one rounding point
#: fewer; fp32 keeps ``dwconv``, whose residual ``Add`` fuses into the convolution)
INT8_PRELU_REWRITE = "dwconv1"


@dataclass
class Emitted:
    """Nodes and constant tensors that replace one ``PRelu``."""
    nodes: List[Any]            # onnx.NodeProto (onnx is imported lazily)
    initializers: List[Any]     # onnx.TensorProto


class PReluRewrite:
    """One way to express ``PRelu(x, slope)`` with other operators.

    Subclasses set ``exact`` (the rewrite computes the same function) and implement
    :meth:`emit`.  ``slope`` is a float32 array of shape ``[C, 1, 1]``.
    """

    name: str = ""
    exact: bool = True
    description: str = ""

    def applies(self, slope: np.ndarray) -> bool:
        """Whether this rewrite is valid for ``slope`` (else :func:`rewrite_prelu` uses ``relu-diff``)."""
        return True

    def emit(self, x: str, slope: np.ndarray, out: str, prefix: str) -> Emitted:
        """Nodes computing ``out = PRelu(x, slope)``; new tensor names start with ``prefix``."""
        raise NotImplementedError


def _const(name: str, value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)


def _node(op: str, inputs: List[str], outputs: List[str], name: str, **attributes):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=name, **attributes)


@PRELU_REWRITES.register("relu-diff")
class ReluDiff(PReluRewrite):
    """``Relu(x) - slope * Relu(-x)`` (bit-exact: each branch is zero where the other is not)."""

    name = "relu-diff"
    description = "Relu(x) - slope * Relu(-x)"

    def emit(self, x: str, slope: np.ndarray, out: str, prefix: str) -> Emitted:
        names = {k: f"{prefix}/{k}" for k in ("pos", "neg", "negrelu", "scaled", "slope")}
        return Emitted(
            [_node("Relu", [x], [names["pos"]], f"{prefix}/Relu_pos"),
             _node("Neg", [x], [names["neg"]], f"{prefix}/Neg"),
             _node("Relu", [names["neg"]], [names["negrelu"]], f"{prefix}/Relu_neg"),
             _node("Mul", [names["negrelu"], names["slope"]], [names["scaled"]], f"{prefix}/Mul"),
             _node("Sub", [names["pos"], names["scaled"]], [out], f"{prefix}/Sub")],
            [_const(names["slope"], slope)])


@PRELU_REWRITES.register("max")
class MaxRewrite(PReluRewrite):
    """``Max(x, slope * x)``, exact for slopes in ``[0, 1]``."""

    name = "max"
    description = "Max(x, slope * x) (slopes in [0, 1])"

    def applies(self, slope: np.ndarray) -> bool:
        return bool(np.all((slope >= 0) & (slope <= 1)))

    def emit(self, x: str, slope: np.ndarray, out: str, prefix: str) -> Emitted:
        scaled, name = f"{prefix}/scaled", f"{prefix}/slope"
        return Emitted([_node("Mul", [x, name], [scaled], f"{prefix}/Mul"),
                        _node("Max", [x, scaled], [out], f"{prefix}/Max")], [_const(name, slope)])


@PRELU_REWRITES.register("dwconv")
class DepthwiseRewrite(PReluRewrite):
    """``x + DWConv1x1(Relu(DWConv1x1(x, -1)), 1 - slope)`` (``x + (1 - a) * relu(-x)``)."""

    name = "dwconv"
    description = "x + (1 - slope) * Relu(-x) as two depthwise 1x1 convs (+ fused Relu, Add)"

    def emit(self, x: str, slope: np.ndarray, out: str, prefix: str) -> Emitted:
        channels = slope.size
        names = {k: f"{prefix}/{k}" for k in ("neg", "negrelu", "scaled", "w_neg", "w_scale")}
        return Emitted(
            [_node("Conv", [x, names["w_neg"]], [names["neg"]], f"{prefix}/Conv_neg", group=channels,
                   kernel_shape=[1, 1]),
             _node("Relu", [names["neg"]], [names["negrelu"]], f"{prefix}/Relu"),
             _node("Conv", [names["negrelu"], names["w_scale"]], [names["scaled"]], f"{prefix}/Conv_scale",
                   group=channels, kernel_shape=[1, 1]),
             _node("Add", [x, names["scaled"]], [out], f"{prefix}/Add")],
            [_const(names["w_neg"], -np.ones((channels, 1, 1, 1))),
             _const(names["w_scale"], (1.0 - slope).reshape(channels, 1, 1, 1))])


@PRELU_REWRITES.register("dwconv1")
class SingleDepthwiseRewrite(PReluRewrite):
    """``x + Relu(DWConv1x1(x, slope - 1))``: one depthwise 1x1 conv with a fused ReLU, then ``Add``.

    Equal to ``PRelu`` when every slope is at most 1 (``(a - 1) x`` is then positive exactly where
    ``x`` is negative); graphs with a slope above 1 fall back to ``relu-diff`` for that node.
    """

    name = "dwconv1"
    description = "x + Relu((slope - 1) * x) as one depthwise 1x1 conv (+ fused Relu, Add; slopes <= 1)"

    def applies(self, slope: np.ndarray) -> bool:
        return bool(np.all(slope <= 1))

    def emit(self, x: str, slope: np.ndarray, out: str, prefix: str) -> Emitted:
        channels = slope.size
        names = {k: f"{prefix}/{k}" for k in ("scaled", "relu", "w")}
        return Emitted(
            [_node("Conv", [x, names["w"]], [names["scaled"]], f"{prefix}/Conv", group=channels,
                   kernel_shape=[1, 1]),
             _node("Relu", [names["scaled"]], [names["relu"]], f"{prefix}/Relu"),
             _node("Add", [x, names["relu"]], [out], f"{prefix}/Add")],
            [_const(names["w"], (slope - 1.0).reshape(channels, 1, 1, 1))])


@PRELU_REWRITES.register("relu")
class ReluApproximation(PReluRewrite):
    """``Relu(x)``: drops the negative slope.  Not equal; the speed of a ReLU-trained student."""

    name = "relu"
    exact = False
    description = "Relu(x) (NOT equal: speed ceiling of a ReLU student)"

    def emit(self, x: str, slope: np.ndarray, out: str, prefix: str) -> Emitted:
        return Emitted([_node("Relu", [x], [out], f"{prefix}/Relu")], [])


def _constant_tensors(graph) -> Dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: init for init in graph.initializer}
    for node in graph.node:     # topological order: an Identity of a constant (shared weights) follows it
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return {name: numpy_helper.to_array(tensor) for name, tensor in values.items()}


def _channel_slope(slope: np.ndarray) -> Optional[np.ndarray]:
    """``slope`` as ``[C, 1, 1]`` float32, or ``None`` when it does not broadcast per channel."""
    slope = np.asarray(slope, dtype=np.float32)
    if slope.ndim == 3 and slope.shape[1:] == (1, 1):
        return slope
    if slope.ndim <= 1:
        return slope.reshape(-1, 1, 1)
    if slope.ndim == 4 and slope.shape[0] == 1 and slope.shape[2:] == (1, 1):
        return slope.reshape(-1, 1, 1)
    return None


@dataclass
class RewriteReport:
    """What :func:`rewrite_prelu` changed."""
    strategy: str
    rewritten: int          # PRelu nodes replaced with ``strategy``
    fallback: int           # PRelu nodes replaced with ``relu-diff`` (``strategy`` did not apply)
    kept: int               # PRelu nodes left (slope not a per-channel constant)


def rewrite_prelu(model, strategy: str = "relu-diff", exact: bool = True):
    """Replace the ``PRelu`` nodes of an ONNX ``ModelProto`` in place; returns a :class:`RewriteReport`.

    Args:
        model: the model (its graph is edited).
        strategy: a :data:`PRELU_REWRITES` name.
        exact: refuse rewrites that change the function (``relu``); raises :class:`ConfigError`.
    """
    rewrite: PReluRewrite = PRELU_REWRITES.build(strategy)
    if exact and not rewrite.exact:
        raise ConfigError(f"PReLU rewrite {strategy!r} changes the model's outputs "
                          f"({rewrite.description}); pass exact=False to use it for speed measurements")
    fallback = ReluDiff()
    graph = model.graph
    constants = _constant_tensors(graph)
    nodes = list(graph.node)
    new_nodes = []
    report = RewriteReport(strategy, 0, 0, 0)
    for index, node in enumerate(nodes):
        slope = _channel_slope(constants[node.input[1]]) if (
            node.op_type == "PRelu" and node.input[1] in constants) else None
        if slope is None:
            report.kept += node.op_type == "PRelu"
            new_nodes.append(node)
            continue
        chosen = rewrite if rewrite.applies(slope) else fallback
        report.rewritten += chosen is rewrite
        report.fallback += chosen is not rewrite
        prefix = f"{node.name or 'PRelu'}_{index}/{chosen.name}"
        emitted = chosen.emit(node.input[0], slope, node.output[0], prefix)
        new_nodes += emitted.nodes
        graph.initializer.extend(emitted.initializers)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    return report


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def rewrite_prelu_file(source: PathLike, target: PathLike, strategy: str = "relu-diff",
                       exact: bool = True) -> RewriteReport:
    """:func:`rewrite_prelu` on the ONNX file ``source``, written to ``target`` (metadata kept).

    The rewrite is recorded in the ``facekd.prelu_rewrite`` metadata entry.
    """
    import onnx

    model = load_onnx_proto(source)
    report = rewrite_prelu(model, strategy, exact)
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = strategy
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(target))), exist_ok=True)
    onnx.save(model, os.fspath(target))
    return report
