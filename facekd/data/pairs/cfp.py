"""CFP's official ``Protocol/``: ``Pair_list_F.txt`` / ``Pair_list_P.txt`` map ``index path``
(paths relative to ``Protocol/``); ``Split/FP|FF/01..10/{same,diff}.txt`` hold ``i,j`` lines
(FP: i frontal, j profile; FF: both frontal); the split folder is the fold.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from facekd.data.image_io import read_image
from facekd.data.pairs.pair_set import ImageIndex, PairSet, check_files_exist, content_lines
from facekd.errors import DataError


def _protocol_dir(path: Path) -> Path:
    for candidate in (path, path / "Protocol"):
        if (candidate / "Split").is_dir():
            return candidate
    raise DataError(path, "not a CFP folder (no Protocol/Split inside)")


def _cfp_list(path: Path) -> Dict[int, str]:
    mapping = {}
    for number, line in content_lines(path):
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(path, f"line {number}: expected 'index path', got {line!r}")
        mapping[int(parts[0])] = os.path.normpath(path.parent / parts[1].strip())
    return mapping


def cfp_pair_set(path, protocol: str = "FP", name: Optional[str] = None, check_files: bool = True,
                 root=None, **options) -> PairSet:
    """CFP frontal-profile (``protocol='FP'``) or frontal-frontal (``'FF'``) from the official layout.

    ``path`` is the CFP folder (holding ``Protocol/`` and ``Data/``) or its ``Protocol/`` folder.
    ``root``: a folder of faces aligned beforehand with the layout of ``Data/Images``
    (``facekd align CFP/Data/Images ROOT``); the protocol's images are read from there instead.
    """
    protocol = protocol.upper()
    if protocol not in ("FP", "FF"):
        raise ValueError(f"protocol must be 'FP' or 'FF', got {protocol!r}")
    proto = _protocol_dir(Path(path))
    frontal = _cfp_list(proto / "Pair_list_F.txt")
    second = _cfp_list(proto / "Pair_list_P.txt") if protocol == "FP" else frontal
    if root is not None:
        images = os.path.normpath(proto.parent / "Data" / "Images")
        frontal, second = ({k: os.path.join(root, os.path.relpath(v, images)) for k, v in listing.items()}
                           for listing in (frontal, second))
    split_dir = proto / "Split" / protocol
    fold_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if not fold_dirs:
        raise DataError(split_dir, "no fold folders")
    index = ImageIndex()
    pairs, issame, folds = [], [], []
    for fold, fold_dir in enumerate(fold_dirs):
        for file_name, same_flag in (("same.txt", True), ("diff.txt", False)):
            pair_file = fold_dir / file_name
            for number, line in content_lines(pair_file):
                try:
                    i, j = (int(v) for v in line.split(","))
                    a, b = frontal[i], second[j]
                except (ValueError, KeyError):
                    raise DataError(pair_file, f"line {number}: expected 'i,j' with known image numbers, "
                                               f"got {line!r}") from None
                pairs.append([index(a), index(b)])
                issame.append(same_flag)
                folds.append(fold)
    if check_files:
        check_files_exist(index.images, proto)
    return PairSet(name or f"cfp_{protocol.lower()}", index.images, np.asarray(pairs), issame, folds, read_image,
                   **options)
