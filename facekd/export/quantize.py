"""Static INT8 quantisation of an exported model with onnxruntime.quantization.

:func:`quantize_int8(fp32, int8, faces, options) <quantize_int8>` first rewrites
MobileFaceNet's PReLUs into operators the quantiser and the runtime chain in int8
(:mod:`facekd.export.prelu`; the rewritten fp32 graph is checked against the original before
quantising), calibrates activation ranges on aligned faces (:mod:`facekd.export.calibration`),
quantises weights (symmetric int8, per channel by default) and activations (uint8, per
tensor), writes the QDQ (or QOperator) model and copies the fp32 model's metadata (with
``facekd.quantization = int8-qdq`` / ``int8-qoperator`` and the options).  The choices travel
as one :class:`~facekd.export.int8_options.Int8Options`, validated once when it is made.  How far the result is from the
fp32 model (drift, verification accuracy) is :func:`facekd.export.int8_check.check_int8`'s job.

``keep_float=("last",)`` leaves the final linear layer in float (node names are accepted
too); bench/README.md compares these options by speed and accuracy.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from facekd.errors import ConfigError
from facekd.export.calibration import FaceCalibrationReader, entropy_ranges
from facekd.export.int8_options import DEFAULT_INT8, QUANT_FORMATS, WEIGHT_TYPES, Int8Options
from facekd.export.metadata import update_metadata
from facekd.export.prelu import INT8_PRELU_REWRITE, PRELU_REWRITES, rewrite_prelu_file
from facekd.export.protos import load_onnx_proto
from facekd.export.runtime import OnnxEmbedder, resize_faces
from facekd.fileio import PathLike

#: operators that carry weights; "first"/"last" in ``keep_float`` refer to these
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
#: operators quantised by default (Relu and Clip fold into the preceding QLinearConv; the
#: uint8 input's normalisation, a Mul and a Sub on the 3-channel input, stays float)
DEFAULT_OPS = ("Conv", "Gemm", "MatMul", "Add", "Relu", "Clip")
#: largest |difference| of the rewritten fp32 graph vs the original, relative to max |output|:
#: float rounding only.  ``dwconv1`` computes ``a * x`` as ``x + (a - 1) * x``, whose rounding error
#: relative to the result grows as ``1 / a`` for small slopes; a random-init 112 px student reached
#: 1.09e-5 on an AMD EPYC with AVX-512 (uint8 input), so 1e-5 refused exact rewrites
MAX_REWRITE_DIFF = 1e-4


def resolve_keep_float(model_path: PathLike, keep_float: Sequence[str]) -> List[str]:
    """Node names for ``keep_float`` entries: ``first``/``last`` weight layer, or node names.

    Raises :class:`ConfigError` for a name that is not a node of the model.
    """
    proto = load_onnx_proto(model_path, load_weights=False)
    names = [node.name for node in proto.graph.node]
    weight_nodes = [node.name for node in proto.graph.node if node.op_type in WEIGHT_OPS]
    aliases = {"first": weight_nodes[:1], "last": weight_nodes[-1:]}
    out: List[str] = []
    for entry in keep_float:
        entry = entry.strip()
        if not entry:
            continue
        if entry in aliases:
            resolved = aliases[entry]
        elif entry in names:
            resolved = [entry]
        else:
            raise ConfigError(f"--keep-float {entry!r}: not 'first', 'last' or a node of {model_path} "
                              f"(weight layers: {weight_nodes[:3]} ... {weight_nodes[-3:]})")
        out += [name for name in resolved if name not in out]
    return out


@dataclass
class Drift:
    """fp32 vs int8 embeddings on the same faces."""
    faces: int
    mean_cosine: float
    min_cosine: float
    max_abs_diff: float


@dataclass
class QuantizationReport:
    """What :func:`quantize_int8` did and measured."""
    fp32_path: str
    int8_path: str
    calibration_faces: int
    calibrate_method: str
    per_channel: bool
    kept_float: List[str]
    preprocessed: bool
    fp32_mb: float
    int8_mb: float
    quantized_nodes: int          # QuantizeLinear nodes in the int8 graph (QDQ) / QLinear nodes (QOperator)
    quant_format: str = "qdq"
    weight_type: str = "s8"
    reduce_range: bool = False
    calibration_source: str = "faces"
    prelu_rewrite: Optional[str] = None          # the PReLU rewrite the INT8 graph carries
    prelu_rewritten: int = 0                     # PRelu nodes rewritten
    rewrite_max_abs_diff: Optional[float] = None  # rewritten fp32 graph vs the original
    float_nodes: Dict[str, int] = field(default_factory=dict)   # float compute ops left, by type
    drift: Optional[Drift] = None
    verification: Dict[str, Dict[str, float]] = field(default_factory=dict)  # set -> metric -> value

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def __str__(self) -> str:
        fmt = {"qdq": "QDQ", "qoperator": "QOperator"}.get(self.quant_format, self.quant_format)
        lines = [f"INT8 ({fmt}, U8{self.weight_type.upper()}, per-channel weights: {self.per_channel}, "
                 f"reduce_range: {self.reduce_range}, calibration: {self.calibrate_method} on "
                 f"{self.calibration_faces} {self.calibration_source} faces) -> {self.int8_path}",
                 f"  size {self.fp32_mb:.2f} MB -> {self.int8_mb:.2f} MB; {self.quantized_nodes} quantised "
                 f"nodes; kept in float: {', '.join(self.kept_float) or 'none'}"]
        if self.prelu_rewritten:
            lines.append(f"  PReLU rewrite {self.prelu_rewrite!r}: {self.prelu_rewritten} nodes, fp32 graph "
                         f"equal to the original (max |diff| {self.rewrite_max_abs_diff:.2e})")
        elif self.prelu_rewrite and self.prelu_rewrite != "none":
            lines.append(f"  PReLU rewrite {self.prelu_rewrite!r}, as in the fp32 export")
        if self.float_nodes:
            lines.append("  float compute nodes left: " + ", ".join(f"{op} x{n}" for op, n in
                                                                   sorted(self.float_nodes.items())))
        if self.drift:
            d = self.drift
            lines.append(f"  drift on {d.faces} held-out faces: cosine mean {d.mean_cosine:.5f}, "
                         f"min {d.min_cosine:.5f}; max |diff| {d.max_abs_diff:.3e}")
        for name, metrics in self.verification.items():
            lines.append(f"  {name}: accuracy fp32 {100 * metrics['fp32_accuracy']:.2f}% -> int8 "
                         f"{100 * metrics['int8_accuracy']:.2f}% ({100 * metrics['drop']:+.2f} pt drop), "
                         f"flip: {100 * metrics['fp32_flip_accuracy']:.2f}% -> "
                         f"{100 * metrics['int8_flip_accuracy']:.2f}%; {at_fp32_thresholds(metrics)}")
        return "\n".join(lines)


def at_fp32_thresholds(metrics: Dict[str, Any]) -> str:
    """What INT8 changes at the fp32 model's thresholds, in words (a :func:`compare_verification` result)."""
    return (f"at fp32's thresholds int8 {100 * metrics['int8_flip_accuracy_at_fp32_thresholds']:.2f}%, "
            f"{metrics['decisions_changed']} of {metrics['pairs']} decisions changed")


