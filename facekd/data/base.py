"""``FaceDataset``: the interface every training source implements (see docs/DESIGN.md)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from facekd.errors import DataError
from facekd.fileio import atomic_write_text
from facekd.preprocess import normalize_uint8

LOG = logging.getLogger(__name__)


def fit_to_size(image: np.ndarray, size: int, name: str, mode: str = "none") -> np.ndarray:
    """Return ``image`` as ``size`` x ``size``; what to do with another size is ``mode``.

    ``'none'``: raise :class:`DataError` (training data must be aligned already);
    ``'resize'``: resize as is; ``'center'``: :func:`~facekd.data.align.center_crop` of the
    largest centred square.
    """
    if image.shape[0] == size and image.shape[1] == size:
        return image
    if mode == "resize":
        import cv2

        shrink = image.shape[0] > size or image.shape[1] > size
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if mode == "center":
        from facekd.data.align import center_crop

        return center_crop(image, 1.0, size, 0.0)
    raise DataError(name, f"expected an aligned {size}x{size} face, got {image.shape[1]}x{image.shape[0]} "
                          "(run `facekd align` first, or choose a resize/center mode)")


class FaceDataset(torch.utils.data.Dataset):
    """Base class of the training sources.

    Subclasses set ``labels`` (int64, contiguous ``0..C-1``), ``classes`` (label -> identity
    name) and implement :meth:`_load` and :meth:`describe`.  ``__getitem__(i)`` returns
    ``{"image": transform(load(i)), "label": int, "index": int}`` (the index lets a trainer
    look up cached teacher embeddings).  With ``skip_bad_images`` an unreadable sample is
    replaced by another image of the same identity; each bad file is warned about once
    and counted in :attr:`bad_images`.
    """

    labels: np.ndarray
    classes: List[str]

    def __init__(self, input_size: int = 112, transform: Optional[Callable] = None,
                 skip_bad_images: bool = False) -> None:
        self.input_size = int(input_size)
        self.transform = normalize_uint8 if transform is None else transform
        self.skip_bad_images = bool(skip_bad_images)
        self.bad_images: Dict[int, str] = {}
        self._members: Optional[Dict[int, np.ndarray]] = None
        self._fingerprinted: Optional[List[str]] = None     # _fingerprint_parts(), once per object

    # -- to implement -------------------------------------------------------------------
    def _load(self, index: int) -> np.ndarray:
        """Read sample ``index`` as uint8 RGB (any size); raise :class:`DataError` on failure."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from (a file path or record key) for messages."""
        raise NotImplementedError

    def _fingerprint_parts(self) -> Sequence[str]:
        """Strings that identify the data; hashed by :meth:`fingerprint`."""
        raise NotImplementedError

    # -- the contract -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of identities."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> np.ndarray:
        """Sample ``index`` as uint8 RGB ``input_size`` x ``input_size``; :class:`DataError` names the file."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return fit_to_size(self._load(index), self.input_size, self.describe(index), self.fit_mode)

    fit_mode = "none"

    def __getitem__(self, index: int) -> Dict[str, object]:
        index = int(index)
        try:
            image = self.load(index)
        except DataError as error:
            if not self.skip_bad_images:
                raise
            index, image = self._substitute(index, error)
        return {"image": self.transform(image), "label": int(self.labels[index]), "index": index}

    def _substitutes(self, index: int) -> np.ndarray:
        """The sorted samples that may stand in for ``index``: its identity's."""
        if self._members is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
            self._members = {c: order[bounds[c]:bounds[c + 1]] for c in range(self.num_classes)}
        return self._members[int(self.labels[index])]

    def _substitute(self, index: int, error: DataError):
        """Another readable sample of :meth:`_substitutes`, in a fixed order after ``index``."""
        self._note_bad(index, error)
        members = self._substitutes(index)
        start = int(np.searchsorted(members, index))
        for offset in range(1, len(members)):
            candidate = int(members[(start + offset) % len(members)])
            if candidate in self.bad_images:
                continue
            try:
                return candidate, self.load(candidate)
            except DataError as other:
                self._note_bad(candidate, other)
        label = int(self.labels[index])
        owner = f"identity {self.classes[label]!r}" if label >= 0 else "the unlabelled faces"
        raise DataError(error.path, f"{error.problem}; and no readable image is left for {owner}")

    def _note_bad(self, index: int, error: DataError) -> None:
        if index not in self.bad_images:
            self.bad_images[index] = str(error)
            LOG.warning("skipping bad image %s (%d bad so far)", error, len(self.bad_images))

    def fingerprint(self) -> str:
        """A hex digest that changes when the data (files, sizes, labels) changes.

        The data's part (:meth:`_fingerprint_parts`: a folder dataset reads every file for it) is
        computed on the first call and kept: a run asks once for its checkpoints and once per
        teacher cache."""
        if self._fingerprinted is None:
            self._fingerprinted = list(self._fingerprint_parts())
        digest = hashlib.sha256()
        digest.update(f"{type(self).__name__}|{self.input_size}|{self.fit_mode}".encode())
        for part in self._fingerprinted:
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        digest.update("\n".join(self.classes).encode())
        return digest.hexdigest()[:32]

    def save_class_map(self, path) -> None:
        """Write ``{"num_classes": C, "classes": [name of label 0, ...]}`` as JSON."""
        atomic_write_text(path, json.dumps({"num_classes": self.num_classes, "classes": list(self.classes)},
                                           indent=1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.num_classes} identities)"


def load_class_map(path) -> List[str]:
    """Read the identity names written by :meth:`FaceDataset.save_class_map`."""
    return list(json.loads(Path(path).read_text())["classes"])
