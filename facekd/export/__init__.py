"""Deployment: ONNX export with checks, INT8 quantisation and the onnxruntime runtime.

* :func:`fold_batchnorm` — eval-mode copy with BatchNorm folded into conv/linear layers;
* :func:`export_onnx` — ONNX (opset >= 17, dynamic batch, ``float`` or ``uint8`` input,
  metadata), :func:`load_checkpoint_model` to rebuild a trained backbone;
* :func:`check_export` — ``onnx.checker`` + onnxruntime vs PyTorch at batch 1/7/64;
* :func:`rewrite_prelu` — PReLU expressed with ops onnxruntime runs fast and chains in int8
  (exact; applied by :func:`export_onnx` by default);
* :func:`quantize_int8` — static INT8 (QDQ or QOperator) calibrated on aligned faces, its
  choices one :class:`~facekd.export.int8_options.Int8Options`; :func:`check_int8` — drift and
  verification accuracy of the INT8 model vs its fp32 original;
* :func:`fit_threshold` / :func:`store_threshold` — the verification threshold in the metadata;
* :class:`OnnxEmbedder` (evaluation embedder) and :class:`FaceEmbedder` (deployment API;
  ``precision="int8"`` runs the :func:`int8_sibling` file);
* :func:`profile_layer_types` — time, GFLOP/s and GB/s per layer type against the roofline;
* :func:`read_metadata` / :class:`ExportMetadata` — the ``facekd.*`` metadata_props.

onnx and onnxruntime are imported when used, so importing this package is cheap.
"""
from facekd.export.check import ExportCheckError, ExportCheckReport, check_export
from facekd.export.faces import load_faces, synthetic_faces
from facekd.export.fold import find_fold_pairs, fold_batchnorm
from facekd.export.formats import INPUT_FORMATS, input_format
from facekd.export.int8_check import check_int8
from facekd.export.metadata import ExportMetadata, read_metadata
from facekd.export.onnx_export import export_onnx, load_checkpoint_model
from facekd.export.prelu import PRELU_REWRITES, rewrite_prelu, rewrite_prelu_file
from facekd.export.profiling import profile_layer_types
from facekd.export.protos import int8_sibling, model_for_precision
from facekd.export.int8_options import DEFAULT_INT8, Int8Options
from facekd.export.quantize import QuantizationReport, quantize_int8
from facekd.export.runtime import FaceEmbedder, ModelInputError, OnnxEmbedder
from facekd.export.threshold import fit_threshold, store_threshold

__all__ = ["fold_batchnorm", "find_fold_pairs", "export_onnx", "load_checkpoint_model", "check_export",
           "ExportCheckReport", "ExportCheckError", "quantize_int8", "Int8Options", "DEFAULT_INT8", "check_int8",
           "QuantizationReport", "OnnxEmbedder",
           "FaceEmbedder", "ModelInputError", "ExportMetadata", "read_metadata", "INPUT_FORMATS",
           "input_format", "load_faces", "synthetic_faces", "PRELU_REWRITES", "rewrite_prelu",
           "rewrite_prelu_file", "profile_layer_types", "int8_sibling", "model_for_precision", "fit_threshold",
           "store_threshold"]
