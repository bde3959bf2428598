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
