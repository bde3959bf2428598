"""The frozen teacher's embeddings of every training sample, computed once and reused.

A distillation step needs the teacher's embedding of the clean face (or of its mirror,
when the student's view was flipped).  The teacher is frozen, so these are computed once
per dataset — ``embeddings[i, 0]`` of sample ``i`` and ``embeddings[i, 1]`` of its mirror
— and kept in memory and on disk; a distillation step then costs about what a plain
student step costs.

The cache file is named by a key (:func:`cache_key`): the SHA-256 of the teacher's state
dict bytes, ``dataset.fingerprint()``, the preprocessing convention (mean/std/channel
order, resize method, teacher input size), the autocast dtype and :data:`CACHE_FORMAT`.
Changing any of them gives another key, and the cache is rebuilt.

What is cached and what is not:

* embeddings (clean + mirror): always, when ``teacher.cache`` is on;
* margin-free teacher logits (Hinton KD): *not stored* — they are a fixed function of the
  cached embedding, ``s * cos(normalise(e_t), normalise(W_t))`` with the teacher head's
  class centres ``W_t``, recomputed per batch by one matrix product (no teacher forward).
  Storing them would take ``N x 2 x C`` floats (hundreds of GB for MS1M);
* teacher feature maps (feature-map distillation): not cached; the task runs the teacher
  online instead (see :class:`facekd.training.tasks.StudentTask`).

:data:`STATS` counts hits (loaded from disk) and misses (built, i.e. teacher forwards),
so tests can check that a hit never calls the teacher.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from facekd import preprocess
from facekd.training.checkpoint import atomic_save
from facekd.training.data import RESIZE_METHOD, CleanImages, batch_to_input
from facekd.training.distributed import DistInfo, all_gather_rows, barrier, broadcast_object

LOG = logging.getLogger(__name__)

#: bumped when the cache layout or the way embeddings are computed changes
CACHE_FORMAT = 1
DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class CacheStats:
    """How often caches were loaded (``hits``) or computed with the teacher (``misses``)."""
    hits: int = 0
    misses: int = 0

    def reset(self) -> None:
        """Zero both counters."""
        self.hits = self.misses = 0


#: process-wide counters
STATS = CacheStats()


def state_dict_digest(module_or_state: Union[nn.Module, Dict[str, torch.Tensor]]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes (hex)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(teacher: nn.Module, dataset: Any, input_size: int, amp: str = "none") -> str:
    """The key of ``teacher``'s embeddings of ``dataset`` at ``input_size`` (hex SHA-256)."""
    parts = [f"format={CACHE_FORMAT}", f"teacher={state_dict_digest(teacher)}",
             f"data={dataset.fingerprint()}", f"input={int(input_size)}", f"resize={RESIZE_METHOD}",
             f"norm={preprocess.CHANNEL_ORDER}/{preprocess.MEAN}/{preprocess.STD}", f"amp={amp}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class TeacherCache:
    """Teacher embeddings ``[N, 2, D]`` (sample, mirror) of one dataset.

    Build or load one with :meth:`load_or_build`; look embeddings up with :meth:`lookup`.
    """

    def __init__(self, embeddings: torch.Tensor, key: str, path: Optional[Path] = None,
                 from_disk: bool = False) -> None:
        self.embeddings = embeddings
        self.key = key
        self.path = path
        self.from_disk = from_disk

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def embedding_size(self) -> int:
        """D, the teacher's embedding size."""
        return self.embeddings.shape[-1]

    def lookup(self, indices: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings of samples ``indices`` (mirror where ``flipped``), ``[B, D]``."""
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        flipped = torch.as_tensor(flipped).cpu().long()
        return self.embeddings[indices, flipped].float()

    @staticmethod
    def file_for(cache_dir: Union[str, os.PathLike], key: str) -> Path:
        """Where the cache with ``key`` lives in ``cache_dir``."""
        return Path(cache_dir) / f"teacher_{key[:32]}.pt"

    @classmethod
    def load_or_build(cls, teacher: nn.Module, dataset: Any, input_size: int,
                      cache_dir: Union[str, os.PathLike], dist: Optional[DistInfo] = None,
                      batch_size: int = 128, amp: str = "none", dtype: str = "float32",
                      num_workers: int = 0, progress: bool = False) -> "TeacherCache":
        """Load the cache of (``teacher``, ``dataset``, ``input_size``) or compute and save it.

        In a distributed run every rank embeds its share of the samples, the shares are
        gathered, and rank 0 writes the file.
        """
        dist = dist or DistInfo()
        key = cache_key(teacher, dataset, input_size, amp)
        path = cls.file_for(cache_dir, key)
        cached = broadcast_object(_readable_cache(path, key, len(dataset)), dist)
        if cached:
            STATS.hits += 1
            payload = torch.load(path, map_location="cpu", weights_only=True)
            LOG.info("teacher cache hit: %s (%d samples)", path, len(dataset))
            return cls(payload["embeddings"], key, path, from_disk=True)
        STATS.misses += 1
        LOG.info("teacher cache miss: embedding %d samples with the teacher -> %s", len(dataset), path)
        embeddings = compute_embeddings(teacher, dataset, input_size, dist, batch_size, amp,
                                        num_workers, progress).to(DTYPES[dtype])
        if dist.is_main:
            atomic_save({"format": CACHE_FORMAT, "key": key, "embeddings": embeddings,
                         "num_samples": len(dataset), "input_size": int(input_size)}, path)
        barrier(dist)
        return cls(embeddings, key, path, from_disk=False)


def _readable_cache(path: Path, key: str, num_samples: int) -> bool:
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # a truncated or foreign file: rebuild it
        LOG.warning("%s: unreadable teacher cache (%s); rebuilding", path, error)
        return False
    ok = (payload.get("format") == CACHE_FORMAT and payload.get("key") == key
          and tuple(payload["embeddings"].shape[:2]) == (num_samples, 2))
    if not ok:
        LOG.warning("%s: teacher cache does not match (key/size); rebuilding", path)
    return ok


@torch.inference_mode()
def compute_embeddings(teacher: nn.Module, dataset: Any, input_size: int, dist: Optional[DistInfo] = None,
                       batch_size: int = 128, amp: str = "none", num_workers: int = 0,
                       progress: bool = False) -> torch.Tensor:
    """``[N, 2, D]`` float32 teacher embeddings of every sample and its mirror (this rank's share
    computed here, the rest gathered from the other ranks)."""
    from tqdm import tqdm

    from facekd.training.trainer import autocast_context

    dist = dist or DistInfo()
    device = dist.device
    shares = np.array_split(np.arange(len(dataset)), dist.world_size)
    mine = shares[dist.rank]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(CleanImages(dataset), mine.tolist()),
        batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = teacher.training
    teacher.eval()
    rows = []
    for images in tqdm(loader, desc="teacher cache", disable=not (progress and dist.is_main), leave=False):
        images = batch_to_input(images, input_size, device)
        both = torch.cat([images, torch.flip(images, dims=[3])])
        with autocast_context(device, amp):
            out = teacher(both).float()
        rows.append(torch.stack([out[:len(images)], out[len(images):]], dim=1).cpu())
    teacher.train(was_training)
    local = torch.cat(rows) if rows else torch.zeros((0, 2, 1))
    return torch.cat(all_gather_rows(local, dist))
