"""AgeDB-30 pair lists: a text file, one pair per line: ``img1 img2 issame`` (whitespace or
comma separated; ``issame`` is 1/0 or true/false; ``#`` starts a comment), image paths relative
to ``root`` (default: the list's folder); folds are 10 consecutive blocks (600 pairs each for
the 6,000-pair AgeDB-30).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

import numpy as np

from facekd.data.image_io import read_image
from facekd.data.pairs.pair_set import ImageIndex, PairSet, check_files_exist, content_lines, position_folds
from facekd.errors import DataError

_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "diff", "different"}


def parse_pair_list(path) -> Tuple[List[Tuple[str, str]], np.ndarray]:
    """Parse ``img1 img2 issame`` lines (whitespace or comma separated): ``(path pairs, issame)``."""
    path = Path(path)
    entries, issame = [], []
    for number, line in content_lines(path):
        parts = [p for p in re.split(r"[,\s]+", line) if p]
        flag = parts[2].lower() if len(parts) == 3 else None
        if flag not in _TRUE and flag not in _FALSE:
            raise DataError(path, f"line {number}: expected 'img1 img2 issame', got {line!r}")
        entries.append((parts[0], parts[1]))
        issame.append(flag in _TRUE)
    if not entries:
        raise DataError(path, "no pairs")
    return entries, np.asarray(issame, dtype=bool)


def agedb_pair_set(path, name: str = "agedb_30", root=None, num_folds: int = 10, check_files: bool = True,
                   **options) -> PairSet:
    """AgeDB(-30) from a pair list (see the module doc); folds are ``num_folds`` consecutive blocks."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    entries, issame = parse_pair_list(path)
    index = ImageIndex()
    pairs = [[index(str(root / a)), index(str(root / b))] for a, b in entries]
    if check_files:
        check_files_exist(index.images, path)
    return PairSet(name, index.images, np.asarray(pairs), issame, position_folds(len(issame), num_folds),
                   read_image, **options)
