"""An ONNX face embedder run by PyTorch: the same graph as a ``torch.nn.Module``.

onnxruntime runs a shipped embedder (SFace, an insightface pack) on the CPU; a GPU run
needs the teacher where the student is, in bf16, without a copy to the host per batch.
:func:`onnx_to_torch` reads the file, applies :func:`facekd.export.onnx_graph.repair_graph`
(initializers as constants, weight-only quantised weights dequantised once), evaluates every
node whose inputs are all constants once, and keeps the rest as a list of PyTorch calls
that :class:`OnnxModule` runs in order.  Nothing in the file is executed: only the operators
of :data:`OPERATORS` are known, each written here; any other operator, or an attribute these
implementations do not cover, is refused in one line naming the file and the node.

The operator set covers face embedders as they are shipped (SFace: Conv, BatchNormalization,
PRelu, Reshape, Gemm; insightface's ResNets: Add, Flatten) and facekd's own exports (uint8
NHWC input: Cast, Transpose, Sub, Mul).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from facekd.errors import DataError


class Unsupported(Exception):
    """An operator or attribute :data:`OPERATORS` does not implement (the message says which)."""


def _pads_2d(pads: Sequence[int]) -> Tuple[int, int, int, int]:
    """ONNX ``pads`` ``[top, left, bottom, right]`` as ``F.pad``'s ``(left, right, top, bottom)``."""
    if len(pads) != 4:
        raise Unsupported(f"pads {list(pads)} (only 2-d spatial pads)")
    top, left, bottom, right = (int(p) for p in pads)
    return left, right, top, bottom


def _auto_pad(attrs: Dict[str, Any]) -> None:
    mode = attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("NOTSET", "VALID"):
        raise Unsupported(f"auto_pad={mode}")


def _conv(attrs: Dict[str, Any], x: torch.Tensor, weight: torch.Tensor, bias: Any = None) -> torch.Tensor:
    _auto_pad(attrs)
    if weight.dim() != 4:
        raise Unsupported(f"a {weight.dim() - 2}-d convolution")
    left, right, top, bottom = _pads_2d(attrs.get("pads", [0, 0, 0, 0]))
    if (left, top) != (right, bottom):
        x, padding = F.pad(x, (left, right, top, bottom)), (0, 0)
    else:
        padding = (top, left)
    return F.conv2d(x, weight, bias, tuple(attrs.get("strides", (1, 1))), padding,
                    tuple(attrs.get("dilations", (1, 1))), int(attrs.get("group", 1)))


def _batch_norm(attrs: Dict[str, Any], x, scale, bias, mean, var) -> torch.Tensor:
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(attrs.get("epsilon", 1e-5)))


