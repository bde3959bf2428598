"""Deployment: ONNX export with checks, INT8 quantisation and the onnxruntime runtime.

* :func:`fold_batchnorm` — eval-mode copy with BatchNorm folded into conv/linear layers;
* :func:`export_onnx` — ONNX (opset >= 17, dynamic batch, ``float`` or ``uint8`` input,
  metadata), :func:`load_checkpoint_model` to rebuild a trained backbone;
* :func:`check_export` — ``onnx.checker`` + onnxruntime vs PyTorch at batch 1/7/64;
* :func:`quantize_int8` — static QDQ INT8 calibrated on aligned faces, with drift and
  verification accuracy of fp32 vs int8;
* :class:`OnnxEmbedder` (evaluation embedder) and :class:`FaceEmbedder` (deployment API);
* :func:`read_metadata` / :class:`ExportMetadata` — the ``facekd.*`` metadata_props.

onnx and onnxruntime are imported when used, so importing this package is cheap.
"""
from facekd.export.check import ExportCheckError, ExportCheckReport, check_export
from facekd.export.faces import load_faces, synthetic_faces
from facekd.export.fold import find_fold_pairs, fold_batchnorm
from facekd.export.formats import INPUT_FORMATS, input_format
from facekd.export.metadata import ExportMetadata, read_metadata
from facekd.export.onnx_export import export_onnx, load_checkpoint_model
from facekd.export.quantize import QuantizationReport, quantize_int8
from facekd.export.runtime import FaceEmbedder, ModelInputError, OnnxEmbedder

__all__ = ["fold_batchnorm", "find_fold_pairs", "export_onnx", "load_checkpoint_model", "check_export",
           "ExportCheckReport", "ExportCheckError", "quantize_int8", "QuantizationReport", "OnnxEmbedder",
           "FaceEmbedder", "ModelInputError", "ExportMetadata", "read_metadata", "INPUT_FORMATS",
           "input_format", "load_faces", "synthetic_faces"]
