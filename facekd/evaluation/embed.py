"""Embedding extraction for verification: every unique image of a pair set once, plus its mirror.

An *embedder* is any callable ``f(batch) -> np.ndarray[N, D]`` taking a normalised float
``N x 3 x H x W`` tensor (:func:`facekd.preprocess.normalize_uint8`) and returning raw
(unnormalised) embeddings.  :class:`TorchEmbedder` wraps an ``nn.Module``; the ONNX runtime
embedder of :mod:`facekd.export.runtime` satisfies the same protocol.

As in insightface, the "flip" embedding of an image is the *sum* of the raw embeddings of
the image and of its horizontal mirror, L2-normalised afterwards.

Sharing the machine: :func:`thread_budget` gives one process its share of the cores it may
run on (``os.sched_getaffinity``) — ``FACEKD_THREADS`` if set, else the cores divided by the
number of evaluations running at once (``FACEKD_JOBS``, default 1) — and
:func:`apply_thread_budget` sets torch's (and OpenCV's) threads to it, so several
``facekd eval`` processes started together do not each spawn a thread per core.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Mapping, NamedTuple, Optional, Protocol, Sequence

import numpy as np
import torch

from facekd.errors import DataError
from facekd.precision import AMP_DTYPES, autocast_context
from facekd.preprocess import INPUT_SIZE, normalize_uint8

#: ``degrade(img, size) -> img``: a deterministic low-resolution version of a 112x112 face
DegradeFn = Callable[[np.ndarray, int], np.ndarray]

#: environment variables read by :func:`thread_budget`
THREADS_ENV, JOBS_ENV = "FACEKD_THREADS", "FACEKD_JOBS"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(threads: Optional[int] = None, jobs: Optional[int] = None,
                  env: Optional[Mapping[str, str]] = None, cores: Optional[int] = None) -> int:
    """Compute threads for one process: ``threads`` if given, else ``$FACEKD_THREADS``, else
    ``available cores // jobs`` (``jobs`` or ``$FACEKD_JOBS``, default 1); at least 1."""
    env = os.environ if env is None else env
    if threads is None and env.get(THREADS_ENV):
        threads = int(env[THREADS_ENV])
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return int(threads)
    jobs = int(jobs if jobs is not None else env.get(JOBS_ENV) or 1)
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    return max(1, (cores or available_cores()) // jobs)


def apply_thread_budget(threads: Optional[int] = None, jobs: Optional[int] = None) -> int:
    """Set torch's intra-op threads and OpenCV's threads to :func:`thread_budget`; return it.

    onnxruntime sessions take the budget as their ``intra_op_num_threads`` (pass
    ``thread_budget()`` where a session is created without an explicit count).
    """
    budget = thread_budget(threads, jobs)
    torch.set_num_threads(budget)
    try:
        import cv2

        cv2.setNumThreads(budget)
    except ImportError:   # OpenCV is optional for pure-embedding use
        pass
    return budget


class Embedder(Protocol):
    """Anything mapping a normalised ``N x 3 x H x W`` float tensor to ``N x D`` embeddings."""

    def __call__(self, batch: torch.Tensor) -> np.ndarray: ...


class PairSetLike(Protocol):
    """The part of :class:`facekd.data.PairSet` that evaluation uses."""
    name: str
    images: Sequence[str]
    pairs: np.ndarray
    issame: np.ndarray

    def load(self, i: int) -> np.ndarray: ...


class TorchEmbedder:
    """Run a PyTorch backbone as an :class:`Embedder` (eval mode, no gradients).

    Args:
        model: backbone returning raw ``N x D`` embeddings.
        device: where to run (default: the model's current device).
        batch_size: largest chunk passed to the model at once (``None``: the whole batch).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"`` autocast; outputs are always float32.
    """

    def __init__(self, model: torch.nn.Module, device: Optional[str] = None,
                 batch_size: Optional[int] = None, amp: str = "none") -> None:
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
        if device is None:
            param = next(model.parameters(), None)
            device = str(param.device) if param is not None else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.amp = amp

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Raw float32 embeddings of ``batch`` as a numpy array."""
        step = self.batch_size or max(len(batch), 1)
        outputs = []
        for start in range(0, len(batch), step):
            chunk = batch[start:start + step].to(self.device, non_blocking=True)
            with autocast_context(self.device, self.amp):
                out = self.model(chunk)
            outputs.append(out.float().cpu())
        return torch.cat(outputs).numpy()


class ImageEmbeddings(NamedTuple):
    """Per-image embeddings of a pair set, rows in the order of ``pair_set.images``."""
    plain: np.ndarray   #: ``[num_images, D]`` L2-normalised embedding of each image
    flip: np.ndarray    #: ``[num_images, D]`` L2-normalised sum of image and mirror embeddings


def default_degrade() -> DegradeFn:
    """:func:`facekd.data.degrade_to_size` (imported lazily)."""
    from facekd.data import degrade_to_size

    return degrade_to_size


def load_pair_image(pair_set: PairSetLike, i: int) -> np.ndarray:
    """``pair_set.load(i)``, checked to be a uint8 RGB face; errors name the image."""
    try:
        image = pair_set.load(i)
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise DataError(pair_set.images[i], f"cannot load image ({error})") from None
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(pair_set.images[i], f"expected a uint8 HxWx3 RGB face, got "
                                            f"{image.dtype} {image.shape}")
    return image


def _batches(pair_set: PairSetLike, batch_size: int, transform: Callable[[np.ndarray], np.ndarray],
             num_workers: int) -> Iterator[np.ndarray]:
    """Stacked, transformed uint8 images of consecutive index batches (threads load them)."""
    def one(i: int) -> np.ndarray:
        image = transform(load_pair_image(pair_set, i))
        if image.shape != (INPUT_SIZE, INPUT_SIZE, 3):
            raise DataError(pair_set.images[i], f"expected an aligned {INPUT_SIZE}x{INPUT_SIZE} face, "
                                                f"got shape {image.shape}")
        return image

    starts = range(0, len(pair_set.images), batch_size)
    if num_workers <= 0:
        for start in starts:
            yield np.stack([one(i) for i in range(start, min(start + batch_size, len(pair_set.images)))])
        return
    with ThreadPoolExecutor(num_workers) as pool:
        pending = None
        for start in starts:
            indices = range(start, min(start + batch_size, len(pair_set.images)))
            batch = pool.map(one, indices)   # submitted now, collected one batch later
            if pending is not None:
                yield np.stack(list(pending))
            pending = batch
        if pending is not None:
            yield np.stack(list(pending))


def extract_embeddings(embedder: Embedder, pair_set: PairSetLike, batch_size: int = 64,
                       degrade_size: Optional[int] = None, progress: bool = True,
                       degrade_fn: Optional[DegradeFn] = None, num_workers: int = 0) -> ImageEmbeddings:
    """Embed each unique image of ``pair_set`` once, plain and with its horizontal mirror.

    Args:
        embedder: see :class:`Embedder`.
        pair_set: a :class:`facekd.data.PairSet` (or anything like :class:`PairSetLike`).
        batch_size: images per embedder call (the mirrors double it).
        degrade_size: if given, every image is first reduced to ``degrade_size`` pixels and
            brought back to its size (``degrade_fn``, default
            :func:`facekd.data.degrade_to_size`).  To degrade only one image of each pair,
            extract clean and degraded embeddings and combine them with
            :func:`facekd.evaluation.verification.pair_embeddings`.
        progress: show a tqdm progress bar.
        num_workers: threads decoding images (0: decode in this thread).

    Returns:
        :class:`ImageEmbeddings` ``(plain, flip)``, both L2-normalised.
    """
    from tqdm import tqdm

    from facekd.embedding_math import l2_normalize

    if degrade_size is None:
        transform: Callable[[np.ndarray], np.ndarray] = lambda image: image  # noqa: E731
    else:
        degrade = degrade_fn or default_degrade()
        transform = lambda image: degrade(image, degrade_size)  # noqa: E731

    plain: List[np.ndarray] = []
    flip: List[np.ndarray] = []
    desc = f"embed {getattr(pair_set, 'name', 'pairs')}" + (f" @{degrade_size}px" if degrade_size else "")
    with tqdm(total=len(pair_set.images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for images in _batches(pair_set, batch_size, transform, num_workers):
            batch = normalize_uint8(images)
            out = np.asarray(embedder(torch.cat([batch, torch.flip(batch, dims=[3])])), dtype=np.float32)
            n = len(images)
            if out.ndim != 2 or len(out) != 2 * n:
                raise ValueError(f"embedder returned shape {out.shape} for {2 * n} images; expected [N, D]")
            if plain and out.shape[1] != plain[0].shape[1]:
                raise ValueError(f"embedder changed its embedding size from {plain[0].shape[1]} "
                                 f"to {out.shape[1]}")
            plain.append(out[:n])
            flip.append(out[:n] + out[n:])
            bar.update(n)
    if not plain:
        raise ValueError(f"pair set {getattr(pair_set, 'name', '')!r} has no images")
    return ImageEmbeddings(l2_normalize(np.concatenate(plain), dtype=np.float64).astype(np.float32),
                           l2_normalize(np.concatenate(flip), dtype=np.float64).astype(np.float32))


def measure_embedding_size(embedder: Embedder, input_size: int = INPUT_SIZE) -> int:
    """The size of the embeddings ``embedder`` actually returns (one forward pass on zeros)."""
    out = np.asarray(embedder(torch.zeros(1, 3, input_size, input_size)))
    if out.ndim != 2 or len(out) != 1:
        raise ValueError(f"embedder returned shape {out.shape} for one image; expected [1, D]")
    return int(out.shape[1])
