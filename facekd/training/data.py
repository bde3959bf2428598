"""The training views of a :class:`~facekd.data.FaceDataset`.

:class:`TrainView` turns sample ``i`` into ``dict(image, label, index, flipped)`` (plus
``teacher_image`` when the teacher runs online):

1. the dataset's uint8 112x112 face (its ``transform`` is set to :func:`keep_uint8`, so a
   bad file is still replaced by another image of the same identity);
2. a horizontal flip with probability 1/2 and, for a student, a low-resolution
   :class:`~facekd.data.Degradation` of its view (the teacher always sees the clean face).

Images stay uint8 ``H x W x 3`` tensors until the training step: :func:`batch_to_input`
normalises a whole batch on the training device (``(x/255 - 0.5)/0.5``, the
:mod:`facekd.preprocess` convention) and, when the model's input size is not 112, resizes it
with :func:`~facekd.preprocess.resize_batch` — the same resize
:class:`~facekd.preprocess.InputResize` applies at verification.

Every random choice comes from ``numpy.random.default_rng([seed, epoch, index])``, so a
sample is the same whichever worker loads it and whether or not the run was resumed.

The trainer's loader is built once and keeps its workers (and their copies of the view)
alive across epochs: :class:`EpochBatches` hands out ``(epoch, index)`` pairs, which
:meth:`TrainView.__getitem__` accepts besides a plain index, so no worker needs to be told
that a new epoch began.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from facekd import preprocess
from facekd.preprocess import RESIZE_METHOD, resize_batch  # noqa: F401  (RESIZE_METHOD: cache keys)


def keep_uint8(image: np.ndarray) -> np.ndarray:
    """Identity transform: keep the dataset's uint8 image (the view normalises it later)."""
    return image


def batch_to_input(images: torch.Tensor, size: int, device: Optional[torch.device] = None,
                   channels_last: bool = False) -> torch.Tensor:
    """uint8 ``N x H x W x 3`` RGB -> normalised float ``N x 3 x size x size`` on ``device``.

    Same values as :func:`facekd.preprocess.normalize_uint8`, computed for the whole batch.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a uint8 N x H x W x 3 batch, got {images.dtype} {tuple(images.shape)}")
    images = images.to(device, non_blocking=True) if device is not None else images
    batch = (images.permute(0, 3, 1, 2).float() / 255.0 - preprocess.MEAN) / preprocess.STD
    batch = resize_batch(batch, size)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch.contiguous()


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of every random choice made for sample ``index`` in ``epoch``."""
    return np.random.default_rng([int(seed), int(epoch), int(index), 0x7A1])


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    """The generator of cached view ``view`` of sample ``index`` (independent of the epoch)."""
    return np.random.default_rng([int(seed), int(index), int(view), 0x71E])


class EpochBatches:
    """A batch sampler over ``sampler`` (a :class:`~facekd.data.PKBatchSampler`) whose indices
    carry the epoch: ``[(epoch, i), ...]``, at most ``limit`` batches per epoch.

    Iterating continues from the sampler's position (a resumed epoch yields only the
    remaining batches); the sampler's own state stays the source of truth.
    """

    def __init__(self, sampler: Any, limit: Optional[int] = None) -> None:
        self.sampler = sampler
        self.limit = len(sampler) if limit is None else min(int(limit), len(sampler))

    def __len__(self) -> int:
        return max(0, self.limit - self.sampler.position)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        epoch = self.sampler.epoch
        if self.sampler.position >= self.limit:
            return
        for batch in self.sampler:
            yield [(epoch, int(i)) for i in batch]
            if self.sampler.position >= self.limit:
                return


