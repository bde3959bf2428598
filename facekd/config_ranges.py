"""The value ranges of config fields: :func:`bounded` declares a field's :class:`Range` beside
its type and default (``lr: float = bounded(0.1, gt=0)``); :func:`facekd.config.from_dict` checks
every value it builds against it.  Kept apart from :mod:`facekd.config` (the fields themselves)
and re-exported there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

#: key of a field's :class:`Range` in its ``dataclasses.field`` metadata
RANGE = "range"


def _shown(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


@dataclass(frozen=True)
class Range:
    """The numbers a config field accepts: optional bounds, each inclusive unless ``*_open``."""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def of(cls, ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
           lt: Optional[float] = None) -> "Range":
        """The range of the bounds ``ge`` (>=), ``gt`` (>), ``le`` (<=), ``lt`` (<)."""
        return cls(gt if gt is not None else ge, lt if lt is not None else le, gt is not None, lt is not None)

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_shown(self.low)}, "
                    f"{_shown(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_shown(self.low)}"
        return f"{'<' if self.high_open else '<='} {_shown(self.high)}"


def bounded(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None,
            le: Optional[float] = None, lt: Optional[float] = None) -> Any:
    """A dataclass field whose numbers must lie within the bounds (each item, for a list field).

    ``default`` is the value, or a factory such as ``list``.  :func:`from_dict` checks every
    value it builds against the field's :class:`Range` (None, for an ``Optional`` field, passes)::

        lr: float = bounded(0.1, gt=0)
        blur_prob: float = bounded(0.0, ge=0, le=1)
    """
    rule = Range.of(ge, gt, le, lt)
    if callable(default):
        return field(default_factory=default, metadata={RANGE: rule})
    return field(default=default, metadata={RANGE: rule})
