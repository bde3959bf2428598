"""Aligned faces for the export checks, INT8 calibration and benchmarks.

A face *source* is ``synthetic`` (deterministic faces of held-out synthetic identities,
:mod:`facekd.data.synthetic`), ``synthetic:SEED``, or a directory of images: 112x112 images
are taken as aligned, other sizes are aligned with MTCNN (photos without a face are
skipped with a warning).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from facekd.errors import DataError
from facekd.fileio import PathLike

LOG = logging.getLogger(__name__)
ALIGNED_SIZE = 112
#: identity offset of the faces used here: disjoint from training and validation identities
EXPORT_IDENTITY_OFFSET = 2_000_000


def synthetic_faces(count: int, seed: int = 0, images_per_identity: int = 4,
                    identity_offset: int = EXPORT_IDENTITY_OFFSET) -> np.ndarray:
    """``count`` synthetic aligned faces (uint8 ``count x 112 x 112 x 3``), ``images_per_identity`` per person."""
    from facekd.data.synthetic import SyntheticFaceGenerator

    generator = SyntheticFaceGenerator(seed)
    return np.stack([generator(identity_offset + i // images_per_identity, i % images_per_identity)
                     for i in range(count)])


def faces_from_dir(root: PathLike, count: Optional[int] = None, aligner: Any = None) -> np.ndarray:
    """Up to ``count`` aligned faces from the images under ``root`` (sorted, recursive).

    112x112 images are used as they are; others are aligned with MTCNN (``aligner``, a
    :class:`facekd.data.align.FaceAligner`, created when needed).
    """
    from facekd.data.folders import images_under
    from facekd.data.image_io import read_image

    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "face directory not found")
    paths = sorted(p for p in images_under(root, follow_links=True) if p.is_file())
    faces: List[np.ndarray] = []
    for path in paths:
        if count is not None and len(faces) >= count:
            break
        image = read_image(path)
        if image.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
            if aligner is None:
                from facekd.data.align import FaceAligner
                aligner = FaceAligner(size=ALIGNED_SIZE)
            image = aligner.align(image)
            if image is None:
                LOG.warning("%s: no face found by MTCNN; skipped", path)
                continue
        faces.append(image)
    if not faces:
        raise DataError(root, "no usable face images found")
    return np.stack(faces)


def load_faces(source: str, count: int, seed: int = 0) -> np.ndarray:
    """Aligned faces from ``source`` (``synthetic``, ``synthetic:SEED`` or a directory)."""
    kind, _, arg = str(source).partition(":")
    if kind == "synthetic" and not os.path.isdir(source):
        return synthetic_faces(count, seed=int(arg) if arg else seed)
    return faces_from_dir(source, count)