def _preprocess(source: str, target: str) -> bool:
    """``quant_pre_process`` (shape inference + graph optimisation); False if it fails."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(source, target, skip_symbolic_shape=False)
        return True
    except Exception:  # the pre-processing is an optimisation; quantise the original instead
        shutil.copyfile(source, target)
        return False


def check_rewrite(original: OnnxEmbedder, rewritten: PathLike, faces: np.ndarray,
                  tolerance: float = MAX_REWRITE_DIFF) -> float:
    """Max |difference| of ``rewritten``'s embeddings vs ``original``'s on ``faces``, relative to max |value|.

    Raises :class:`ExportCheckError` (from :mod:`facekd.export.check`) naming the file when it
    exceeds ``tolerance``: a graph rewrite must not change the model.
    """
    from facekd.export.check import ExportCheckError

    faces = resize_faces(np.asarray(faces), original.input_size)
    expected = original.embed_uint8(faces)
    actual = OnnxEmbedder(rewritten, threads=1).embed_uint8(faces)
    relative = float(np.abs(actual - expected).max() / max(float(np.abs(expected).max()), 1e-12))
    if not relative <= tolerance:
        raise ExportCheckError(f"{os.fspath(rewritten)}: the PReLU rewrite changed the outputs "
                               f"(max |diff| {relative:.2e} of max |value|, allowed {tolerance:.0e})")
    return relative


def float_compute_nodes(proto: Any, qdq: bool = True) -> Dict[str, int]:
    """Compute operators of a quantised graph that still run in float (``{op_type: count}``).

    In a QDQ graph a node is quantised when every input comes from a ``DequantizeLinear``
    (the runtime then fuses it into a QLinear kernel); in a QOperator graph only QLinear*
    and integer ops are.  Quantize/Dequantize nodes and shape-only ops are not counted.
    """
    ignore = {"QuantizeLinear", "DequantizeLinear", "Flatten", "Reshape", "Transpose", "Squeeze",
              "Unsqueeze", "Constant", "Cast"}
    dequantized = {out for node in proto.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    counts: Dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in ignore or node.op_type.startswith("QLinear") or node.op_type.endswith("Integer"):
            continue
        if qdq and all(name in dequantized for name in node.input if name):
            continue
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def int8_source(fp32_path: PathLike, fp32_prelu: Optional[str], int8_prelu: Optional[str], prelu_path: PathLike,
                export_prelu: Callable[[PathLike], Any]) -> PathLike:
    """The fp32 ONNX file that :func:`quantize_int8` should quantise with INT8's own PReLU rewrite.

    ``fp32_path`` itself when its rewrite ``fp32_prelu`` is INT8's ``int8_prelu`` (names; ``None`` or
    ``"none"`` for no rewrite); otherwise ``prelu_path``, the model exported with its ``PRelu`` nodes
    (which :func:`quantize_int8` then rewrites), written by ``export_prelu(prelu_path)`` unless it exists.
    """
    if (fp32_prelu or "none") == (int8_prelu or "none"):
        return fp32_path
    if not os.path.exists(prelu_path):
        export_prelu(prelu_path)
    return prelu_path


def quantize_int8(fp32_path: PathLike, int8_path: PathLike, calibration_faces: np.ndarray,
                  options: Int8Options = DEFAULT_INT8, *, prelu: Optional[str] = INT8_PRELU_REWRITE,
                  rewrite_faces: Optional[np.ndarray] = None, preprocess: bool = True,
                  op_types: Sequence[str] = DEFAULT_OPS, calibration_batch: int = 16,
                  threads: Optional[int] = None, calibration_source: str = "faces") -> QuantizationReport:
    """Quantise ``fp32_path`` to a static INT8 model at ``int8_path`` with ``options``.

    What the INT8 model computes is decided by ``options`` (:class:`Int8Options`, validated when
    it is made); the other arguments say how to get there.  The result is not measured here:
    :func:`facekd.export.int8_check.check_int8` compares it with the fp32 model.  The INT8
    model's metadata is the fp32 model's plus ``facekd.quantization`` and ``facekd.int8_options``.

    Args:
        fp32_path: an fp32 model written by :func:`facekd.export.export_onnx`.
        int8_path: where to write the INT8 model.
        calibration_faces: aligned uint8 RGB faces for the activation ranges (a few hundred
            real faces are typical; they are resized to the model's input size).
        options: keep_float, per_channel, calibrate_method, quant_format, weight_type, reduce_range.
        prelu: a :data:`facekd.export.prelu.PRELU_REWRITES` name applied to the graph's ``PRelu``
            nodes (and checked equal) before quantising (default ``dwconv1``), or ``None`` to quantise
            the graph as it is.  A graph exported with a rewrite has no ``PRelu`` left: export it with
            ``prelu=None`` for INT8 to get this rewrite.
        rewrite_faces: faces the rewritten fp32 graph is checked on (the first 8; default: the
            calibration faces').
        preprocess: run onnxruntime's ``quant_pre_process`` first.
        op_types: operator types to quantise.
        calibration_batch: faces per calibration batch.
        threads: onnxruntime intra-op threads of the fp32 model (the rewrite check).
        calibration_source: what the calibration faces are, for the report (a folder, ``synthetic``).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if prelu is not None and prelu not in PRELU_REWRITES:
        raise ConfigError(f"PReLU rewrite must be one of {tuple(PRELU_REWRITES)} or none, got {prelu!r}")
    fp32_path, int8_path = os.fspath(fp32_path), os.fspath(int8_path)
    fp32 = OnnxEmbedder(fp32_path, threads=threads, resize=True)
    if len(calibration_faces) == 0:
        raise ConfigError("INT8 calibration needs at least one face")
    reader = FaceCalibrationReader(fp32, calibration_faces, calibration_batch)
    Path(int8_path).parent.mkdir(parents=True, exist_ok=True)
    rewritten, rewrite_diff = 0, None
    with tempfile.TemporaryDirectory(prefix="facekd-quant-") as tmp:
        current = fp32_path
        if prelu is not None:
            current = os.path.join(tmp, "rewritten.onnx")
            rewritten = rewrite_prelu_file(fp32_path, current, prelu).rewritten
            faces = calibration_faces if rewrite_faces is None or not len(rewrite_faces) else rewrite_faces
            rewrite_diff = check_rewrite(fp32, current, faces[:8])
        source = os.path.join(tmp, "prepared.onnx")
        if preprocess:
            preprocessed = _preprocess(current, source)
        else:
            shutil.copyfile(current, source)
            preprocessed = False
        excluded = resolve_keep_float(source, options.keep_float)
        extra: Dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": options.weight_type == "s8"}
        if options.calibrate_method == "entropy":   # ranges from our own entropy pass override minmax's
            extra["TensorQuantOverrides"] = {name: [bounds] for name, bounds in
                                             entropy_ranges(source, reader, tmp, op_types).items()}
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.MinMax,
                  "percentile": CalibrationMethod.Percentile}[options.calibrate_method]
        quantize_static(source, int8_path, reader,
                        quant_format=getattr(QuantFormat, QUANT_FORMATS[options.quant_format]),
                        per_channel=options.per_channel, reduce_range=options.reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, WEIGHT_TYPES[options.weight_type]),
                        op_types_to_quantize=list(op_types), nodes_to_exclude=excluded,
                        calibrate_method=method, extra_options=extra)

    proto = onnx.load(int8_path)
    meta = fp32.metadata
    props = {**meta.to_props(), "facekd.quantization": f"int8-{options.quant_format}"}
    if rewritten:
        props["facekd.prelu_rewrite"] = prelu
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (load_onnx_proto(fp32_path, load_weights=False).doc_string
                        + f" INT8 ({QUANT_FORMATS[options.quant_format]}).")
    onnx.save(proto, int8_path)
    update_metadata(int8_path, int8_options=options.spec())

    quantized = sum(node.op_type == "QuantizeLinear" or node.op_type.startswith("QLinear")
                    for node in proto.graph.node)
    return QuantizationReport(
        fp32_path=fp32_path, int8_path=int8_path, calibration_faces=int(len(calibration_faces)),
        calibrate_method=options.calibrate_method, per_channel=options.per_channel, kept_float=excluded,
        preprocessed=preprocessed, fp32_mb=os.path.getsize(fp32_path) / 2 ** 20,
        int8_mb=os.path.getsize(int8_path) / 2 ** 20, quantized_nodes=quantized, quant_format=options.quant_format,
        weight_type=options.weight_type, reduce_range=options.reduce_range, calibration_source=calibration_source,
        # the rewrite the INT8 graph carries: this call's, or the fp32 export's own when it left no PRelu
        prelu_rewrite=prelu if rewritten else meta.prelu_rewrite, prelu_rewritten=rewritten,
        rewrite_max_abs_diff=rewrite_diff,
        float_nodes=float_compute_nodes(proto, qdq=options.quant_format == "qdq"))