class TrainView(torch.utils.data.Dataset):
    """A dataset seen by a model during training.

    Args:
        dataset: a :class:`~facekd.data.FaceDataset` (its ``transform`` becomes :func:`keep_uint8`).
        seed: base of the per-sample generators.
        flip: horizontally flip half of the samples (``flipped`` says which).
        degrade: ``degrade(img, rng) -> img`` applied to the model's view (e.g. a
            :class:`~facekd.data.Degradation`), or None.
        clean_prob: share of samples left undegraded.
        teacher_images: also return the teacher's view as ``teacher_image``: the same flipped,
            augmented face as the student's, before degradation (for a teacher run online).
        augment: a :class:`facekd.data.augment.ViewAugment` applied to the flipped face
            before degradation (None: no augmentation).
        views: 0 draws a fresh augmented view every epoch; ``K > 0`` picks one of ``K`` fixed
            views per sample each epoch (:meth:`cached_view`; ``view`` says which).

    Items: ``image`` (uint8 ``112 x 112 x 3`` tensor, see :func:`batch_to_input`), ``label``
    (-1 for an unlabelled face), ``index`` (of the sample actually loaded), ``flipped`` (bool),
    ``view`` (the cached view's number, -1 without ``views``) [, ``teacher_image``].
    """

    def __init__(self, dataset: Any, seed: int = 0, flip: bool = True,
                 degrade: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None,
                 clean_prob: float = 0.0, teacher_images: bool = False, augment: Optional[Any] = None,
                 views: int = 0) -> None:
        self.dataset = dataset
        dataset.transform = keep_uint8
        self.seed = int(seed)
        self.flip = bool(flip)
        self.degrade = degrade
        self.clean_prob = float(clean_prob)
        self.teacher_images = bool(teacher_images)
        self.augment = augment
        self.views = int(views)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices :meth:`__getitem__` makes."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _face(self, index: int, rng: np.random.Generator, augment: Optional[Any]) -> Tuple[np.ndarray, bool, Dict]:
        """``(view, flipped, item)``: sample ``index`` flipped (1/2) and augmented, all drawn from ``rng``."""
        item = self.dataset[index]
        flipped = self.flip and bool(rng.random() < 0.5)
        face = np.ascontiguousarray(item["image"][:, ::-1]) if flipped else item["image"]
        if augment:
            partner = None
            if augment.needs_partner:
                alone = augment.without_partner()
                partner = lambda: self._face(int(rng.integers(len(self.dataset))), rng, alone)[0]  # noqa: E731
            face = np.ascontiguousarray(augment(face, rng, partner))
        return face, flipped, item

    def cached_view(self, index: int, view: int) -> Tuple[np.ndarray, bool, Dict]:
        """View ``view`` (``0..views-1``) of sample ``index``: the same pixels every time it is made
        (its generator is seeded by ``(seed, index, view)`` only), so a teacher embeds it once
        (:mod:`facekd.training.teaching`'s view cache)."""
        return self._face(int(index), view_rng(self.seed, index, view), self.augment)

    def __getitem__(self, index: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        """Sample ``index`` of the current epoch, or ``(epoch, index)`` of that epoch."""
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = index
        index = int(index)
        rng = sample_rng(self.seed, epoch, index)
        view = -1
        if self.views:
            view = int(rng.integers(self.views))
            clean, flipped, item = self.cached_view(index, view)
        else:
            clean, flipped, item = self._face(index, rng, self.augment)
        student = clean
        if self.degrade is not None and not rng.random() < self.clean_prob:
            student = self.degrade(clean, rng)
        out = {"image": torch.from_numpy(np.ascontiguousarray(student)), "label": item["label"],
               "index": item["index"], "flipped": flipped, "view": view}
        if self.teacher_images:
            out["teacher_image"] = torch.from_numpy(np.ascontiguousarray(clean))
        return out


class CleanImages(torch.utils.data.Dataset):
    """Sample ``i`` of ``dataset`` unflipped and undegraded, with its mirror: a uint8 ``2 x H x W x 3``
    tensor (what the clean-view teacher cache embeds: column 0 the face, 1 its mirror)."""

    columns = 2

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        dataset.transform = keep_uint8

    def describe(self) -> str:
        """Text for the cache key ('' keeps the keys of caches built before views existed)."""
        return ""

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        face = np.ascontiguousarray(self.dataset[int(index)]["image"])
        return torch.from_numpy(np.stack([face, np.ascontiguousarray(face[:, ::-1])]))


class ViewImages(torch.utils.data.Dataset):
    """The ``K`` fixed views of sample ``i`` of a :class:`TrainView` (:meth:`TrainView.cached_view`):
    a uint8 ``K x H x W x 3`` tensor (what the view cache embeds: column ``v`` is view ``v``)."""

    def __init__(self, view: TrainView) -> None:
        if view.views < 1:
            raise ValueError("ViewImages needs a TrainView with views >= 1")
        self.view = view
        self.columns = view.views

    def describe(self) -> str:
        """Text for the cache key: the seed, the number of views and the augmentations."""
        augment = self.view.augment.fingerprint() if self.view.augment else "[]"
        return f"views={self.columns}|seed={self.view.seed}|flip={self.view.flip}|augment={augment}"

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.view.cached_view(int(index), v)[0] for v in range(self.columns)]))
