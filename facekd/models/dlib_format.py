"""Reader of dlib's serialisation of its face ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

No code from the file is executed: the bytes are decoded field by field against the one
network this reader knows, :data:`FACE_RESNET` (``anet_type`` of dlib's
``examples/dnn_face_recognition_ex.cpp``), and anything else — another dlib network, a
truncated file, a changed layer name, random bytes — raises a one-line
:class:`~facekd.errors.DataError` naming the file, the byte offset and what was expected.

dlib's encoding (``dlib/serialize.h``, ``dlib/dnn/*.h``), as found in the file:

- integers: a control byte (low nibble: number of bytes; ``0x80``: negative) followed by
  that many little-endian magnitude bytes;
- floats and doubles outside tensors: ``float_details``, an integer mantissa and an integer
  exponent, value ``mantissa * 2**exponent``;
- strings: an integer length, then the bytes; bools: ASCII ``'1'`` / ``'0'``;
- tensors: version 2, four shape integers (N, K, R, C), then N*K*R*C little-endian IEEE
  float32 (row-major, NCHW); alias tensors (views into a layer's ``params``): version 1 and
  the shape only.
- a network is written from the loss inward: each wrapper (``add_layer`` v2, tag and skip
  layers v1, the innermost ``add_layer`` v3) writes its version and then its subnetwork, and
  an ``add_layer`` writes its layer's details *after* the subnetwork — so the layers' details
  appear from the input outward, each followed by three bools and two (innermost: three
  tensors and the sample expansion factor) gradient/output tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from facekd.errors import DataError
from facekd.fileio import PathLike

#: what dlib's loader would also reject: integers longer than this many bytes
MAX_INT_BYTES = 8


@dataclass
class DlibLayer:
    """One layer of a dlib network, input side first.

    Attributes:
        kind: ``input``, ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``fc``,
            ``tag``, ``skip``, ``add_prev`` or ``loss``.
        args: the layer's hyper-parameters (filters, kernel, stride, padding, tag id, ...).
        params: named float32 arrays (``weight``, ``bias``, ``gamma``, ``beta``, ``mean``).
    """
    kind: str
    args: Dict[str, int] = field(default_factory=dict)
    params: Dict[str, np.ndarray] = field(default_factory=dict)

    def num_parameters(self) -> int:
        """Number of learnt values (the input layer's channel means are not learnt)."""
        return 0 if self.kind == "input" else int(sum(p.size for p in self.params.values()))


class _Bytes:
    """A cursor over the file's bytes that raises :class:`DataError` on anything unexpected."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, problem: str) -> None:
        raise DataError(self.path, f"not dlib's face ResNet (dlib_face_recognition_resnet_model_v1): "
                                   f"at byte {self.pos}: {problem}")

    def take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            self.fail(f"file ends early (needs {count} more bytes, has {len(self.data) - self.pos})")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > MAX_INT_BYTES or control & 0x70:
            self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        if exponent >= 32000:
            self.fail("infinite or NaN value where a finite one was expected")
        return float(np.ldexp(float(mantissa), exponent))

    def string(self, limit: int = 64) -> str:
        size = self.integer()
        if not 0 <= size <= limit:
            self.fail(f"string of length {size}")
        return self.take(size).decode("latin-1")

    def boolean(self) -> bool:
        value = self.take(1)
        if value not in (b"0", b"1"):
            self.fail(f"bool {value!r}")
        return value == b"1"

    def expect_int(self, expected: int, what: str) -> None:
        start, value = self.pos, self.integer()
        if value != expected:
            self.pos = start
            self.fail(f"{what}: expected {expected}, found {value}")

    def expect_string(self, expected: Tuple[str, ...], what: str) -> str:
        start, value = self.pos, self.string()
        if value not in expected:
            self.pos = start
            self.fail(f"{what}: expected layer {' or '.join(map(repr, expected))}, found {value!r}")
        return value

    def shape(self, version: int) -> Tuple[int, int, int, int]:
        self.expect_int(version, "tensor version")
        dims = tuple(self.integer() for _ in range(4))
        if min(dims) < 0 or int(np.prod(dims, dtype=np.int64)) * 4 > len(self.data):
            self.fail(f"tensor shape {dims}")
        return dims  # type: ignore[return-value]

    def tensor(self) -> np.ndarray:
        dims = self.shape(2)
        count = int(np.prod(dims, dtype=np.int64))
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(dims).astype(np.float32)


# ---------------------------------------------------------------------------- the network
def _stage(filters: int, blocks: int, down: bool) -> List[DlibLayer]:
    """dlib's ``ares`` blocks (``ares_down`` first when ``down``), input side first."""
    layers: List[DlibLayer] = []
    for index in range(blocks):
        stride = 2 if down and index == 0 else 1
        layers += [DlibLayer("tag", {"id": 1}),
                   DlibLayer("con", {"filters": filters, "kernel": 3, "stride": stride}),
                   DlibLayer("affine"), DlibLayer("relu"),
                   DlibLayer("con", {"filters": filters, "kernel": 3, "stride": 1}),
                   DlibLayer("affine")]
        if stride == 2:
            layers += [DlibLayer("tag", {"id": 2}), DlibLayer("skip", {"id": 1}),
                       DlibLayer("avg_pool", {"kernel": 2, "stride": 2}), DlibLayer("add_prev", {"id": 2})]
        else:
            layers += [DlibLayer("add_prev", {"id": 1})]
        layers.append(DlibLayer("relu"))
    return layers


def face_resnet_layout() -> List[DlibLayer]:
    """``anet_type`` of ``dnn_face_recognition_ex.cpp``, input side first, without weights."""
    return ([DlibLayer("input", {"size": 150}), DlibLayer("con", {"filters": 32, "kernel": 7, "stride": 2}),
             DlibLayer("affine"), DlibLayer("relu"), DlibLayer("max_pool", {"kernel": 3, "stride": 2})]
            + _stage(32, 3, False) + _stage(64, 4, True) + _stage(128, 3, True) + _stage(256, 3, True)
            + _stage(256, 1, True)
            + [DlibLayer("avg_pool", {"kernel": 0, "stride": 1}), DlibLayer("fc", {"outputs": 128}),
               DlibLayer("loss")])


def _padding(kernel: int, stride: int) -> int:
    """dlib's default padding of ``con_`` / ``max_pool_`` / ``avg_pool_``: ``kernel/2`` only at stride 1."""
    return 0 if stride != 1 else kernel // 2


# ---------------------------------------------------------------------------- layer details
def _read_input(cur: _Bytes, layer: DlibLayer, channels: int) -> int:
    cur.expect_string(("input_rgb_image_sized",), "input layer")
    layer.params["mean"] = np.array([cur.real() for _ in range(3)], dtype=np.float32)
    for what in ("rows", "columns"):
        cur.expect_int(layer.args["size"], f"input {what}")
    return 3


def _read_con(cur: _Bytes, layer: DlibLayer, channels: int) -> int:
    cur.expect_string(("con_4",), "convolution")
    n, k, s = layer.args["filters"], layer.args["kernel"], layer.args["stride"]
    params = cur.tensor().reshape(-1)
    for expected, what in ((n, "filters"), (k, "rows"), (k, "columns"), (s, "stride y"), (s, "stride x"),
                           (_padding(k, s), "padding y"), (_padding(k, s), "padding x")):
        cur.expect_int(expected, f"con {what}")
    for dims, what in (((n, channels, k, k), "filters"), ((1, n, 1, 1), "biases")):
        if cur.shape(1) != dims:
            cur.fail(f"con {what}: expected shape {dims}")
    if params.size != n * channels * k * k + n:
        cur.fail(f"con params: expected {n * channels * k * k + n} values, found {params.size}")
    for _ in range(4):                           # learning-rate and weight-decay multipliers
        cur.real()
    layer.args["padding"] = _padding(k, s)
    layer.params["weight"] = params[:-n].reshape(n, channels, k, k)
    layer.params["bias"] = params[-n:].copy()
    return n


def _read_affine(cur: _Bytes, layer: DlibLayer, channels: int) -> int:
    cur.expect_string(("affine_",), "affine")
    params = cur.tensor().reshape(-1)
    for what in ("gamma", "beta"):
        if cur.shape(1) != (1, channels, 1, 1):
            cur.fail(f"affine {what}: expected shape (1, {channels}, 1, 1)")
    cur.expect_int(0, "affine mode (CONV_MODE)")
    if params.size != 2 * channels:
        cur.fail(f"affine params: expected {2 * channels} values, found {params.size}")
    layer.params["gamma"], layer.params["beta"] = params[:channels].copy(), params[channels:].copy()
    return channels


def _read_relu(cur: _Bytes, layer: DlibLayer, channels: int) -> int:
    if cur.expect_string(("relu_", "relu_2"), "relu") == "relu_2":
        cur.boolean()
    return channels


def _read_pool(name: str) -> Callable[[_Bytes, DlibLayer, int], int]:
    def read(cur: _Bytes, layer: DlibLayer, channels: int) -> int:
        cur.expect_string((f"{name}_2",), name)
        k, s = layer.args["kernel"], layer.args["stride"]
        for expected, what in ((k, "rows"), (k, "columns"), (s, "stride y"), (s, "stride x"),
                               (_padding(k, s), "padding y"), (_padding(k, s), "padding x")):
            cur.expect_int(expected, f"{name} {what}")
        layer.args["padding"] = _padding(k, s)
        return channels
    return read


def _read_add_prev(cur: _Bytes, layer: DlibLayer, channels: int) -> int:
    cur.expect_string(("add_prev_",), "add_prev")
    return channels


def _read_fc(cur: _Bytes, layer: DlibLayer, channels: int) -> int:
    cur.expect_string(("fc_2",), "fc_no_bias")
    outputs = layer.args["outputs"]
    cur.expect_int(outputs, "fc outputs")
    cur.expect_int(channels, "fc inputs")
    params = cur.tensor().reshape(-1)
    if cur.shape(1) != (channels, outputs, 1, 1):
        cur.fail(f"fc weights: expected shape ({channels}, {outputs}, 1, 1)")
    cur.shape(1)                                 # biases alias (unused: no bias)
    cur.expect_int(1, "fc bias mode (FC_NO_BIAS)")
    for _ in range(4):
        cur.real()
    if params.size != channels * outputs:
        cur.fail(f"fc params: expected {channels * outputs} values, found {params.size}")
    # dlib stores [num_inputs x num_outputs] and computes x @ W; torch's Linear wants [out, in]
    layer.params["weight"] = params.reshape(channels, outputs).T.copy()
    return outputs


#: layer kind -> reader of its details ``(cursor, layer, input channels) -> output channels``
DETAIL_READERS: Dict[str, Callable[[_Bytes, DlibLayer, int], int]] = {
    "input": _read_input, "con": _read_con, "affine": _read_affine, "relu": _read_relu,
    "max_pool": _read_pool("max_pool"), "avg_pool": _read_pool("avg_pool"),
    "add_prev": _read_add_prev, "fc": _read_fc,
}

#: wrapper kind -> the version integer it writes before its subnetwork
WRAPPER_VERSIONS = {"tag": 1, "skip": 1}
ADD_LAYER_VERSION = 2
INPUT_ADD_LAYER_VERSION = 3


def _read_loss(cur: _Bytes) -> None:
    cur.expect_int(1, "add_loss_layer version")
    cur.expect_string(("loss_metric_2",), "loss_metric")
    cur.real(), cur.real()                       # margin, distance threshold


def _read_layer_state(cur: _Bytes, innermost: bool) -> None:
    """The three bools and gradient/output tensors an ``add_layer`` writes after its details."""
    for _ in range(3):
        cur.boolean()
    for _ in range(3):
        cur.tensor()
    if innermost:
        cur.integer()                            # sample expansion factor


def parse_face_resnet(path: PathLike) -> List[DlibLayer]:
    """The layers (input side first, with weights) of dlib's face ResNet file ``path``.

    Raises :class:`~facekd.errors.DataError` (one line: file, byte offset, what was expected)
    when the file is not exactly this network.
    """
    path = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataError(path, f"cannot read dlib model file ({error.strerror})") from None
    cur = _Bytes(data, path)
    layers = face_resnet_layout()
    _read_loss(cur)
    body = layers[1:-1]                          # between the input and the loss
    for layer in reversed(body):                 # wrappers, outermost first
        version = WRAPPER_VERSIONS.get(layer.kind, ADD_LAYER_VERSION)
        if layer is body[0]:
            version = INPUT_ADD_LAYER_VERSION
        cur.expect_int(version, f"{layer.kind} layer header")
    channels = DETAIL_READERS["input"](cur, layers[0], 0)
    for layer in body:                           # details, input side first
        if layer.kind in WRAPPER_VERSIONS:
            continue
        channels = DETAIL_READERS[layer.kind](cur, layer, channels)
        _read_layer_state(cur, innermost=layer is body[0])
    if cur.pos != len(data):
        cur.fail(f"{len(data) - cur.pos} bytes after the network")
    return layers


def count_parameters(layers: List[DlibLayer]) -> int:
    """Learnt values of a parsed network."""
    return sum(layer.num_parameters() for layer in layers)


def describe_layers(layers: List[DlibLayer]) -> List[str]:
    """One short text per layer, input side first (``"con 32 7x7/2"``, ``"tag1"``, ...)."""
    def text(layer: DlibLayer) -> str:
        a = layer.args
        if layer.kind == "con":
            return f"con {a['filters']} {a['kernel']}x{a['kernel']}/{a['stride']}"
        if layer.kind in ("max_pool", "avg_pool"):
            return f"{layer.kind} {a['kernel']}x{a['kernel']}/{a['stride']}" if a["kernel"] else "avg_pool all"
        if layer.kind in ("tag", "skip", "add_prev"):
            return f"{layer.kind}{a['id']}"
        if layer.kind == "fc":
            return f"fc_no_bias {a['outputs']}"
        if layer.kind == "input":
            return f"input_rgb_image_sized {a['size']}"
        return layer.kind
    return [text(layer) for layer in layers]


def input_mean(layers: List[DlibLayer]) -> Optional[np.ndarray]:
    """The input layer's per-channel means (R, G, B), pixels in 0..255."""
    return layers[0].params.get("mean") if layers and layers[0].kind == "input" else None
