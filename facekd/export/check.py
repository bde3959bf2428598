"""Checks run on every export: ONNX validity and onnxruntime-vs-PyTorch agreement.

:func:`check_export` runs ``onnx.checker`` (with shape inference), inspects the graph
(opset, dynamic batch axis, BatchNorm nodes left) and compares onnxruntime with the
PyTorch model on aligned faces at several batch sizes (1, 7 and 64 by default: exporters
that bake the batch size into a reshape break at batch > 1).  Every batch must reach a
cosine similarity of at least ``min_cosine`` (0.9999) per face; the maximum absolute
difference of the raw embeddings is reported.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from facekd.embedding_math import row_cosine
from facekd.errors import FaceKDError, first_line
from facekd.export.runtime import OnnxEmbedder, load_onnx_proto, resize_faces
from facekd.fileio import PathLike
from facekd.preprocess import normalize_uint8

DEFAULT_BATCH_SIZES = (1, 7, 64)
MIN_COSINE = 0.9999
#: per-face cosine an INT8 model must reach vs PyTorch (``facekd export --int8-min-cosine``)
MIN_INT8_COSINE = 0.99


class ExportCheckError(FaceKDError, RuntimeError):
    """An exported model failed a check (invalid graph or outputs that differ from PyTorch)."""


@dataclass
class BatchCheck:
    """onnxruntime vs PyTorch at one batch size."""
    batch_size: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    max_abs_value: float     # largest |embedding| value from PyTorch, to put the diff in scale
    ok: bool


@dataclass
class ExportCheckReport:
    """What :func:`check_export` found."""
    path: str
    checker_ok: bool
    checker_error: Optional[str]
    opset: int
    dynamic_batch: bool
    input_name: str
    input_type: str
    input_shape: List[Any]
    batchnorm_nodes: int
    min_cosine_required: float
    batches: List[BatchCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All checks passed."""
        return (self.checker_ok and self.dynamic_batch and self.opset >= 17
                and bool(self.batches) and all(b.ok for b in self.batches))

    @property
    def max_abs_diff(self) -> float:
        """Largest absolute difference over all batches."""
        return max((b.max_abs_diff for b in self.batches), default=float("nan"))

    @property
    def min_cosine(self) -> float:
        """Smallest per-face cosine over all batches."""
        return min((b.min_cosine for b in self.batches), default=float("nan"))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def __str__(self) -> str:
        lines = [f"export check of {self.path}: {'PASS' if self.ok else 'FAIL'}",
                 f"  onnx.checker: {'ok' if self.checker_ok else 'FAILED: ' + str(self.checker_error)}",
                 f"  opset {self.opset}; input '{self.input_name}' {self.input_type} {self.input_shape} "
                 f"(dynamic batch: {'yes' if self.dynamic_batch else 'NO'}); "
                 f"BatchNormalization nodes left: {self.batchnorm_nodes}",
                 f"  onnxruntime vs PyTorch (per-face cosine must be >= {self.min_cosine_required}):",
                 "    batch  min cosine   mean cosine  max |diff|   max |value|  ok"]
        for b in self.batches:
            lines.append(f"    {b.batch_size:>5}  {b.min_cosine:.7f}  {b.mean_cosine:.7f}  "
                         f"{b.max_abs_diff:.3e}    {b.max_abs_value:.3e}    {'yes' if b.ok else 'NO'}")
        return "\n".join(lines)


def _graph_facts(path: str) -> Dict[str, Any]:
    import onnx

    proto = load_onnx_proto(path)
    try:
        onnx.checker.check_model(path, full_check=True)
        checker_ok, checker_error = True, None
    except Exception as error:  # onnx.checker.ValidationError, shape inference errors
        checker_ok, checker_error = False, first_line(error)
    graph_input = proto.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {"checker_ok": checker_ok, "checker_error": checker_error, "opset": int(opset),
            "dynamic_batch": bool(dims) and isinstance(dims[0], str),
            "input_name": graph_input.name,
            "input_type": onnx.helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type).name,
            "input_shape": dims,
            "batchnorm_nodes": sum(n.op_type == "BatchNormalization" for n in proto.graph.node)}


def take_faces(faces: np.ndarray, count: int) -> np.ndarray:
    """``count`` faces from ``faces``, cycling through them when there are fewer."""
    faces = np.asarray(faces)
    if not len(faces):
        raise ValueError("no faces given")
    return faces[np.arange(count) % len(faces)]


def check_export(onnx_path: PathLike, torch_model: nn.Module, faces: np.ndarray,
                 batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, min_cosine: float = MIN_COSINE,
                 threads: Optional[int] = None, raise_on_failure: bool = True) -> ExportCheckReport:
    """Validate ``onnx_path`` and compare it with ``torch_model`` (the model before export).

    Args:
        onnx_path: the exported model.
        torch_model: the PyTorch backbone it was exported from (normalised NCHW input).
        faces: aligned uint8 RGB faces ``N x H x H x 3`` (real or synthetic), resized to the
            model's input size if needed and cycled when ``N`` < the largest batch.
        batch_sizes: batch sizes to run.
        min_cosine: smallest acceptable per-face cosine similarity.
        threads: onnxruntime intra-op threads.
        raise_on_failure: raise :class:`ExportCheckError` (carrying the report as
            ``.report``) when a check fails.
    """
    path = os.fspath(onnx_path)
    report = ExportCheckReport(path=path, min_cosine_required=min_cosine, **_graph_facts(path))
    embedder = OnnxEmbedder(path, threads=threads)
    faces = resize_faces(np.asarray(faces), embedder.input_size)
    model = torch_model.eval()
    for batch_size in batch_sizes:
        batch = take_faces(faces, batch_size)
        with torch.no_grad():
            expected = model(normalize_uint8(batch)).float().numpy()
        actual = embedder.embed_uint8(batch)
        cosine = row_cosine(expected, actual)
        report.batches.append(BatchCheck(
            batch_size=int(batch_size), min_cosine=float(cosine.min()), mean_cosine=float(cosine.mean()),
            max_abs_diff=float(np.abs(expected - actual).max()),
            max_abs_value=float(np.abs(expected).max()),
            ok=bool(actual.shape == expected.shape and cosine.min() >= min_cosine)))
    if raise_on_failure and not report.ok:
        error = ExportCheckError(f"{path}: the exported model failed its checks\n{report}")
        error.report = report
        raise error
    return report
