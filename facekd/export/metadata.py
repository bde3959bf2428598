"""The ``metadata_props`` facekd writes into exported ONNX models.

Every key starts with ``facekd.``; values are strings (ONNX's only metadata type):

====================================  ==========================================================
``facekd.format_version``             ``1``
``facekd.model_name``                 backbone name (``mobilefacenet``)
``facekd.input_name``                 name of the graph input (``input``)
``facekd.input_format``               ``float`` or ``uint8`` (:mod:`facekd.export.formats`)
``facekd.input_layout``               ``NCHW`` (float) or ``NHWC`` (uint8)
``facekd.input_size``                 side of the square aligned face, e.g. ``112``
``facekd.channel_order``              ``RGB``
``facekd.mean`` / ``facekd.std``      per-channel, comma separated, on the ``pixel / 255`` scale:
                                      ``normalised = (pixel / 255 - mean) / std``
``facekd.normalization_in_graph``     ``true`` when the graph applies mean/std (uint8 input)
``facekd.embedding_size``             output dimension ``D``
``facekd.embedding_normalized``       ``false``: the output ``embedding`` is raw; L2-normalise it
``facekd.config_digest``              :func:`facekd.config.config_digest` of the training config
``facekd.threshold``                  **cosine-similarity** threshold: same person iff
                                      ``cos(a, b) >= threshold`` (absent when unknown)
``facekd.threshold_sqeuclidean``      the same threshold as squared L2 distance of normalised
                                      embeddings (``d = 2 - 2 cos``; the evaluation protocol's
                                      scale, same iff ``d < threshold``)
``facekd.threshold_source``           where the threshold came from (val set, epoch)
``facekd.threshold_flip``             ``true`` when the threshold was fitted on flip-summed
                                      embeddings (image + mirror; facekd's validation does so)
``facekd.params`` / ``facekd.macs``   parameter and multiply-accumulate counts
``facekd.bn_folded``                  ``true`` when BatchNorm was folded before export
``facekd.prelu_rewrite``              how ``PRelu`` was rewritten (:mod:`facekd.export.prelu`), or ``none``
``facekd.quantization``               ``none``, ``int8-qdq`` or ``int8-qoperator``
``facekd.int8_options``               an INT8 model's options (:class:`facekd.export.int8_options.Int8Options`,
                                      every field, e.g. ``keep_float=last;...;calibrate_method=percentile``)
``facekd.int8_min_cosine``            an INT8 model's smallest per-face cosine to the fp32 model on the
                                      export's check faces
``facekd.int8_accuracy_change``       INT8 minus fp32 verification accuracy, percentage points (flip
                                      embeddings, the first ``--val`` set); ``facekd.int8_accuracy_source``
                                      names the set and both accuracies
``facekd.teacher_center``             for a student distilled on centred teacher embeddings
                                      (``teacher.center``): the mean unit teacher embedding,
                                      comma separated; to match this model against a gallery
                                      enrolled with that teacher, use ``t/|t| - teacher_center``
                                      (renormalised) for the gallery's vectors
====================================  ==========================================================
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

from facekd.errors import DataError
from facekd.export.protos import load_onnx_proto
from facekd.preprocess import CHANNEL_ORDER, INPUT_SIZE, MEAN, STD

PREFIX = "facekd."
FORMAT_VERSION = 1


def cosine_from_sqeuclidean(distance: float) -> float:
    """Cosine similarity of unit vectors whose squared L2 distance is ``distance`` (``1 - d/2``)."""
    return 1.0 - float(distance) / 2.0


def sqeuclidean_from_cosine(cosine: float) -> float:
    """Squared L2 distance of unit vectors with cosine similarity ``cosine`` (``2 - 2 cos``)."""
    return 2.0 - 2.0 * float(cosine)


def _floats(text: str) -> Tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _base_type(hint: Any) -> type:
    """``int`` for ``Optional[int]``, ``tuple`` for ``Tuple[float, ...]``, ..."""
    if typing.get_origin(hint) is Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


_PARSERS = {bool: lambda text: text.strip().lower() == "true", tuple: _floats, float: float,
            int: lambda text: int(float(text)), str: str}
#: keys written for readers' convenience, recomputed from the fields when parsing
DERIVED_KEYS = ("threshold_sqeuclidean",)


@dataclass
class ExportMetadata:
    """What an exported model records about itself (see the module docstring for the keys)."""
    model_name: str = "unknown"
    input_name: str = "input"
    input_format: str = "float"
    input_layout: str = "NCHW"
    input_size: int = INPUT_SIZE
    channel_order: str = CHANNEL_ORDER
    mean: Tuple[float, ...] = (MEAN, MEAN, MEAN)
    std: Tuple[float, ...] = (STD, STD, STD)
    normalization_in_graph: bool = False
    embedding_size: int = 0
    embedding_normalized: bool = False
    config_digest: Optional[str] = None
    threshold: Optional[float] = None              # cosine similarity
    threshold_source: Optional[str] = None
    threshold_flip: Optional[bool] = None
    params: Optional[int] = None
    macs: Optional[int] = None
    bn_folded: bool = False
    prelu_rewrite: str = "none"
    quantization: str = "none"
    int8_options: Optional[str] = None
    int8_min_cosine: Optional[float] = None
    int8_accuracy_change: Optional[float] = None     # percentage points, int8 - fp32
    int8_accuracy_source: Optional[str] = None
    teacher_center: Optional[Tuple[float, ...]] = None
    format_version: int = FORMAT_VERSION
    extra: Dict[str, str] = field(default_factory=dict)   # other facekd.* keys, kept verbatim

    @property
    def threshold_sqeuclidean(self) -> Optional[float]:
        """The threshold on the squared-L2 scale of the evaluation protocol."""
        return None if self.threshold is None else sqeuclidean_from_cosine(self.threshold)

    def to_props(self) -> Dict[str, str]:
        """The ``metadata_props`` dict (``facekd.``-prefixed string keys and values)."""
        props: Dict[str, str] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "extra" or value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(repr(float(v)) for v in value)
            elif isinstance(value, float):
                text = repr(value)
            else:
                text = str(value)
            props[PREFIX + item.name] = text
        if self.threshold is not None:
            props[PREFIX + "threshold_sqeuclidean"] = repr(self.threshold_sqeuclidean)
        props.update({PREFIX + k: v for k, v in self.extra.items()})
        return props

    @classmethod
    def from_props(cls, props: Dict[str, str], source: str = "<metadata>") -> "ExportMetadata":
        """Parse ``metadata_props`` written by :meth:`to_props` (unknown keys go to ``extra``).

        A value that does not parse as its field's type raises :class:`DataError` naming
        ``source`` (the model file) and the key.
        """
        hints = typing.get_type_hints(cls)
        kwargs: Dict[str, Any] = {}
        extra: Dict[str, str] = {}
        for key, text in props.items():
            if not isinstance(key, str) or not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX):]
            if name in DERIVED_KEYS:
                continue
            if name in hints and name != "extra":
                kind = _base_type(hints[name])
                try:
                    kwargs[name] = _PARSERS[kind](text)
                except (ValueError, TypeError, OverflowError, AttributeError):
                    raise DataError(source, f"metadata {key}={text!r} is not a valid "
                                            f"{getattr(kind, '__name__', kind)}") from None
            else:
                extra[name] = text
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_proto(cls, proto: Any, source: str = "<model>") -> "ExportMetadata":
        """The metadata of a loaded ONNX ``proto`` (errors name ``source``)."""
        return cls.from_props({p.key: p.value for p in proto.metadata_props}, source)


def update_metadata(path: Union[str, os.PathLike], **changes: Any) -> ExportMetadata:
    """Replace fields of the ``facekd.*`` metadata of the ONNX file ``path`` in place (other keys are kept).

    Returns the new metadata; raises :class:`facekd.errors.DataError` naming the file when it is not ONNX.
    """
    import onnx

    path = os.fspath(path)
    proto = load_onnx_proto(path)
    meta = dataclasses.replace(ExportMetadata.from_proto(proto, path), **changes)
    others: Dict[str, str] = {p.key: p.value for p in proto.metadata_props if not p.key.startswith(PREFIX)}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**others, **meta.to_props()})
    onnx.save(proto, path)
    return meta


def read_metadata(path: Union[str, os.PathLike]) -> ExportMetadata:
    """The :class:`ExportMetadata` of an ONNX file (weights are not loaded).

    Raises :class:`facekd.errors.DataError` naming the file when it is missing or not ONNX.
    """
    proto = load_onnx_proto(path, load_weights=False)
    return ExportMetadata.from_proto(proto, os.fspath(path))
