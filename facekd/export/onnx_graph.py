"""Public ONNX face embedders as they are shipped, made runnable: repairs, checks, sessions.

Files from OpenCV Zoo, insightface packs or vendors' exporters often fail in onnxruntime, or
run slowly, for reasons that have nothing to do with the network.  :func:`open_embedder`
repairs what can be repaired *in memory* (the file is never changed) and refuses the rest
with a :class:`~facekd.errors.DataError` naming the file and the reason:

* **initializers listed as graph inputs** (IR < 4 exporters): they become plain constants,
  so onnxruntime folds them (batch-norm fusion, constant folding) instead of treating every
  weight as a feed that might change;
* **inputs nothing feeds** (e.g. SFace's 29 weight names left behind by its quantiser):
  dropped;
* **weight-only INT8 / block-quantised weights** (``DequantizeLinear`` of constants):
  dequantised once into float32 constants, exactly what the node computes, so every run
  does not dequantise again;
* **a fixed batch size**: rewritten to a dynamic batch when the graph allows it (checked:
  two faces in one batch give what each gives alone); otherwise the session runs the fixed
  batch and :class:`EmbedderSession` feeds it face by face (padding a last partial batch).

Refused in one line: graphs with no or several real inputs, inputs that are not a 4-d image
``[N, 3, S, S]`` / ``[N, S, S, 3]`` of float or uint8, a file onnxruntime cannot load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import numpy as np

from facekd.errors import DataError, first_line

#: input element types an embedder may take (ONNX TensorProto codes -> names)
IMAGE_INPUT_TYPES = {1: "float32", 2: "uint8"}
#: largest difference between a face's embedding alone and inside a batch that still
#: counts as "the graph allows a dynamic batch" (relative to the embedding's norm)
BATCH_PROBE_TOLERANCE = 1e-4


@dataclass
class PreparedGraph:
    """A repaired model, ready for onnxruntime.

    Attributes:
        model: the repaired ``onnx.ModelProto``.
        repairs: what was changed, in words (empty: the file ran as it is).
        fixed_batch: the batch size the graph insists on, or None when the batch is dynamic.
    """
    model: Any
    repairs: List[str] = field(default_factory=list)
    fixed_batch: Optional[int] = None


def _dim_value(dim: Any) -> Any:
    return dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)


def shape_of(value_info: Any) -> list:
    """A value's dimensions: ints where fixed, the symbol (or None) where not."""
    return [_dim_value(d) for d in value_info.type.tensor_type.shape.dim]


def drop_initializer_inputs(graph: Any) -> int:
    """Remove graph inputs that are initializers (they stay as constants); returns how many."""
    constants = {init.name for init in graph.initializer}
    keep = [value for value in graph.input if value.name not in constants]
    dropped = len(graph.input) - len(keep)
    if dropped:
        del graph.input[:]
        graph.input.extend(keep)
    return dropped


def drop_unfed_inputs(graph: Any) -> List[str]:
    """Remove graph inputs no node reads and no output is; returns their names."""
    read = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    unused = [value.name for value in graph.input if value.name not in read]
    if unused:
        keep = [value for value in graph.input if value.name in read]
        del graph.input[:]
        graph.input.extend(keep)
    return unused


def _expand_blocks(values: np.ndarray, axis: int, block: int, length: int) -> np.ndarray:
    return np.repeat(values, block, axis=axis).take(np.arange(length), axis=axis)


def dequantize(quantized: np.ndarray, scale: np.ndarray, zero_point: Optional[np.ndarray],
               axis: int = 1, block_size: int = 0) -> np.ndarray:
    """``DequantizeLinear`` (opset 10-21: per-tensor, per-axis and blocked) in numpy, float32."""
    q = quantized.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    zero = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if scale.size > 1 or block_size:
        axis = axis % q.ndim
        if block_size:
            scale = _expand_blocks(scale, axis, block_size, q.shape[axis])
            zero = _expand_blocks(zero, axis, block_size, q.shape[axis])
        else:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def fold_weight_dequantization(graph: Any) -> int:
    """Replace ``DequantizeLinear`` nodes whose inputs are all constants by float32 constants.

    Only in weight-only quantised graphs: a graph that also quantises activations
    (``QuantizeLinear`` nodes, QDQ INT8) keeps its pairs for onnxruntime's integer kernels.
    """
    from onnx import helper, numpy_helper

    if any(node.op_type == "QuantizeLinear" for node in graph.node):
        return 0
    constants = {init.name: init for init in graph.initializer}
    keep, folded = [], []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx") \
                and all(name in constants for name in node.input if name):
            arrays = [numpy_helper.to_array(constants[name]) if name else None for name in node.input]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            value = dequantize(arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None,
                               int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)))
            folded.append(numpy_helper.from_array(value, node.output[0]))
        else:
            keep.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(folded)
        still_read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unused = [init for init in graph.initializer if init.name not in still_read]
        for init in unused:
            graph.initializer.remove(init)
    return len(folded)


def make_batch_dynamic(model: Any) -> Optional[int]:
    """Give the input and outputs a symbolic batch dimension; returns the fixed size it had (or None).

    Intermediate shape annotations (``value_info``) are dropped: they may carry the old batch.
    Whether the graph really allows another batch size is checked by running it
    (:func:`open_embedder`).
    """
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if not len(dims) or not dims[0].HasField("dim_value"):
        return None
    fixed = int(dims[0].dim_value)
    for value in list(graph.input) + list(graph.output):
        value_dims = value.type.tensor_type.shape.dim
        if len(value_dims):
            value_dims[0].dim_param = "N"
    del graph.value_info[:]
    return fixed


