"""The :class:`PairSet` every verification source produces, and what the format readers share.

A :class:`PairSet` is the contract of docs/DESIGN.md: ``images`` (unique keys), ``pairs``
(``int64 Nx2`` indices into ``images``), ``issame`` (``bool N``), ``folds`` (``int64 N``, ``-1``
when the source defines none) and ``load(i) -> uint8 RGB 112x112``.  The readers of the
on-disk formats (one module each in :mod:`facekd.data.pairs`) build it with
:func:`position_folds`, :class:`ImageIndex`, :func:`content_lines` and :func:`check_files_exist`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from facekd.data.align import FaceAligner, center_crop
from facekd.data.base import fit_to_size
from facekd.errors import DataError

LOG = logging.getLogger(__name__)

ALIGN_MODES = ("none", "resize", "center", "mtcnn")


class PairSet:
    """Verification pairs over a list of image keys.

    ``reader(key) -> uint8 RGB`` fetches an image.  Images that are not ``size`` x ``size``
    are prepared by ``align``: ``'mtcnn'`` (detect + arcface warp; when no face is found, a
    centre crop, counted in :attr:`no_face` and warned about; a photo too small to hold a face
    raises :class:`DataError`), ``'center'`` (centre crop of
    ``center_fraction`` moved by ``center_y_shift``, then resize; fast, deterministic),
    ``'resize'``, or ``'none'`` (raise :class:`DataError`).  ``cache=True`` keeps prepared
    images in memory.
    """

    def __init__(self, name: str, images: Sequence[str], pairs: np.ndarray, issame: np.ndarray,
                 folds: np.ndarray, reader: Callable[[str], np.ndarray], align: str = "mtcnn",
                 center_fraction: float = 0.53, center_y_shift: float = -0.026, cache: bool = False,
                 aligner: Optional[FaceAligner] = None, size: int = 112) -> None:
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        self.name = name
        self.images = list(images)
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.issame = np.asarray(issame, dtype=bool).reshape(-1)
        self.folds = np.asarray(folds, dtype=np.int64).reshape(-1)
        if not len(self.pairs) == len(self.issame) == len(self.folds):
            raise ValueError("pairs, issame and folds must have the same length")
        if len(self.pairs) and (self.pairs.min() < 0 or self.pairs.max() >= len(self.images)):
            raise ValueError("pair indices out of range of images")
        self.reader = reader
        self.align = align
        self.center_fraction = center_fraction
        self.center_y_shift = center_y_shift
        self.size = size
        self.aligner = aligner
        self.cache = cache
        self._cache: Dict[int, np.ndarray] = {}
        self.no_face: List[str] = []

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_folds(self) -> int:
        """Number of folds (0 when the source defines none)."""
        return int(self.folds.max()) + 1 if len(self.folds) and self.folds.max() >= 0 else 0

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` (of :attr:`images`) as uint8 RGB ``size`` x ``size``."""
        image = self._cache.get(index)
        if image is None:
            image = self._prepare(self.images[index], self.reader(self.images[index]))
            if self.cache:
                self._cache[index] = image
        return image

    def _prepare(self, key: str, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.size, self.size):
            return image
        if self.align == "center":
            return center_crop(image, self.center_fraction, self.size, self.center_y_shift)
        if self.align != "mtcnn":
            return fit_to_size(image, self.size, key, self.align)
        if self.aligner is None:
            self.aligner = FaceAligner(size=self.size)
        problem = self.aligner.unusable(image)
        if problem is not None:
            raise DataError(key, problem)
        face = self.aligner.align(image)
        if face is None:
            self.no_face.append(key)
            LOG.warning("%s: no face found by MTCNN; using a centre crop (%d so far in %s)",
                        key, len(self.no_face), self.name)
            face = center_crop(image, self.center_fraction, self.size, self.center_y_shift)
        return face

    def __repr__(self) -> str:
        return (f"PairSet({self.name!r}, {len(self)} pairs ({int(self.issame.sum())} same), "
                f"{len(self.images)} images, {self.num_folds} folds)")


def position_folds(count: int, num_folds: int = 10) -> np.ndarray:
    """Fold of each of ``count`` consecutive items: sklearn ``KFold(num_folds, shuffle=False)`` blocks."""
    sizes = np.full(num_folds, count // num_folds, dtype=np.int64)
    sizes[: count % num_folds] += 1
    return np.repeat(np.arange(num_folds, dtype=np.int64), sizes)


class ImageIndex:
    """Assigns each distinct image key an index, in order of first use."""

    def __init__(self) -> None:
        self.keys: Dict[str, int] = {}

    def __call__(self, key: str) -> int:
        return self.keys.setdefault(key, len(self.keys))

    @property
    def images(self) -> List[str]:
        return list(self.keys)


def check_files_exist(paths: Sequence[str], source) -> None:
    """Raise :class:`DataError` for the first of ``paths`` that is not a file (listed in ``source``)."""
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(path, f"image listed in {source} does not exist")


def content_lines(path: Path) -> List[Tuple[int, str]]:
    """``(line number, text)`` of the non-empty lines of a text file, ``#`` comments removed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read ({error})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append((number, line))
    return lines
