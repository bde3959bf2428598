"""Faces whose landmarks ship with the photos: align from a landmark file, without a detector.

Datasets such as All-Age-Faces give each photo a landmark file (``key points/<stem>.txt``).
Aligning from those points needs no MTCNN (none of its misses or misplaced points, and no
detector time).  Each file format is one registered class in :data:`LANDMARK_FORMATS` that
reads a file into the 5 arcface points, in :data:`~facekd.data.align.ARCFACE_DST`'s order:
the eye on the image's left, the other eye, the nose tip, the mouth corner on the image's
left, the other corner.

:class:`LandmarkFileAligner` stands in for :class:`~facekd.data.align.FaceAligner` in
:func:`~facekd.data.align_tree.align_tree` (``facekd align SRC DST --landmarks intraface49
--landmarks-dir DIR``): the photo ``SRC/a/b.jpg`` is aligned with the points of
``DIR/a/b<suffix>``.  A missing or malformed landmark file raises :class:`DataError` naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from facekd.data.align import Located
from facekd.errors import DataError
from facekd.registry import Registry

#: landmark file format name -> class with ``suffix`` and ``read(path) -> float64 [5, 2]``
LANDMARK_FORMATS = Registry("landmark file format")


def read_point_rows(path: Path, count: int) -> np.ndarray:
    """``count`` rows of ``x y`` (whitespace or commas) from a text file, as float64 ``[count, 2]``."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read the landmark file ({error})") from None
    rows = [line.replace(",", " ").split() for line in text.splitlines() if line.strip()]
    try:
        points = np.asarray([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError:
        raise DataError(path, "landmark file: every line must be two numbers 'x y'") from None
    if points.shape != (count, 2):
        raise DataError(path, f"landmark file: expected {count} lines of 'x y', got "
                              f"{len(rows)} line(s) of {sorted({len(r) for r in rows})} value(s)")
    if not np.isfinite(points).all():
        raise DataError(path, "landmark file holds a non-finite coordinate")
    return points


class LandmarkFormat:
    """Base class: ``suffix`` of the files and ``read(path)`` -> the 5 arcface points ``[5, 2]``."""

    suffix = ".txt"

    def read(self, path: Path) -> np.ndarray:
        raise NotImplementedError


@LANDMARK_FORMATS.register("intraface49")
class IntraFace49(LandmarkFormat):
    """49 points, one ``x y`` line each: IntraFace's SDM layout (All-Age-Faces' ``key points``).

    0-9 eyebrows, 10-18 nose (10-13 the bridge down to the tip, 14-18 the base), 19-24 the eye
    on the image's left, 25-30 the other eye, 31-48 the mouth (31 and 37 its corners).  Eye
    centres are the means of the six eye points.  Checked by drawing the points on All-Age-Faces
    photos of several ages, and against MTCNN's landmarks on the same photos
    (``tests/test_landmark_files.py``).
    """

    LEFT_EYE = slice(19, 25)
    RIGHT_EYE = slice(25, 31)
    NOSE_TIP = 13
    MOUTH_LEFT, MOUTH_RIGHT = 31, 37

    def read(self, path: Path) -> np.ndarray:
        return self.five_points(read_point_rows(path, 49))

    @classmethod
    def five_points(cls, points: np.ndarray) -> np.ndarray:
        """The 5 arcface points of a ``[49, 2]`` array."""
        return np.stack([points[cls.LEFT_EYE].mean(0), points[cls.RIGHT_EYE].mean(0), points[cls.NOSE_TIP],
                         points[cls.MOUTH_LEFT], points[cls.MOUTH_RIGHT]])


@LANDMARK_FORMATS.register("five")
class FivePoints(LandmarkFormat):
    """5 ``x y`` lines already in the arcface order (points converted by other tools)."""

    def read(self, path: Path) -> np.ndarray:
        return read_point_rows(path, 5)


class LandmarkFileAligner:
    """Align from landmark files: ``locate(image, rel)`` reads ``folder/rel`` with the format's suffix.

    Same interface as :class:`~facekd.data.align.FaceAligner` where :func:`align_tree` uses it
    (``size``, ``margin``, ``unusable``, ``locate``).
    """

    def __init__(self, fmt: str, folder, size: int = 112, margin: float = 0.0) -> None:
        self.format: LandmarkFormat = LANDMARK_FORMATS.build(fmt)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(self.folder, "landmark folder does not exist")
        self.size = size
        self.margin = margin

    def landmark_path(self, rel: str) -> Path:
        """The landmark file of the photo at relative path ``rel``."""
        return (self.folder / rel).with_suffix(self.format.suffix)

    def unusable(self, image: np.ndarray) -> Optional[str]:
        """Why ``image`` cannot be aligned (``None`` when it can): not a uint8 RGB photo."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or not image.size:
            return f"expected a uint8 RGB HxWx3 photo, got {image.dtype} {list(image.shape)}"
        return None

    def locate(self, image: np.ndarray, rel: str) -> Optional[Located]:
        """The 5 points of photo ``rel``; ``None`` when they lie outside the photo (a file for
        another photo); a missing or malformed file raises :class:`DataError`."""
        path = self.landmark_path(rel)
        if not path.is_file():
            raise DataError(path, "no landmark file for this photo")
        points = self.format.read(path)
        height, width = image.shape[:2]
        inside = (points[:, 0] >= -0.5) & (points[:, 0] <= width - 0.5) & \
                 (points[:, 1] >= -0.5) & (points[:, 1] <= height - 0.5)
        if not inside.all():
            return None
        return Located(points.astype(np.float32))