def check_image_input(path: str, graph: Any) -> None:
    """:class:`DataError` unless the graph has exactly one 4-d float/uint8 image input."""
    if len(graph.input) != 1:
        names = [value.name for value in graph.input]
        raise DataError(path, f"a face embedder has one image input; this model has {len(names)}: {names[:6]}"
                              + (" ..." if len(names) > 6 else ""))
    value = graph.input[0]
    shape = shape_of(value)
    elem = value.type.tensor_type.elem_type
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise DataError(path, f"not a face embedder: expected an image input [N, 3, S, S] or [N, S, S, 3], "
                              f"got {value.name} {shape}")
    if elem not in IMAGE_INPUT_TYPES:
        raise DataError(path, f"unsupported input element type {elem} of {value.name} "
                              f"(expected float32 or uint8)")


def repair_graph(path: str, model: Any) -> PreparedGraph:
    """Apply the in-memory repairs of this module's docstring to ``model`` (changed in place)."""
    graph = model.graph
    repairs = []
    count = drop_initializer_inputs(graph)
    if count:
        repairs.append(f"{count} initializers listed as inputs made constants")
    unfed = drop_unfed_inputs(graph)
    if unfed:
        repairs.append(f"{len(unfed)} inputs nothing reads dropped")
    count = fold_weight_dequantization(graph)
    if count:
        repairs.append(f"{count} quantised weights dequantised once")
    check_image_input(path, graph)
    return PreparedGraph(model, repairs)


def _session(model: Any, path: str, options: Any, providers: Sequence[str]) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=list(providers))
    except Exception as error:  # onnxruntime's own exception types
        raise DataError(path, f"onnxruntime cannot load the model ({first_line(error)})") from None


def _probe_batch(session: Any, shape: Sequence[int], dtype: np.dtype) -> bool:
    """Whether two random faces in one batch give what each gives alone."""
    rng = np.random.default_rng(0)
    faces = (rng.random((2, *shape)) * 255).astype(dtype)
    if dtype != np.uint8:
        faces = faces / 127.5 - 1.0          # a plausible input range for float embedders
    name = session.get_inputs()[0].name
    try:
        together = session.run(None, {name: faces.astype(dtype)})[0]
        alone = np.concatenate([session.run(None, {name: faces[i:i + 1].astype(dtype)})[0] for i in range(2)])
    except Exception:  # onnxruntime's own exception types: a reshape fixed to the old batch
        return False
    if together.shape != alone.shape:
        return False
    scale = max(float(np.abs(alone).max()), 1e-12)
    return float(np.abs(together - alone).max()) <= BATCH_PROBE_TOLERANCE * scale


def open_embedder(path: str, options: Any, providers: Sequence[str]) -> "EmbedderSession":
    """An :class:`EmbedderSession` of the face embedder in ``path``, repaired in memory."""
    from facekd.export.protos import load_onnx_proto

    proto = load_onnx_proto(path, load_weights=True)
    try:
        prepared = repair_graph(path, proto)
    except DataError:
        raise
    except Exception as error:  # a malformed graph: onnx / numpy errors while reading its constants
        raise DataError(path, f"malformed ONNX graph ({type(error).__name__}: {error})") from None
    model = prepared.model
    input_shape = shape_of(model.graph.input[0])
    dtype = np.dtype(IMAGE_INPUT_TYPES[model.graph.input[0].type.tensor_type.elem_type])
    fixed = make_batch_dynamic(model) if isinstance(input_shape[0], int) and input_shape[0] > 0 else None
    if fixed is not None:
        original = model.SerializeToString()
        session = _session(model, path, options, providers)
        if all(isinstance(d, int) for d in input_shape[1:]) and _probe_batch(session, input_shape[1:], dtype):
            prepared.repairs.append(f"fixed batch {fixed} made dynamic")
            return EmbedderSession(session, prepared)
        import onnx

        model = onnx.load_from_string(original)          # the graph needs its batch: keep it
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = fixed
        prepared.model, prepared.fixed_batch = model, fixed
        prepared.repairs.append(f"fixed batch {fixed} kept (the graph depends on it): run in batches of {fixed}")
    return EmbedderSession(_session(model, path, options, providers), prepared)


class EmbedderSession:
    """An onnxruntime session of a repaired embedder that takes batches of any size.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        prepared: the :class:`PreparedGraph` it runs (``repairs``, ``fixed_batch``).
        input, output_name: the graph's image input (onnxruntime ``NodeArg``) and first output.
    """

    def __init__(self, session: Any, prepared: PreparedGraph) -> None:
        self.session = session
        self.prepared = prepared
        self.input = session.get_inputs()[0]
        self.output_name = session.get_outputs()[0].name

    @property
    def repairs(self) -> List[str]:
        return self.prepared.repairs

    def get_inputs(self) -> list:
        return self.session.get_inputs()

    def get_outputs(self) -> list:
        return self.session.get_outputs()

    def run_batch(self, array: np.ndarray, chunk: Optional[int] = None) -> np.ndarray:
        """Raw ``float32 [N, D]`` outputs of ``array`` in the graph's input format.

        A fixed-batch graph is fed ``fixed_batch`` faces at a time (the last chunk padded
        with copies of its last face); ``chunk`` caps the faces run at once otherwise.
        """
        fixed = self.prepared.fixed_batch
        step = fixed or chunk or len(array)
        outputs = []
        for start in range(0, len(array), max(step, 1)):
            part = array[start:start + step]
            real = len(part)
            if fixed and real < fixed:
                part = np.concatenate([part, np.repeat(part[-1:], fixed - real, axis=0)])
            out = self.session.run([self.output_name], {self.input.name: np.ascontiguousarray(part)})[0]
            outputs.append(np.asarray(out, np.float32).reshape(len(part), -1)[:real])
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)
