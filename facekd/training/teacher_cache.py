"""The frozen teacher's embeddings of every training sample, computed once and reused.

A distillation step needs the teacher's embedding of the clean face (or of its mirror,
when the student's view was flipped).  The teacher is frozen, so these are computed once
per dataset — ``embeddings[i, 0]`` of sample ``i`` and ``embeddings[i, 1]`` of its mirror
— and kept in memory and on disk; a distillation step then costs about what a plain
student step costs.  Any :class:`facekd.teachers.Teacher` can fill it (a torch checkpoint,
an ONNX embedder, dlib, precomputed vectors).

The cache file is named by a key (:func:`cache_key`): the SHA-256 of
``teacher.fingerprint()`` (its weights or model file, its framing — input size, template,
channel order, normalisation, resize/warp method — and precision), ``dataset.fingerprint()``
and :data:`CACHE_FORMAT`.  Changing any of them gives another key, and the cache is rebuilt.

An interrupted build never leaves a file that is read as a cache: the final file is written
atomically once complete.  A single-process build also writes its progress atomically to
``teacher_<key>.partial.pt`` every ``partial_every_s`` seconds and resumes from it (same key
only), so a killed dlib build loses at most that much work; the partial file is removed when
the cache is complete.

With ``store=True`` (``teacher.store``) the cache is a
:class:`~facekd.training.target_store.TargetStore` instead: one memory-mapped file
``teacher_<key>.<dtype>.store`` (same key) that holds the rows on disk, not in memory.  Every
rank embeds its share of the missing rows and writes them into the file, batch by batch;
nothing is gathered, and a killed build resumes with the rows still missing.  A store that
does not match (truncated, another key or layout) is refused with a ``DataError`` naming it.

What is cached and what is not:

* embeddings (clean + mirror): always, when ``teacher.cache`` is on;
* margin-free teacher logits (Hinton KD): *not stored* — they are a fixed function of the
  cached embedding, ``s * cos(normalise(e_t), normalise(W_t))`` with the teacher head's
  class centres ``W_t`` (or the identities' mean teacher embeddings,
  :class:`facekd.teachers.base.ClassCentreHead`), recomputed per batch by one matrix product (no teacher forward).
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from facekd.errors import DataError
from facekd.teachers import Teacher, state_dict_digest  # noqa: F401  (state_dict_digest: re-exported)
from facekd.training.checkpoint import atomic_save
from facekd.training.data import CleanImages
from facekd.training.distributed import DistInfo, all_gather_rows, barrier, broadcast_object
from facekd.training.target_store import TargetStore

LOG = logging.getLogger(__name__)

#: bumped when the cache layout or the way embeddings are computed changes
CACHE_FORMAT = 2
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


def cache_key(teacher: Teacher, dataset: Any, images: Any = None) -> str:
    """The key of ``teacher``'s embeddings of ``dataset`` (hex SHA-256); ``images`` (a
    :class:`~facekd.training.data.ViewImages`) adds the views' description."""
    parts = [f"format={CACHE_FORMAT}", f"teacher={teacher.fingerprint()}", f"data={dataset.fingerprint()}"]
    described = images.describe() if images is not None else ""
    if described:
        parts.append(f"images={described}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class TeacherCache:
    """Teacher embeddings ``[N, V, D]`` of one dataset: ``V = 2`` (sample, mirror) for the clean
    cache, ``V = K`` for a view cache (:class:`~facekd.training.data.ViewImages`).

    Build or load one with :meth:`load_or_build`; look embeddings up with :meth:`lookup`.
    """

    def __init__(self, embeddings: torch.Tensor, key: str, path: Optional[Path] = None,
                 from_disk: bool = False, store: Optional[TargetStore] = None) -> None:
        self.embeddings = embeddings
        self.key = key
        self.path = path
        self.from_disk = from_disk
        #: the mapped file ``embeddings`` lives in (``store=True``), else None
        self.store = store

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def embedding_size(self) -> int:
        """D, the teacher's embedding size."""
        return self.embeddings.shape[-1]

    def lookup(self, indices: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings ``[B, D]`` of samples ``indices``, column ``columns`` of each (the
        clean cache: ``flipped``, 1 for the mirror; a view cache: the view's number)."""
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        columns = torch.as_tensor(columns).cpu().long()
        return self.embeddings[indices, columns].float()

    @staticmethod
    def file_for(cache_dir: Union[str, os.PathLike], key: str) -> Path:
        """Where the cache with ``key`` lives in ``cache_dir``."""
        return Path(cache_dir) / f"teacher_{key[:32]}.pt"

    @staticmethod
    def partial_file_for(cache_dir: Union[str, os.PathLike], key: str) -> Path:
        """Where an unfinished build of the cache with ``key`` keeps its progress."""
        return Path(cache_dir) / f"teacher_{key[:32]}.partial.pt"

    @staticmethod
    def store_file_for(cache_dir: Union[str, os.PathLike], key: str, dtype: str = "float16") -> Path:
        """Where the store-backed cache with ``key`` and row ``dtype`` lives in ``cache_dir``."""
        return Path(cache_dir) / f"teacher_{key[:32]}.{dtype}.store"

    @classmethod
    def load_or_build(cls, teacher: Teacher, dataset: Any, cache_dir: Union[str, os.PathLike],
                      dist: Optional[DistInfo] = None, batch_size: int = 128, dtype: str = "float32",
                      num_workers: int = 0, progress: bool = False,
                      partial_every_s: float = 60.0, images: Any = None, store: bool = False) -> "TeacherCache":
        """Load the cache of (``teacher``, ``dataset``) or compute and save it.

        ``images`` are what is embedded per sample: default the clean face and its mirror
        (:class:`~facekd.training.data.CleanImages`); a :class:`~facekd.training.data.ViewImages`
        makes a view cache (its key includes the views' description).

        In a distributed run every rank embeds its share of the samples, the shares are
        gathered, and rank 0 writes the file.  A single-process build saves its progress
        every ``partial_every_s`` seconds and resumes from it when restarted.  With ``store``
        the cache is a memory-mapped :class:`~facekd.training.target_store.TargetStore`
        (:meth:`load_or_build_store`; its progress is synced every ``partial_every_s`` too).
        """
        dist = dist or DistInfo()
        images = images if images is not None else CleanImages(dataset)
        key = cache_key(teacher, dataset, images)
        if store:
            return cls.load_or_build_store(teacher, images, key, cache_dir, dist, dtype, batch_size=batch_size,
                                           num_workers=num_workers, progress=progress, sync_every_s=partial_every_s)
        path = cls.file_for(cache_dir, key)
        cached = broadcast_object(_readable_cache(path, key, len(dataset), images.columns), dist)
        if cached:
            STATS.hits += 1
            payload = torch.load(path, map_location="cpu", weights_only=True)
            LOG.info("teacher cache hit: %s (%d samples)", path, len(dataset))
            return cls(payload["embeddings"], key, path, from_disk=True)
        STATS.misses += 1
        LOG.info("teacher cache miss: embedding %d samples with %r -> %s", len(dataset), teacher, path)
        partial = PartialBuild(cls.partial_file_for(cache_dir, key), key, partial_every_s) \
            if dist.world_size == 1 else None
        embeddings = compute_embeddings(teacher, images, dist, batch_size, num_workers, progress,
                                        partial).to(DTYPES[dtype])
        if dist.is_main:
            atomic_save({"format": CACHE_FORMAT, "key": key, "embeddings": embeddings,
                         "num_samples": len(dataset), "teacher": teacher.fingerprint()}, path)
            if partial is not None:
                partial.remove()
        barrier(dist)
        return cls(embeddings, key, path, from_disk=False)

    @classmethod
    def load_or_build_store(cls, teacher: Teacher, images: Any, key: str, cache_dir: Union[str, os.PathLike],
                            dist: DistInfo, dtype: str = "float16", **embedding: Any) -> "TeacherCache":
        """The cache as a :class:`~facekd.training.target_store.TargetStore` of ``dtype`` rows: opened
        when complete, else created (rank 0) and filled by every rank with its share of the
        missing rows (:func:`fill_store`; ``embedding``: its batch size, workers, progress, sync interval).
        ``embeddings`` is then a tensor on the mapped file.

        Raises:
            DataError: the store is not one of this key and shape, or truncated (on every rank
                alike, naming the file and the rank that found it).
        """
        path = cls.store_file_for(cache_dir, key, dtype)
        shape = (len(images), images.columns, teacher.embedding_size)

        def create_if_absent() -> None:
            if dist.is_main and not path.exists():
                TargetStore.create(path, key, shape, dtype)

        _on_every_rank(create_if_absent, dist)
        found = _on_every_rank(lambda: TargetStore.open(path, key, shape, dtype), dist)
        if found.complete:
            STATS.hits += 1
            LOG.info("teacher cache hit: %s (%d samples x %d)", path, shape[0], shape[1])
            return cls(found.tensor(), key, path, from_disk=True, store=found)
        STATS.misses += 1
        LOG.info("teacher cache miss: embedding %d of %d samples with %r -> %s", len(found.missing()), shape[0],
                 teacher, path)
        writable = _on_every_rank(lambda: TargetStore.open(path, key, shape, dtype, writable=True), dist)
        fill_store(teacher, images, writable, dist, **embedding)
        barrier(dist)
        built = TargetStore.open(path, key, shape, dtype)
        if not built.complete:
            raise DataError(path, f"{len(built.missing())} rows are still missing after every rank wrote its share "
                                  "(do all ranks see this file on one filesystem?)")
        return cls(built.tensor(), key, path, from_disk=False, store=built)


def _on_every_rank(action: Callable[[], Any], dist: DistInfo) -> Any:
    """``action()``; when it raises ``DataError``/``OSError`` on any rank, every rank raises it
    (so no rank waits in a collective for one that failed, e.g. without the shared file)."""
    try:
        result, problem = action(), None
    except (DataError, OSError) as error:
        if not dist.distributed:
            raise
        result, problem = None, f"{error} (rank {dist.rank})"
    if dist.distributed:
        import torch.distributed as torch_dist

        problems: List[Optional[str]] = [None] * dist.world_size
        torch_dist.all_gather_object(problems, problem)
        first = next((p for p in problems if p), None)
        if first:
            raise DataError(first)
    return result


def _readable_cache(path: Path, key: str, num_samples: int, columns: int = 2) -> bool:
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # a truncated or foreign file: rebuild it
        LOG.warning("%s: unreadable teacher cache (%s); rebuilding", path, error)
        return False
    ok = (isinstance(payload, dict) and payload.get("format") == CACHE_FORMAT and payload.get("key") == key
          and tuple(payload["embeddings"].shape[:2]) == (num_samples, columns))
    if not ok:
        LOG.warning("%s: teacher cache does not match (key/size); rebuilding", path)
    return ok


class PartialBuild:
    """The progress of an unfinished single-process cache build: rows ``[done, V, D]`` so far.

    :meth:`load` returns the rows a previous run of the same ``key`` saved (none if the file
    is missing, unreadable or of another key); :meth:`update` saves them atomically when
    ``every_s`` seconds have passed since the last save.
    """

    def __init__(self, path: Path, key: str, every_s: float = 60.0) -> None:
        self.path, self.key, self.every_s = Path(path), key, float(every_s)
        self.last_save = time.monotonic()

    def load(self) -> Optional[torch.Tensor]:
        """Rows saved by an interrupted build of this key, or None."""
        if not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            if payload.get("key") == self.key and payload.get("format") == CACHE_FORMAT:
                LOG.info("%s: resuming the teacher cache after %d samples", self.path, len(payload["rows"]))
                return payload["rows"]
        except Exception as error:   # truncated: start over
            LOG.warning("%s: unreadable partial teacher cache (%s); starting over", self.path, error)
        return None

    def update(self, rows: List[torch.Tensor]) -> None:
        """Save the concatenated ``rows`` if the interval has passed."""
        if time.monotonic() - self.last_save >= self.every_s:
            atomic_save({"format": CACHE_FORMAT, "key": self.key, "rows": torch.cat(rows)}, self.path)
            self.last_save = time.monotonic()

    def remove(self) -> None:
        """Delete the progress file (the cache is complete)."""
        self.path.unlink(missing_ok=True)


@torch.inference_mode()
def compute_embeddings(teacher: Teacher, images: Any, dist: Optional[DistInfo] = None, batch_size: int = 128,
                       num_workers: int = 0, progress: bool = False,
                       partial: Optional[PartialBuild] = None) -> torch.Tensor:
    """``[N, V, D]`` float32 teacher embeddings of the ``V`` images of every sample of ``images``
    (a :class:`~facekd.training.data.CleanImages` / ``ViewImages``).  This rank's share is computed here, the rest gathered from the
    other ranks; ``partial`` resumes and records progress."""
    from tqdm import tqdm

    dist = dist or DistInfo()
    dataset = getattr(images, "dataset", None)
    shares = np.array_split(np.arange(len(images)), dist.world_size)
    mine = shares[dist.rank]
    local = teacher.embed_dataset_rows(dataset, mine) if isinstance(images, CleanImages) else None
    if local is None:
        done = partial.load() if partial is not None else None
        rows = [done] if done is not None and len(done) <= len(mine) else []
        start = len(rows[0]) if rows else 0
        with tqdm(total=len(mine), initial=start, desc="teacher cache", unit="img", leave=False,
                  disable=not (progress and dist.is_main)) as bar:
            for _, embedded in embedded_batches(teacher, images, mine[start:], batch_size, num_workers):
                rows.append(embedded)
                bar.update(len(embedded))
                if partial is not None:
                    partial.update(rows)
        local = torch.cat(rows) if rows else torch.zeros((0, images.columns, teacher.embedding_size))
    return torch.cat(all_gather_rows(local.float(), dist))


@torch.inference_mode()
def fill_store(teacher: Teacher, images: Any, store: TargetStore, dist: Optional[DistInfo] = None,
               batch_size: int = 128, num_workers: int = 0, progress: bool = False,
               sync_every_s: float = 60.0) -> int:
    """Embed this rank's share of the rows ``store`` is missing and write them into it batch by
    batch, synced every ``sync_every_s`` seconds and when the build stops (a killed build keeps
    what it synced); returns the number of rows embedded here."""
    from tqdm import tqdm

    dist = dist or DistInfo()
    missing = store.missing()
    barrier(dist)                       # every rank has read the same map before any rank writes
    if 0 < len(missing) < len(store):
        LOG.info("%s: resuming the teacher-target store: %d of %d rows missing", store.path, len(missing), len(store))
    mine = np.array_split(missing, dist.world_size)[dist.rank]
    if not len(mine):
        return 0
    looked_up = teacher.embed_dataset_rows(images.dataset, mine) if isinstance(images, CleanImages) else None
    started = synced = time.monotonic()
    try:
        if looked_up is not None:
            store.write(mine, looked_up.float())
            return len(mine)
        done = 0
        with tqdm(total=len(mine), desc="teacher cache", unit="img", leave=False,
                  disable=not (progress and dist.is_main)) as bar:
            for rows, embedded in embedded_batches(teacher, images, mine, batch_size, num_workers):
                store.write(rows, embedded)
                bar.update(len(rows))
                done += len(rows)
                if time.monotonic() - synced >= sync_every_s:
                    store.sync()
                    synced = time.monotonic()
                    if dist.is_main and not progress:      # a log line per sync where no bar is drawn
                        LOG.info("%s: %d of this rank's %d rows embedded (%.1f samples/s)", store.path.name, done,
                                 len(mine), done / (synced - started))
    finally:
        store.sync()
    return len(mine)


def embedded_batches(teacher: Teacher, images: Any, indices: np.ndarray, batch_size: int = 128,
                     num_workers: int = 0) -> Iterator[Tuple[np.ndarray, torch.Tensor]]:
    """``(rows, [B, V, D] float32 embeddings)`` of samples ``indices`` of ``images``, batch by batch."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(images, indices.tolist()),
                                         batch_size=batch_size, shuffle=False, num_workers=num_workers)
    start = 0
    for stacks in loader:
        flat = teacher.embed(stacks.reshape(-1, *stacks.shape[2:])).float()
        yield indices[start:start + len(stacks)], flat.reshape(len(stacks), images.columns, -1)
        start += len(stacks)
