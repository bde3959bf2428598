"""``teacher.kind: embeddings`` — precomputed teacher vectors (a teacher behind an API).

The file is a NumPy ``.npz`` (read with ``allow_pickle=False``: nothing in it is executed)::

    keys               str  [N]      image paths, e.g. "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    embeddings         float[N, D]   the teacher's raw embedding of each image
    mirror_embeddings  float[N, D]   optional: of each image's horizontal mirror

Write one with :func:`save_embeddings`.  A key names an image by the *end* of its path: it
matches the sample whose path, split at ``/``, ends with the key's components (the longest
matching key wins), so keys relative to any folder above the images work.  Every training
sample (or pair image, in ``facekd eval``) must have a key; a missing one is an error naming
the image.  Without ``mirror_embeddings`` a mirrored view gets the image's own embedding.

Such a teacher cannot embed new pixels: the degraded probes of the resolution curve are
skipped for it in ``facekd eval``.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import PurePosixPath
from typing import Any, Dict, Sequence

import numpy as np
import torch

from facekd.errors import DataError
from facekd.fileio import PathLike, atomic_path
from facekd.teachers.base import TEACHERS, Teacher, existing_file, file_digest
from facekd.teachers.framing import Framing


def save_embeddings(path: PathLike, keys: Sequence[str], embeddings: np.ndarray,
                    mirror_embeddings: Any = None) -> None:
    """Write a precomputed-embeddings file (atomically)."""
    arrays: Dict[str, np.ndarray] = {"keys": np.asarray([str(k) for k in keys], dtype=str),
                                     "embeddings": np.asarray(embeddings, dtype=np.float32)}
    if mirror_embeddings is not None:
        arrays["mirror_embeddings"] = np.asarray(mirror_embeddings, dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _parts(path: str) -> tuple:
    return tuple(part for part in PurePosixPath(str(path).replace(os.sep, "/")).parts if part not in ("", "/"))


class EmbeddingsTeacher(Teacher):
    """Vectors looked up by image path (see the module docstring for the file layout)."""

    kind = "embeddings"

    def __init__(self, path: str) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise DataError(path, f"not a readable .npz embeddings file ({error})") from None
        for name in ("keys", "embeddings"):
            if name not in arrays:
                raise DataError(path, f"embeddings file has no {name!r} array (has {sorted(arrays)})")
        keys, vectors = arrays["keys"], arrays["embeddings"]
        mirrors = arrays.get("mirror_embeddings", vectors)
        if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors) or mirrors.shape != vectors.shape:
            raise DataError(path, f"expected keys [N], embeddings [N, D] (and mirror_embeddings [N, D]); got "
                                  f"{keys.shape}, {vectors.shape}, {mirrors.shape}")
        if not np.isfinite(vectors).all() or not np.isfinite(mirrors).all():
            raise DataError(path, "embeddings contain NaN or infinite values")
        self.rows = torch.from_numpy(np.stack([vectors, mirrors], axis=1).astype(np.float32))
        self.index: Dict[tuple, int] = {}
        for row, key in enumerate(keys):
            parts = _parts(key)
            if parts in self.index:
                raise DataError(path, f"key {key!r} appears twice")
            self.index[parts] = row
        self.has_mirrors = "mirror_embeddings" in arrays
        super().__init__(Framing(), vectors.shape[1], path)

    def weights_digest(self) -> str:
        return file_digest(self.source)

    def row_of(self, image_path: str) -> int:
        """The row of the longest key that ends ``image_path``; :class:`DataError` if none does."""
        parts = _parts(image_path)
        for start in range(len(parts)):
            row = self.index.get(parts[start:])
            if row is not None:
                return row
        raise DataError(image_path, f"has no precomputed embedding in {self.source}")

    def lookup(self, image_paths: Sequence[str]) -> torch.Tensor:
        """``[N, 2, D]`` embeddings (image, mirror) of ``image_paths``; missing ones raise, naming the image."""
        return self.rows[[self.row_of(p) for p in image_paths]]

    def embed_dataset_rows(self, dataset: Any, indices: Sequence[int]) -> torch.Tensor:
        return self.lookup([dataset.describe(int(i)) for i in indices])

    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        raise DataError(self.source, "precomputed embeddings cannot embed new images (e.g. degraded "
                                     "probes or an online teacher); use the teacher cache")


@TEACHERS.register("embeddings")
def build_embeddings_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"),
                             amp: str = "none") -> EmbeddingsTeacher:
    """The :class:`EmbeddingsTeacher` of ``teacher.path`` (an ``.npz``)."""
    return EmbeddingsTeacher(existing_file(teacher_cfg.path or teacher_cfg.checkpoint,
                                           "teacher.kind=embeddings: the embeddings file"))
