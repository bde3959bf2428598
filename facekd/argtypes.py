"""argparse ``type=`` functions for the numeric options of every command and script.

Each checks a value against a :class:`facekd.config.Range` (the rule config fields declare with
:func:`facekd.config.bounded`), so a negative count, a zero batch size, NaN or an empty list is
refused by argparse before anything loads: exit status 2 and one line such as
``facekd eval: error: argument --batch-size: must be an integer >= 1, got '0'``::

    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--sizes", type=number_list(int, ge=1, none_ok=True), default="112,56")
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, List, NoReturn, Optional, Union

from facekd.config import MAX_INPUT_SIZE, MIN_INPUT_SIZE, Range

Number = Union[int, float]

#: exit status of a run stopped by bad input (argparse uses 2 for bad options, too)
EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser whose errors (a bad option value, an unknown option) are one line,
    ``facekd eval: error: argument --batch-size: must be an integer >= 1, got '0'``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(kind: type, rule: Range) -> Callable[[str], Number]:
    what = f"{'an integer' if kind is int else 'a number'} {rule}"

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value not in rule:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {rule}"
    return parse


def number(kind: type = int, *, ge: Optional[float] = None, gt: Optional[float] = None,
           le: Optional[float] = None, lt: Optional[float] = None) -> Callable[[str], Number]:
    """A ``type=`` for one finite ``kind`` (int or float) within the bounds."""
    return _parser(kind, Range.of(ge, gt, le, lt))


def number_list(kind: type = int, *, none_ok: bool = False, ge: Optional[float] = None,
                gt: Optional[float] = None, le: Optional[float] = None,
                lt: Optional[float] = None) -> Callable[[str], List[Number]]:
    """A ``type=`` for comma-separated numbers, each within the bounds; at least one, unless
    ``none_ok`` (then ``none`` is the empty list)."""
    item = number(kind, ge=ge, gt=gt, le=le, lt=lt)

    def parse(text: str) -> List[Number]:
        if none_ok and text.strip().lower() == "none":
            return []
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers{' or none' if none_ok else ''}, "
                                             f"got {text!r}")
        return values

    parse.__name__ = f"list of {item.__name__}"
    return parse


#: counts and sizes that must be at least one (batch sizes, threads, steps of a loop)
positive_int = number(int, ge=1)
#: counts where 0 means none (``--latency-runs 0`` skips the measurement)
non_negative_int = number(int, ge=0)
#: rates and durations
positive_float = number(float, gt=0)
non_negative_float = number(float, ge=0)
#: shares and probabilities
fraction = number(float, ge=0, le=1)
#: cosine similarities (thresholds)
cosine = number(float, ge=-1, le=1)
#: a face's side given to a model (:data:`facekd.config.MIN_INPUT_SIZE` .. ``MAX_INPUT_SIZE`` px)
input_size = number(int, ge=MIN_INPUT_SIZE, le=MAX_INPUT_SIZE)
#: random seeds (numpy takes 32 bits)
seed = number(int, ge=0, le=2 ** 32 - 1)
