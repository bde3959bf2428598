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
        teacher_images: also return the clean (equally flipped) face as ``teacher_image``
            (for a teacher run online, without the embedding cache).

    Items: ``image`` (uint8 ``112 x 112 x 3`` tensor, see :func:`batch_to_input`), ``label``,
    ``index`` (of the sample actually loaded), ``flipped`` (bool) [, ``teacher_image``].
    """

    def __init__(self, dataset: Any, seed: int = 0, flip: bool = True,
                 degrade: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None,
                 clean_prob: float = 0.0, teacher_images: bool = False) -> None:
        self.dataset = dataset
        dataset.transform = keep_uint8
        self.seed = int(seed)
        self.flip = bool(flip)
        self.degrade = degrade
        self.clean_prob = float(clean_prob)
        self.teacher_images = bool(teacher_images)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices :meth:`__getitem__` makes."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Union[int, Tuple[int, int]]) -> Dict[str, Any]:
        """Sample ``index`` of the current epoch, or ``(epoch, index)`` of that epoch."""
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = index
        index = int(index)
        item = self.dataset[index]
        rng = sample_rng(self.seed, epoch, index)
        flipped = self.flip and bool(rng.random() < 0.5)
        clean = np.ascontiguousarray(item["image"][:, ::-1]) if flipped else item["image"]
        view = clean
        if self.degrade is not None and not rng.random() < self.clean_prob:
            view = self.degrade(clean, rng)
        out = {"image": torch.from_numpy(np.ascontiguousarray(view)), "label": item["label"],
               "index": item["index"], "flipped": flipped}
        if self.teacher_images:
            out["teacher_image"] = torch.from_numpy(np.ascontiguousarray(clean))
        return out


class CleanImages(torch.utils.data.Dataset):
    """Sample ``i`` of ``dataset`` unflipped and undegraded, as a uint8 tensor (for the teacher cache)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        dataset.transform = keep_uint8

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.dataset[int(index)]["image"]))
