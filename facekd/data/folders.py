"""``FolderDataset``: aligned faces stored as ``root/<identity>/**/<image>``."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

from facekd.data.base import FaceDataset
from facekd.data.image_io import is_image_file, read_image
from facekd.errors import DataError

LOG = logging.getLogger(__name__)


def images_under(folder: Path, follow_links: bool = False) -> List[Path]:
    """Image files below `folder`, in sorted walk order.

    With ``follow_links`` linked folders below it are entered too (a tree of links to identity
    folders), each real folder once: a folder linked twice is listed once, a link loop ends."""
    found: List[Path] = []
    entered = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=follow_links):
        real = os.path.realpath(dirpath)
        if real in entered:
            dirnames[:] = []
            continue
        entered.add(real)
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames) if is_image_file(name))
    return found


def file_stamp(path: Path, root: Optional[Path] = None) -> str:
    """``name|size|digest`` of a file (``name`` relative to ``root`` when given; ``digest``: BLAKE2b
    of its bytes), or ``name|missing``.  By content, not modification time: a copy of the data (a
    restored backup, a new disk) keeps its fingerprint and its teacher caches; an edit changes it."""
    name = (path.relative_to(root) if root is not None else path).as_posix()
    try:
        data = path.read_bytes()
    except OSError:
        return f"{name}|missing"
    return f"{name}|{len(data)}|{hashlib.blake2b(data, digest_size=16).hexdigest()}"


class FolderDataset(FaceDataset):
    """One sub-folder of ``root`` per identity (sorted names -> labels 0..C-1), images anywhere below it.

    ``num_identities`` / ``images_per_identity`` keep only the first N identities / images
    (sorted order; ``None`` or 0 = all).  An identity folder without images raises
    :class:`DataError` naming it, or is dropped with a warning when ``skip_bad_images``.
    ``fit='none'`` requires every image to be ``input_size`` square (aligned); ``'resize'`` /
    ``'center'`` adapt other sizes (e.g. ORL's 92x112).
    """

    def __init__(self, root, input_size: int = 112, transform: Optional[Callable] = None,
                 skip_bad_images: bool = False, num_identities: Optional[int] = None,
                 images_per_identity: Optional[int] = None, fit: str = "none") -> None:
        super().__init__(input_size, transform, skip_bad_images)
        self.root = Path(root)
        self.fit_mode = fit
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(self.root, "no identity folders found")
        self.paths: List[Path] = []
        self.classes = []
        labels: List[int] = []
        self.skipped_identities: List[str] = []
        for folder in folders:
            if num_identities and len(self.classes) >= num_identities:
                break
            images = images_under(folder)
            if not images:
                if not skip_bad_images:
                    raise DataError(folder, "identity folder contains no images")
                LOG.warning("%s: identity folder contains no images; skipped", folder)
                self.skipped_identities.append(folder.name)
                continue
            if images_per_identity:
                images = images[:images_per_identity]
            labels.extend([len(self.classes)] * len(images))
            self.paths.extend(images)
            self.classes.append(folder.name)
        if not self.classes:
            raise DataError(self.root, "no identity folder contains images")
        self.labels = np.asarray(labels, dtype=np.int64)

    def _load(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])

    def describe(self, index: int) -> str:
        return str(self.paths[index])

    def _fingerprint_parts(self) -> Sequence[str]:
        return [file_stamp(path, self.root) for path in self.paths]
