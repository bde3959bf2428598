"""Input formats of an exported model: what the ONNX graph's ``input`` tensor holds.

``float``
    ``float32 [batch, 3, S, S]``, RGB, already normalised with
    :func:`facekd.preprocess.normalize_uint8` (``(x / 255 - 0.5) / 0.5``).  The graph is the
    bare network.
``uint8``
    ``uint8 [batch, S, S, 3]``, raw RGB pixels of aligned faces (the layout images have in
    memory).  The graph starts with the normalisation (cast, scale, shift, transpose), so
    deployment code feeds pixels directly.

Each format converts aligned uint8 faces and normalised float batches into its own
input (used by the runtime and by the export checks) and, for the exporter, maps its
input tensor to the normalised NCHW tensor the network expects.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch

from facekd.preprocess import MEAN, STD, denormalize_to_uint8, normalize_uint8
from facekd.registry import Registry

#: name -> :class:`InputFormat` subclass
INPUT_FORMATS = Registry("input format")

Dim = Union[int, str]


class InputFormat:
    """How one input format lays out a batch of faces (see the module docstring)."""

    name: str = ""
    dtype: np.dtype = np.dtype(np.float32)
    layout: str = "NCHW"
    description: str = ""

    def shape(self, size: int, batch: Dim = "batch") -> Tuple[Dim, ...]:
        """The input shape for ``size`` x ``size`` faces."""
        raise NotImplementedError

    def from_uint8(self, faces: np.ndarray) -> np.ndarray:
        """Aligned uint8 RGB faces ``N x S x S x 3`` -> this format."""
        raise NotImplementedError

    def from_normalized(self, batch: np.ndarray) -> np.ndarray:
        """A normalised float ``N x 3 x S x S`` batch -> this format."""
        raise NotImplementedError

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """In the exported graph: this format's input -> the normalised float NCHW tensor."""
        raise NotImplementedError

    def doc(self, size: int) -> str:
        """The text stored as the ONNX input's ``doc_string``."""
        dims = ", ".join(str(d) for d in self.shape(size))
        return f"{self.dtype.name} [{dims}] ({self.layout}): {self.description}"


@INPUT_FORMATS.register("float")
class FloatInput(InputFormat):
    """``float32 N x 3 x S x S`` normalised with ``(x / 255 - 0.5) / 0.5``."""

    name = "float"
    dtype = np.dtype(np.float32)
    layout = "NCHW"
    description = (f"RGB aligned faces normalised as (pixel / 255 - {MEAN}) / {STD}, "
                   "i.e. facekd.preprocess.normalize_uint8")

    def shape(self, size: int, batch: Dim = "batch") -> Tuple[Dim, ...]:
        return (batch, 3, size, size)

    def from_uint8(self, faces: np.ndarray) -> np.ndarray:
        return normalize_uint8(faces).numpy()

    def from_normalized(self, batch: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(batch, dtype=np.float32)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x


@INPUT_FORMATS.register("uint8")
class Uint8Input(InputFormat):
    """``uint8 N x S x S x 3`` raw RGB pixels; the graph normalises them."""

    name = "uint8"
    dtype = np.dtype(np.uint8)
    layout = "NHWC"
    description = ("raw RGB pixels of aligned faces (0..255); the graph casts, normalises "
                   f"((pixel / 255 - {MEAN}) / {STD}) and transposes to NCHW")

    def shape(self, size: int, batch: Dim = "batch") -> Tuple[Dim, ...]:
        return (batch, size, size, 3)

    def from_uint8(self, faces: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(faces, dtype=np.uint8)

    def from_normalized(self, batch: np.ndarray) -> np.ndarray:
        # exact for batches made by normalize_uint8 (evaluation): rounding undoes the scaling
        return denormalize_to_uint8(torch.as_tensor(np.asarray(batch, dtype=np.float32)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = 1.0 / (255.0 * STD), MEAN / STD
        return (x.to(torch.float32) * scale - shift).permute(0, 3, 1, 2)


def input_format(name: str) -> InputFormat:
    """The :class:`InputFormat` registered as ``name`` (``float`` or ``uint8``)."""
    return INPUT_FORMATS.build(name)
