"""``teacher.kind: dlib`` — dlib's ResNet face model (the model behind ``face_recognition``).

128-d embeddings, 99.38 % on LFW with dlib's own pipeline.  Installed from PyPI without a
compiler: ``pip install -e .[dlib]`` (``dlib-bin`` and ``face-recognition-models``, whose
``models/dlib_face_recognition_resnet_model_v1.dat`` is the default ``teacher.path``).

Framing: dlib's 150x150 chip (``get_face_chip`` with padding 0.25), warped from the
student's 112 px arcface crop by the similarity between the two templates
(:data:`facekd.teachers.framing.DLIB_CHIP_150`).  Measured on LFW View 2 folds 1-4: 98.6 %
this way, 86.3 % on the 112 px crops merely resized to 150 px.

dlib's Python binding holds the GIL while it computes (dlib-bin 20.0.1: a pure-Python
counter in another thread ran at 1 % of its rate during a descriptor call), so threads run one
at a time.  Large batches are therefore split over ``threads`` worker *processes*, each with
its own copy of the model (started once, with ``spawn``, on the first large batch).
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, List, Optional

import numpy as np
import torch

from facekd.errors import ConfigError, DataError
from facekd.evaluation.embed import thread_budget
from facekd.registry import Registry
from facekd.teachers.base import TEACHERS, Teacher, existing_file, file_digest, packaged_file
from facekd.teachers.framing import Framing, framing_from_config

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_FRAMING = Framing(input_size=150, template="dlib", channel_order="RGB", mean=0.0, std=1.0)
INSTALL_HINT = "pip install dlib-bin face-recognition-models  (or: pip install -e .[dlib])"


def import_dlib():
    """The ``dlib`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import dlib
    except ImportError:
        raise ConfigError(f"teacher.kind=dlib needs dlib: {INSTALL_HINT}") from None
    return dlib


def default_model_path() -> str:
    """dlib's face model inside the installed ``face_recognition_models`` package (not imported:
    its ``__init__`` needs setuptools' ``pkg_resources``)."""
    return packaged_file("face_recognition_models", f"models/{MODEL_FILE}", "dlib", INSTALL_HINT)


#: a batch is split over worker processes only when each gets at least this many chips
MIN_CHIPS_PER_WORKER = 8

_WORKER_MODEL: Any = None      # the model of a worker process (set by _start_worker)


def _start_worker(path: str) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = import_dlib().face_recognition_model_v1(path)


def _worker_descriptors(chips: List[np.ndarray]) -> np.ndarray:
    return descriptors(_WORKER_MODEL, chips)


def descriptors(model: Any, chips: List[np.ndarray]) -> np.ndarray:
    """``[N, 128]`` float32 descriptors of contiguous uint8 RGB 150 px chips."""
    return np.asarray(model.compute_face_descriptor(chips), dtype=np.float32).reshape(len(chips), -1)


class DlibModelTeacher(Teacher):
    """What every backend of dlib's face model shares: the model file (``path`` or the packaged
    one), the 150 px framing check, 128-d output and the file's digest as the weights digest."""

    kind = "dlib"

    def __init__(self, path: Optional[str], framing: Framing, device: Any = "cpu") -> None:
        path = existing_file(path, "teacher.kind=dlib: the model file") if path else default_model_path()
        if framing.input_size != 150:
            raise ConfigError(f"teacher.kind=dlib: dlib's model takes 150x150 chips, framing says "
                              f"{framing.input_size}")
        super().__init__(framing, 128, path, torch.device(device))
        self._digest: Optional[str] = None

    def weights_digest(self) -> str:
        if self._digest is None:
            self._digest = file_digest(self.source)
        return self._digest


class DlibTeacher(DlibModelTeacher):
    """dlib's ``face_recognition_model_v1`` on 150x150 chips (:data:`DLIB_FRAMING`).

    Args:
        path: the ``.dat`` model (default: :func:`default_model_path`).
        framing: normally :data:`DLIB_FRAMING`; the model needs 150 px uint8 RGB chips.
        threads: worker processes for large batches (default: this process's share of the
            cores, :func:`facekd.evaluation.embed.thread_budget`); 1 computes in this process.
            Results do not depend on it.  :meth:`close` stops the workers (they also stop at exit).
    """

    kind = "dlib"

    def __init__(self, path: Optional[str] = None, framing: Framing = DLIB_FRAMING,
                 threads: Optional[int] = None) -> None:
        dlib = import_dlib()
        super().__init__(path, framing)
        try:
            self.model = dlib.face_recognition_model_v1(self.source)
        except RuntimeError as error:
            raise DataError(self.source, f"not a dlib face recognition model ({error})") from None
        self.threads = int(threads or thread_budget())
        self._pool: Optional[ProcessPoolExecutor] = None

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}|num_jitters=0"

    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        frames = np.asarray(frames, dtype=np.uint8)
        chips = [np.ascontiguousarray(chip[..., ::-1] if self.framing.channel_order == "BGR" else chip)
                 for chip in frames]
        workers = min(self.threads, len(chips) // MIN_CHIPS_PER_WORKER)
        if workers <= 1:
            return torch.from_numpy(descriptors(self.model, chips))
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.threads, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(self.source,))
        bounds = np.linspace(0, len(chips), workers + 1).astype(int)
        parts = [chips[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.from_numpy(np.concatenate(list(self._pool.map(_worker_descriptors, parts))))

    def close(self) -> None:
        """Stop the worker processes (a later large batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


#: ``teacher.backend`` -> factory ``(teacher_cfg, framing, device) -> Teacher`` of dlib's face model
#: (``torch``: :mod:`facekd.teachers.dlib_torch`, the default; ``dlib-bin``: :class:`DlibTeacher`)
DLIB_BACKENDS = Registry("dlib teacher backend")
DEFAULT_BACKEND = "torch"


@DLIB_BACKENDS.register("dlib-bin")
def _dlib_bin_backend(teacher_cfg: Any, framing: Framing, device: torch.device) -> DlibTeacher:
    """dlib's own binding (the reference; CPU, worker processes)."""
    return DlibTeacher(teacher_cfg.path or teacher_cfg.checkpoint, framing, getattr(teacher_cfg, "threads", None))


@TEACHERS.register("dlib")
def build_dlib_teacher(teacher_cfg: Any, device: torch.device = torch.device("cpu"),
                       amp: str = "none") -> Teacher:
    """dlib's face model from ``teacher.path`` (default: face-recognition-models' file), run by
    ``teacher.backend`` (:data:`DLIB_BACKENDS`; default ``torch``, ``dlib-bin`` the reference)."""
    framing = framing_from_config(getattr(teacher_cfg, "framing", None), DLIB_FRAMING)
    backend = getattr(teacher_cfg, "backend", None) or DEFAULT_BACKEND
    if backend not in DLIB_BACKENDS:
        raise ConfigError(f"teacher.backend {backend!r} is unknown for kind=dlib; known: {sorted(DLIB_BACKENDS)}")
    return DLIB_BACKENDS.get(backend)(teacher_cfg, framing, torch.device(device))
