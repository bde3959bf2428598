"""The choices of a static INT8 model: :class:`Int8Options` and the defaults, :data:`DEFAULT_INT8`.

Apart from :mod:`facekd.export.quantize` (which makes INT8 models) so that loading a model
(:mod:`facekd.export.runtime`) can read its recorded options without importing the quantiser:
:func:`int8_saturation_warning` judges an INT8 file against the CPU it runs on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

from facekd.errors import ConfigError
from facekd.export.cpu_features import u8s8_saturates
from facekd.fileio import PathLike

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: ``quant_format`` names -> onnxruntime ``QuantFormat`` member names
QUANT_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
#: ``weight_type`` names -> onnxruntime ``QuantType`` member names (activations are always uint8)
WEIGHT_TYPES = {"s8": "QInt8", "u8": "QUInt8"}
#: the :class:`Int8Options` fields with a fixed set of values: field -> (what it is, the choices)
OPTION_CHOICES = {"calibrate_method": ("calibration method", CALIBRATION_METHODS),
                  "quant_format": ("quantisation format", tuple(QUANT_FORMATS)),
                  "weight_type": ("weight type", tuple(WEIGHT_TYPES))}


@dataclass(frozen=True)
class Int8Options:
    """The choices of a static INT8 model (:func:`~facekd.export.quantize.quantize_int8`'s keyword arguments).

    Attributes:
        keep_float: layers left in float: ``"first"``, ``"last"`` and/or node names.
        per_channel: per-output-channel weight scales.
        calibrate_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        quant_format: ``"qdq"`` or ``"qoperator"``.
        weight_type: ``"s8"`` (U8S8) or ``"u8"`` (U8U8).
        reduce_range: 7-bit weights (``[-64, 64]``): exact on every CPU; 8-bit int8 weights saturate
            onnxruntime's kernels on x86 CPUs without VNNI or AMX
            (:func:`~facekd.export.cpu_features.u8s8_saturates`).
    """
    keep_float: Tuple[str, ...] = ("last",)
    per_channel: bool = True
    calibrate_method: str = "percentile"
    quant_format: str = "qdq"
    weight_type: str = "s8"
    reduce_range: bool = True

    def __post_init__(self) -> None:
        """The one validation of the options: :class:`ConfigError` naming the option and its choices."""
        if isinstance(self.keep_float, str) or not all(isinstance(name, str) for name in self.keep_float):
            raise ConfigError(f"INT8 option keep_float={self.keep_float!r}: expected a tuple of layer names")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        for name in ("per_channel", "reduce_range"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"INT8 option {name}={getattr(self, name)!r}: expected true or false")
        for name, (what, choices) in OPTION_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"INT8 option {name}={getattr(self, name)!r} ({what}): expected one of {choices}")

    @classmethod
    def parse(cls, text: str, base: Optional["Int8Options"] = None) -> "Int8Options":
        """``"default"`` or ``key=value`` pairs separated by ``;`` over ``base`` (default: :data:`DEFAULT_INT8`),
        e.g. ``"calibrate_method=percentile;keep_float=first,last"``; ``keep_float=`` quantises every layer.

        Raises :class:`ConfigError` naming an unknown key or a value that is not one of its choices
        (the latter from the options' own validation).
        """
        options = base or DEFAULT_INT8
        text = text.strip()
        if text in ("", "default"):
            return options
        changes: Dict[str, Any] = {}
        for item in text.split(";"):
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or key not in cls.__dataclass_fields__:
                raise ConfigError(f"INT8 option {item.strip()!r}: expected key=value with a key of "
                                  f"{sorted(cls.__dataclass_fields__)}")
            if key == "keep_float":
                changes[key] = tuple(name.strip() for name in value.split(",") if name.strip())
            elif key in ("per_channel", "reduce_range"):
                changes[key] = {"true": True, "false": False}.get(value.lower(), value)
            else:
                changes[key] = value
        return replace(options, **changes)       # validated by __post_init__

    def saturates_on(self, found: Optional[Dict[str, bool]] = None) -> bool:
        """True when this model's int8 products saturate on the CPU ``found`` (an
        :func:`~facekd.export.cpu_features.int8_capability` result; default: this one): 8-bit
        int8 weights (``weight_type=s8``, ``reduce_range=false``) on x86 without VNNI or AMX."""
        return self.weight_type == "s8" and not self.reduce_range and u8s8_saturates(found)

    def describe(self) -> str:
        """What differs from :data:`DEFAULT_INT8`, as ``parse`` reads it (``"default"`` when nothing does)."""
        changed = [f"{name}={_option_text(getattr(self, name))}" for name in self.__dataclass_fields__
                   if getattr(self, name) != getattr(DEFAULT_INT8, name)]
        return ";".join(changed) or "default"

    def spec(self) -> str:
        """Every field as ``key=value`` pairs (``parse`` reads it back): what an INT8 model's metadata records."""
        return ";".join(f"{name}={_option_text(getattr(self, name))}" for name in self.__dataclass_fields__)


#: the defaults of ``facekd export --int8`` and :func:`~facekd.export.quantize.quantize_int8`, chosen by measurement on the
#: real students of results/students (bench/README.md, "INT8 options"): percentile ranges
#: (99.999th) pass the per-face check on both where minmax failed on the distilled one (min cosine
#: 0.9890), at the same speed; keeping the first layer in float also passes but costs 40 % of the
#: INT8 speed-up at batch 64.  7-bit weights (``reduce_range``), so that one INT8 file computes the
#: same embeddings on every CPU: with 8-bit weights the shipped distilled student's min per-face
#: cosine fell to 0.61 on an AVX2-only AMD EPYC (saturation), 0.95 with 7-bit weights, as 8-bit
#: weights give on CPUs with VNNI (bench/README.md, "8-bit weights saturate without VNNI").
DEFAULT_INT8 = Int8Options()


def int8_saturation_warning(path: PathLike, int8_options: Optional[str],
                            found: Optional[Dict[str, bool]] = None) -> Optional[str]:
    """A warning for an INT8 model at ``path`` (its ``facekd.int8_options`` text) whose int8 products
    saturate on this CPU (or ``found``; :meth:`Int8Options.saturates_on`), else ``None``."""
    if not int8_options:
        return None
    try:
        options = Int8Options.parse(int8_options)
    except ConfigError:
        return None            # options of another facekd version: nothing to judge
    if not options.saturates_on(found):
        return None
    return (f"{os.fspath(path)}: INT8 model with 8-bit weights (reduce_range=false) on a CPU without VNNI or AMX: "
            f"onnxruntime's int8 products saturate here and the embeddings can drift far from fp32's; "
            f"re-export it with 7-bit weights (facekd export --int8, the default --reduce-range) or use the fp32 model")


def _option_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)
