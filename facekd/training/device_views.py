"""``data.on_device``: every training face as one uint8 tensor where the model trains, views made there.

A GPU step of a 56 px MobileFaceNet takes well under a millisecond per face; loader workers
that decode JPEGs and warp each face with OpenCV cannot keep up (measured: ~3,200 faces/s on
an H200 with two workers).  :class:`DeviceViews` decodes the training set once into a
``N x 112 x 112 x 3`` uint8 tensor on the training device (69.7 k faces: 2.6 GB) and makes
each batch's views there: the flip and every ``augment:`` entry through their batched forms
(:meth:`facekd.data.augment.Augmentation.apply_batch`), mixup partners drawn from the whole
set.  The batch is the dict a :class:`~facekd.training.data.TrainView` loader gives
(``image``, ``label``, ``index``, ``flipped``, ``view`` and, for an online teacher,
``teacher_image``), on the device, so the task, the targets (cache, store or online teacher)
and the losses are the same code.

Every random choice of a batch comes from one generator seeded by ``(seed, epoch, the
batch's indices)``: a resumed run makes the same views.  Not available with a
low-resolution degradation or a view cache (their views are made per face on the host).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Sequence, Tuple

import numpy as np
import torch

from facekd.config import on_device_conflict
from facekd.errors import ConfigError
from facekd.training.data import EpochBatches, TrainView


def decode_all(dataset: Any, workers: int = 0,
               batch_size: int = 256) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(faces uint8 N x H x W x 3, labels int64 N, indices int64 N)`` of every sample of ``dataset``
    (a :class:`~facekd.data.FaceDataset` with the ``keep_uint8`` transform), in host memory."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    faces, labels, indices = None, [], []
    start = 0
    for batch in loader:
        images = torch.as_tensor(batch["image"])
        if faces is None:
            faces = torch.empty((len(dataset), *images.shape[1:]), dtype=torch.uint8)
        faces[start:start + len(images)] = images
        start += len(images)
        labels.append(torch.as_tensor(batch["label"]))
        indices.append(torch.as_tensor(batch["index"]))
    if faces is None:
        raise ConfigError("data.on_device: the training set is empty")
    return faces, torch.cat(labels).long(), torch.cat(indices).long()


class DeviceViews:
    """The training faces on ``device`` and the views of a batch of ``(epoch, index)`` pairs.

    Args:
        view: the task's :class:`~facekd.training.data.TrainView` (its dataset, seed, flip,
            augmentations and whether the teacher needs its image); no degradation, no views.
        device: where the faces live and the views are made.
        workers: decoding processes for the one pass over the files.
    """

    def __init__(self, view: TrainView, device: Any, workers: int = 0) -> None:
        problem = on_device_conflict(view.degrade is not None, bool(view.views))
        if problem:
            raise ConfigError(problem)
        self.device = torch.device(device)
        self.seed, self.flip, self.augment = view.seed, view.flip, view.augment
        self.teacher_images = view.teacher_images
        self.partner_augment = view.augment.without_partner() if view.augment else view.augment
        faces, self.labels, self.indices = decode_all(view.dataset, workers)
        self.faces = faces.to(self.device)

    def __len__(self) -> int:
        return len(self.faces)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: each batch carries its epoch."""

    def _views(self, rows: torch.Tensor, rng: np.random.Generator, augment: Any,
               partner_rows: Any = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(float B x 3 x H x W views, flipped B)`` of the faces at ``rows``."""
        count = len(rows)
        flipped = torch.from_numpy(rng.random(count) < 0.5) if self.flip else torch.zeros(count, dtype=torch.bool)
        params = augment.draw_batch(rng, count) if augment else []
        images = self.faces[rows.to(self.device)].permute(0, 3, 1, 2).float()
        images = torch.where(flipped.to(self.device)[:, None, None, None], images.flip(3), images)
        partners = None
        if partner_rows is not None:
            partners, _ = self._views(partner_rows, rng, self.partner_augment)
        if augment:
            images = augment.apply_batch(images, params, partners)
        return images, flipped

    def batch(self, pairs: Sequence[Tuple[int, int]]) -> Dict[str, Any]:
        """The views of ``[(epoch, index), ...]``: a training batch on the device."""
        epoch = int(pairs[0][0])
        rows = torch.tensor([int(i) for _, i in pairs], dtype=torch.long)
        rng = np.random.default_rng([self.seed, epoch, 0xDE5, *rows.tolist()])
        partner_rows = None
        if self.augment and self.augment.needs_partner:
            partner_rows = torch.from_numpy(rng.integers(len(self.faces), size=len(rows)))
        images, flipped = self._views(rows, rng, self.augment, partner_rows)
        faces = images.round().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        out = {"image": faces, "label": self.labels[rows], "index": self.indices[rows], "flipped": flipped,
               "view": torch.full((len(rows),), -1, dtype=torch.long)}
        if self.teacher_images:
            out["teacher_image"] = faces
        return out


class DeviceLoader:
    """What the trainer iterates in place of its ``DataLoader``: :class:`DeviceViews` batches of an
    :class:`~facekd.training.data.EpochBatches` sampler (``batch_sampler``, as a loader has)."""

    def __init__(self, views: DeviceViews, batch_sampler: EpochBatches) -> None:
        self.views = views
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for pairs in self.batch_sampler:
            yield self.views.batch(pairs)

