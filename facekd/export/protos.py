"""Reading ONNX files with errors that name them (shared by the metadata reader and the runtime).

A small leaf module: :mod:`facekd.export.metadata` and :mod:`facekd.export.runtime` both
import :func:`load_onnx_proto` from here, so neither imports the other.
"""
from __future__ import annotations

import os

from facekd.errors import DataError
from facekd.fileio import PathLike


def load_onnx_proto(path: PathLike, load_weights: bool = True):
    """``onnx.load`` with a :class:`DataError` naming the file when it is missing or not ONNX."""
    import onnx

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(path, "model file not found")
    try:
        proto = onnx.load(path, load_external_data=load_weights)
    except Exception as error:  # protobuf DecodeError and friends
        raise DataError(path, f"not an ONNX model (cannot parse it: {error})") from None
    if not proto.graph.node:
        raise DataError(path, "not an ONNX model (no graph nodes; is it a checkpoint or an image?)")
    return proto


#: suffix of the INT8 model ``facekd export --int8`` writes next to the fp32 one
INT8_SUFFIX = "_int8"
#: ``precision`` values :func:`model_for_precision` understands
PRECISIONS = ("fp32", "int8")


def int8_sibling(fp32_path: PathLike) -> str:
    """The INT8 file written next to ``fp32_path``: ``student.onnx`` -> ``student_int8.onnx``."""
    path = os.fspath(fp32_path)
    stem, ext = os.path.splitext(path)
    return f"{stem}{INT8_SUFFIX}{ext or '.onnx'}"


def model_for_precision(path: PathLike, precision: str = "fp32") -> str:
    """The ONNX file to run for ``precision``: ``path`` itself, or for ``int8`` its INT8 sibling.

    ``path`` may name the INT8 file directly (its metadata says ``int8-*``).  Raises
    :class:`DataError` naming the missing sibling when ``facekd export --int8`` has not written it.
    """
    from facekd.errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    path = os.fspath(path)
    if precision == "fp32":
        return path
    proto = load_onnx_proto(path, load_weights=False)
    quantization = {p.key: p.value for p in proto.metadata_props}.get("facekd.quantization", "none")
    if quantization.startswith("int8"):
        return path
    sibling = int8_sibling(path)
    if not os.path.isfile(sibling):
        raise DataError(sibling, f"INT8 model of {path} not found (write it with 'facekd export ... --int8')")
    return sibling
