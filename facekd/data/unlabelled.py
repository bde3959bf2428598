"""Faces without identities: they teach through the distillation losses only (``data.unlabelled``).

Embedding-matching losses need no label, so aligned faces of unknown people add to what the
student learns from its teacher.  :class:`WithUnlabelled` appends them to a labelled training
set (label -1, after every labelled sample), and :class:`UnlabelledBatches` adds
``per_batch`` of them, drawn from ``(seed, epoch, batch)``, to each P x K batch, after the
labelled rows — so a step knows the labelled rows are the leading ones
(:attr:`facekd.losses.LossInputs.labelled_rows`).  Never point it at a test set (LFW, CFP).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np

from facekd.data.base import FaceDataset, fit_to_size
from facekd.data.folders import file_stamp, images_under
from facekd.data.image_io import read_image
from facekd.errors import DataError

#: the label of a face without identity
UNLABELLED = -1


class WithUnlabelled(FaceDataset):
    """A labelled :class:`FaceDataset` followed by the aligned images found under ``folders``.

    Samples ``0..labelled_count-1`` are the labelled set's (same labels and classes);
    the rest have label :data:`UNLABELLED`.  A bad unlabelled file is replaced by the next
    readable unlabelled one when ``skip_bad_images`` (counted like any bad image).
    """

    def __init__(self, labelled: FaceDataset, folders: Sequence[str]) -> None:
        super().__init__(labelled.input_size, labelled.transform, labelled.skip_bad_images)
        self.labelled = labelled
        self.folders = [Path(f) for f in folders]
        self.paths: List[Path] = []
        for folder in self.folders:
            if not folder.is_dir():
                raise DataError(folder, "data.unlabelled: folder does not exist")
            found = images_under(folder)
            if not found:
                raise DataError(folder, "data.unlabelled: no images in this folder")
            self.paths.extend(found)
        self.labelled_count = len(labelled)
        self.classes = list(labelled.classes)
        self.labels = np.concatenate([labelled.labels,
                                      np.full(len(self.paths), UNLABELLED, dtype=np.int64)])

    @property
    def unlabelled_count(self) -> int:
        """Number of faces without identity."""
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        if 0 <= index < self.labelled_count:
            return self.labelled.load(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return fit_to_size(self._load(index), self.input_size, self.describe(index), "none")

    def _load(self, index: int) -> np.ndarray:
        return read_image(self.paths[index - self.labelled_count])

    def describe(self, index: int) -> str:
        if index < self.labelled_count:
            return self.labelled.describe(index)
        return str(self.paths[index - self.labelled_count])

    def _fingerprint_parts(self) -> Sequence[str]:
        return [f"labelled={self.labelled.fingerprint()}", *(file_stamp(path) for path in self.paths)]

    def _substitutes(self, index: int) -> np.ndarray:
        if index < self.labelled_count:
            return super()._substitutes(index)
        return np.arange(self.labelled_count, len(self))


class UnlabelledBatches:
    """A P x K batch sampler whose batches get ``per_batch`` unlabelled indices appended.

    The extra indices (``first .. first + count - 1``) are drawn without replacement (with,
    when there are fewer than ``per_batch``) from ``(seed, epoch, batch position)``, so a
    resumed epoch draws the same ones.  Position, epoch and state are the wrapped sampler's.
    """

    def __init__(self, sampler, first: int, count: int, per_batch: int, seed: int = 0) -> None:
        if count < 1 or per_batch < 1:
            raise ValueError("UnlabelledBatches needs at least one unlabelled face and per_batch >= 1")
        self.sampler = sampler
        self.first, self.count, self.per_batch, self.seed = int(first), int(count), int(per_batch), int(seed)

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        """The wrapped sampler's epoch."""
        return self.sampler.epoch

    @property
    def position(self) -> int:
        """Batches of this epoch already yielded (the wrapped sampler's)."""
        return self.sampler.position

    def set_epoch(self, epoch: int) -> None:
        """See :meth:`facekd.data.PKBatchSampler.set_epoch`."""
        self.sampler.set_epoch(epoch)

    def state_dict(self, position=None) -> Dict[str, int]:
        """The wrapped sampler's state."""
        return self.sampler.state_dict(position)

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Restore the wrapped sampler's state."""
        self.sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.sampler:
            position = self.sampler.position       # already advanced past ``batch``
            rng = np.random.default_rng([self.seed, self.sampler.epoch, position, 0x0B])
            extra = rng.choice(self.count, self.per_batch, replace=self.count < self.per_batch)
            yield list(batch) + [self.first + int(i) for i in extra]