def _prelu(attrs: Dict[str, Any], x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


def _reshape(attrs: Dict[str, Any], x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = [int(d) for d in shape.tolist()]
    if attrs.get("allowzero", 0):
        raise Unsupported("allowzero=1")
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]   # 0: keep that dimension
    return x.reshape(dims)


def _flatten(attrs: Dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _gemm(attrs: Dict[str, Any], a: torch.Tensor, b: torch.Tensor, c: Any = None) -> torch.Tensor:
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = float(attrs.get("alpha", 1.0)) * (a @ b)
    return out if c is None else out + float(attrs.get("beta", 1.0)) * c


def _pool(attrs: Dict[str, Any], x: torch.Tensor, kind: str) -> torch.Tensor:
    _auto_pad(attrs)
    left, right, top, bottom = _pads_2d(attrs.get("pads", [0, 0, 0, 0]))
    if (left, top) != (right, bottom) or any(d != 1 for d in attrs.get("dilations", (1, 1))):
        raise Unsupported("asymmetric pads or dilations in a pooling node")
    kernel, strides = tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", (1, 1)))
    ceil = bool(attrs.get("ceil_mode", 0))
    if kind == "max":
        return F.max_pool2d(x, kernel, strides, (top, left), ceil_mode=ceil)
    return F.avg_pool2d(x, kernel, strides, (top, left), ceil_mode=ceil,
                        count_include_pad=bool(attrs.get("count_include_pad", 0)))


#: ONNX element types a ``Cast`` may produce -> torch dtypes
CAST_TYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64,
              10: torch.float16, 16: torch.bfloat16}


def _cast(attrs: Dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    to = int(attrs["to"])
    if to not in CAST_TYPES:
        raise Unsupported(f"Cast to ONNX type {to}")
    return x.to(CAST_TYPES[to])


def _floats(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


#: ONNX operator -> ``(attrs, *inputs) -> output`` (inputs in the node's order, None for an empty name)
OPERATORS: Dict[str, Callable[..., torch.Tensor]] = {
    "Conv": _conv,
    "BatchNormalization": _batch_norm,
    "PRelu": _prelu,
    "Relu": lambda attrs, x: F.relu(x),
    "Sigmoid": lambda attrs, x: torch.sigmoid(x),
    "Add": lambda attrs, a, b: a + b,
    "Sub": lambda attrs, a, b: _floats(a) - b,
    "Mul": lambda attrs, a, b: _floats(a) * b,
    "Div": lambda attrs, a, b: _floats(a) / b,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "MatMul": lambda attrs, a, b: a @ b,
    "Transpose": lambda attrs, x: x.permute(*attrs.get("perm", reversed(range(x.dim())))),
    "Concat": lambda attrs, *xs: torch.cat(xs, dim=int(attrs["axis"])),
    "GlobalAveragePool": lambda attrs, x: x.mean(dim=(2, 3), keepdim=True),
    "MaxPool": lambda attrs, x: _pool(attrs, x, "max"),
    "AveragePool": lambda attrs, x: _pool(attrs, x, "average"),
    "Cast": _cast,
    "Dropout": lambda attrs, x, *rest: x,      # inference: the identity
    "Identity": lambda attrs, x: x,
}


def _attributes(node: Any) -> Dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: Any) -> torch.Tensor:
    from onnx import numpy_helper

    attrs = {a.name: a for a in node.attribute}
    if "value" not in attrs:
        raise Unsupported(f"Constant without a 'value' tensor ({', '.join(attrs)})")
    return torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"].t)))


class OnnxModule(nn.Module):
    """The dynamic part of an ONNX graph as PyTorch calls; constants are float32 buffers that move
    with ``.to(device)`` (run it in bf16 under ``torch.autocast``, as the other teachers do).

    Args:
        steps: ``(operator, attributes, input names, output name)`` in execution order.
        constants: name -> tensor, every value that does not depend on the input.
        input_name, output_name: the graph's image input and embedding output.
    """

    def __init__(self, steps: List[Tuple[str, Dict[str, Any], List[str], str]], constants: Dict[str, torch.Tensor],
                 input_name: str, output_name: str) -> None:
        super().__init__()
        self.steps = steps
        self.input_name, self.output_name = input_name, output_name
        self.buffer_of: Dict[str, str] = {}
        used = {name for _, _, inputs, _ in steps for name in inputs}
        for index, (name, value) in enumerate(sorted(constants.items())):
            if name in used:
                buffer = f"c{index}_" + re.sub(r"\W", "_", name)[:40]
                self.register_buffer(buffer, value.contiguous())
                self.buffer_of[name] = buffer
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: Dict[str, Any] = {self.input_name: x, "": None}
        for name, buffer in self.buffer_of.items():
            values[name] = getattr(self, buffer)
        for op, attrs, inputs, output in self.steps:
            values[output] = OPERATORS[op](attrs, *(values[i] for i in inputs))
        return values[self.output_name]


def graph_to_module(path: str, model: Any) -> OnnxModule:
    """The :class:`OnnxModule` of a repaired ``onnx.ModelProto`` (``path`` names it in errors)."""
    from onnx import numpy_helper

    graph = model.graph
    constants: Dict[str, torch.Tensor] = {
        init.name: torch.from_numpy(np.array(numpy_helper.to_array(init))) for init in graph.initializer}
    input_name = graph.input[0].name
    steps = []
    produced = {input_name}
    for node in graph.node:
        where = f"node {node.name or node.op_type!r} ({node.op_type})"
        try:
            if len(node.output) < 1 or not node.output[0]:
                raise Unsupported("no output")
            if node.domain not in ("", "ai.onnx"):
                raise Unsupported(f"operator domain {node.domain!r}")
            if node.op_type == "Constant":
                constants[node.output[0]] = _constant_value(node)
                continue
            if node.op_type not in OPERATORS:
                raise Unsupported(f"operator {node.op_type} is not among the {len(OPERATORS)} that facekd runs in "
                                  f"PyTorch ({', '.join(sorted(OPERATORS))}); use teacher.backend: onnxruntime")
            attrs = _attributes(node)
            inputs = [name for name in node.input]
            if all(name == "" or name in constants for name in inputs):   # fold it once, here
                with torch.no_grad():
                    constants[node.output[0]] = OPERATORS[node.op_type](
                        attrs, *(constants[name] if name else None for name in inputs))
                continue
            unknown = [name for name in inputs if name and name not in produced and name not in constants]
            if unknown:
                raise Unsupported(f"reads {unknown[0]!r}, which no earlier node produces")
            steps.append((node.op_type, attrs, inputs, node.output[0]))
            produced.add(node.output[0])
        except Unsupported as error:
            raise DataError(path, f"cannot run in PyTorch: {where}: {error}") from None
    output_name = graph.output[0].name if len(graph.output) else ""
    if output_name not in produced or output_name == input_name:
        raise DataError(path, f"cannot run in PyTorch: the graph's output {output_name!r} is not computed "
                              "from its input")
    return OnnxModule(steps, constants, input_name, output_name)


def onnx_to_torch(path: str) -> Tuple[OnnxModule, Any]:
    """``(module, input value info)`` of the ONNX embedder in ``path``, repaired in memory as
    onnxruntime would run it (:func:`facekd.export.onnx_graph.repair_graph`)."""
    from facekd.export.onnx_graph import repair_graph
    from facekd.export.protos import load_onnx_proto

    proto = load_onnx_proto(path, load_weights=True)
    try:
        prepared = repair_graph(path, proto)
        module = graph_to_module(path, prepared.model)
    except DataError:
        raise
    except Exception as error:  # a malformed graph: onnx / numpy / torch errors while reading or folding it
        raise DataError(path, f"malformed ONNX graph ({type(error).__name__}: {error})") from None
    return module, prepared.model.graph.input[0]
