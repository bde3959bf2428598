"""Align a whole folder tree of face photos into 112x112 arcface-aligned crops.

``align_tree(src, dst, workers=4)`` mirrors ``src`` into ``dst`` (same relative paths, the
image extension replaced by ``ext``).  It is resumable: outputs that already exist are
skipped, and every output is written atomically, so an interrupted run can simply be
started again.  Images where MTCNN finds no face are skipped (or centre-cropped with
``no_face='center'``); photos too small to hold a face (shorter side below ``min_face_size``)
and unreadable files are skipped.  All of them are counted and listed in ``dst/align_log.txt``
(and warned about); they never stop the run, and a re-run skips them again.  Faces found only
by a retry (a later ``pad``) are counted as ``retried`` and listed with the border that found
them; a resumed run keeps the earlier run's list for the outputs it skips.

``landmarks='intraface49'`` (any :data:`~facekd.data.landmark_files.LANDMARK_FORMATS` name)
aligns from landmark files under ``landmarks_dir`` instead of MTCNN.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import cv2

from facekd.data.align import FaceAligner, center_crop, warp_face
from facekd.data.image_io import is_image_file, read_image, write_image
from facekd.errors import DataError
from facekd.fileio import atomic_write_text

LOG = logging.getLogger(__name__)
LOG_NAME = "align_log.txt"

# Per-worker state (one aligner per process or per thread).
_WORKER: Dict[str, Any] = {}


@dataclass
class AlignReport:
    """What :func:`align_tree` did: counts and the relative paths that were not aligned."""

    total: int = 0
    aligned: int = 0
    existing: int = 0
    center_fallback: List[str] = field(default_factory=list)
    retried: List[Tuple[str, str]] = field(default_factory=list)
    no_face: List[str] = field(default_factory=list)
    too_small: List[Tuple[str, str]] = field(default_factory=list)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)
    log_path: Optional[Path] = None

    def summary(self) -> str:
        """One line of counts."""
        return (f"total={self.total} aligned={self.aligned} existing={self.existing} "
                f"center_fallback={len(self.center_fallback)} no_face={len(self.no_face)} "
                f"too_small={len(self.too_small)} unreadable={len(self.unreadable)} "
                f"retried={len(self.retried)}")

    @property
    def dropped(self) -> int:
        """Photos with no aligned output: no face (and no centre crop), too small, unreadable."""
        return len(self.no_face) + len(self.too_small) + len(self.unreadable)


@dataclass(frozen=True)
class _Job:
    rel: str
    src: str
    out: str


def _make_aligner(aligner_kwargs: Dict[str, Any]):
    kwargs = dict(aligner_kwargs)
    landmarks, folder = kwargs.pop("landmarks", None), kwargs.pop("landmarks_dir", None)
    if landmarks:
        from facekd.data.landmark_files import LandmarkFileAligner

        return LandmarkFileAligner(landmarks, folder, kwargs["size"], kwargs["margin"])
    return FaceAligner(**kwargs)


def _init_worker(aligner_kwargs: Dict[str, Any], no_face: str, center_fraction: float,
                 quality: int, threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    _WORKER.update(aligner=_make_aligner(aligner_kwargs), no_face=no_face,
                   center_fraction=center_fraction, quality=quality)


def _align_one(job: _Job) -> Tuple[str, str, str]:
    """Align one file; returns ``(rel, status, message)``, status in
    aligned/retried/center/no_face/too_small/unreadable (``retried``: the message names the pad)."""
    try:
        image = read_image(job.src)
    except DataError as error:
        return job.rel, "unreadable", error.problem
    aligner = _WORKER["aligner"]
    problem = aligner.unusable(image)
    if problem is not None:
        return job.rel, "too_small", problem
    try:
        found = aligner.locate(image, job.rel)
        face = None if found is None else warp_face(image, found.landmarks, aligner.size, aligner.margin)
    except DataError as error:    # a landmark file missing or malformed
        return job.rel, "unreadable", f"{error.path}: {error.problem}"
    except (RuntimeError, ValueError, cv2.error) as error:  # one odd photo must not end the run
        return job.rel, "unreadable", f"alignment failed ({type(error).__name__}: {error})"
    status, message = "aligned", ""
    if found is not None and found.attempt:
        status, message = "retried", f"pad={found.pad:g}"
    if face is None:
        if _WORKER["no_face"] != "center":
            return job.rel, "no_face", ""
        face = center_crop(image, _WORKER["center_fraction"], aligner.size)
        status = "center"
    write_image(job.out, face, _WORKER["quality"])
    return job.rel, status, message


def _list_images(src: Path, dst: Path) -> List[Path]:
    dst_resolved = dst.resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != dst_resolved)
        found.extend(here / name for name in sorted(filenames) if is_image_file(name))
    return found


def _progress(results: Iterable, total: int, enabled: bool) -> Iterable:
    if not enabled:
        return results
    from tqdm import tqdm

    return tqdm(results, total=total, desc="align", unit="img")


def _make_executor(workers: int, backend: str, initargs: tuple) -> Executor:
    if backend == "process":
        import multiprocessing

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=initargs[:-1] + (1,))
    if backend == "thread":
        # One shared aligner: MTCNN inference holds no state, and torch releases the GIL.
        _init_worker(*initargs)
        return ThreadPoolExecutor(workers)
    raise ValueError(f"unknown backend {backend!r}; use 'process' or 'thread'")


def align_tree(src, dst, workers: int = 1, size: int = 112, margin: float = 0.0,
               min_face_size: int = 20, min_score: float = 0.9, no_face: str = "skip",
               center_fraction: float = 0.53, ext: str = ".jpg", quality: int = 95,
               overwrite: bool = False, backend: str = "process", progress: bool = True,
               device: str = "cpu", pad=0.25, pad_mode: str = "constant", landmarks: Optional[str] = None,
               landmarks_dir=None) -> AlignReport:
    """Detect, align and write every image under ``src`` to the same relative path under ``dst``.

    ``workers`` > 1 runs that many processes (``backend='process'``, spawn, one torch thread
    each) or threads (``backend='thread'``).  Existing outputs are skipped unless ``overwrite``.
    ``no_face='skip'`` leaves images without a detected face out; ``'center'`` writes a
    :func:`~facekd.data.align.center_crop` of them instead.  Unreadable files are skipped too.
    Both kinds are listed, with the counts, in ``dst/align_log.txt``; returns an :class:`AlignReport`.
    ``pad`` / ``pad_mode``: the border(s) added before detection (:class:`FaceAligner`); a face
    found only with a later pad is counted in ``retried``.  ``landmarks`` / ``landmarks_dir``:
    align from landmark files instead (:mod:`facekd.data.landmark_files`).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DataError(src, "source folder does not exist")
    if no_face not in ("skip", "center"):
        raise ValueError(f"no_face must be 'skip' or 'center', got {no_face!r}")
    if backend not in ("process", "thread"):
        raise ValueError(f"unknown backend {backend!r}; use 'process' or 'thread'")
    ext = ext if ext.startswith(".") else "." + ext
    report = AlignReport(log_path=dst / LOG_NAME)
    earlier_retries = _earlier_retries(report.log_path) if not overwrite else {}
    jobs = []
    for path in _list_images(src, dst):
        rel = path.relative_to(src)
        out = dst / rel.with_suffix(ext)
        report.total += 1
        if out.exists() and not overwrite:
            report.existing += 1
            if rel.as_posix() in earlier_retries:
                report.retried.append((rel.as_posix(), earlier_retries[rel.as_posix()]))
        else:
            jobs.append(_Job(rel.as_posix(), str(path), str(out)))
    dst.mkdir(parents=True, exist_ok=True)

    aligner_kwargs = dict(size=size, margin=margin, device=device, min_face_size=min_face_size,
                          min_score=min_score, pad=pad, pad_mode=pad_mode)
    if landmarks:
        aligner_kwargs = dict(size=size, margin=margin, landmarks=landmarks, landmarks_dir=landmarks_dir)
    _make_aligner(aligner_kwargs)     # bad options fail here, once, not in every worker
    initargs = (aligner_kwargs, no_face, center_fraction, quality, None)
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(*initargs)
        results = _progress(map(_align_one, jobs), len(jobs), progress)
        _collect(results, report)
    elif backend == "thread":
        import torch

        # Threads share torch's intra-op pool: one intra-op thread each, set once for the run.
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            initargs = ((aligner_kwargs if landmarks else dict(aligner_kwargs, threads=None)),) + initargs[1:]
            with _make_executor(workers, backend, initargs) as pool:
                _collect(_progress(pool.map(_align_one, jobs), len(jobs), progress), report)
        finally:
            torch.set_num_threads(previous)
    else:
        with _make_executor(workers, backend, initargs) as pool:
            _collect(_progress(pool.map(_align_one, jobs, chunksize=4), len(jobs), progress), report)
    _write_log(report)
    for rel, problem in report.unreadable:
        LOG.warning("%s: skipped, unreadable (%s)", src / rel, problem)
    for rel, problem in report.too_small:
        LOG.warning("%s: skipped, %s", src / rel, problem)
    if report.no_face:
        LOG.warning("%d image(s) without a detectable face were %s; see %s", len(report.no_face),
                    "skipped", report.log_path)
    if report.center_fallback:
        LOG.warning("%d image(s) without a detectable face were centre-cropped; see %s",
                    len(report.center_fallback), report.log_path)
    if report.retried:
        LOG.info("%d face(s) were found only by a retry with another pad; see %s", len(report.retried),
                 report.log_path)
    return report


def _earlier_retries(log_path: Path) -> Dict[str, str]:
    """``{rel: 'pad=...'}`` of the retried faces an earlier run's log lists (empty without one)."""
    if not log_path.is_file():
        return {}
    try:
        return dict(read_align_log(log_path)["retried"])
    except (ValueError, KeyError, IndexError):     # a log this version did not write: start afresh
        return {}


def _collect(results: Iterable[Tuple[str, str, str]], report: AlignReport) -> None:
    for rel, status, message in results:
        if status == "aligned":
            report.aligned += 1
        elif status == "retried":
            report.aligned += 1
            report.retried.append((rel, message))
        elif status == "center":
            report.center_fallback.append(rel)
        elif status == "no_face":
            report.no_face.append(rel)
        elif status == "too_small":
            report.too_small.append((rel, message))
        else:
            report.unreadable.append((rel, message))


def _write_log(report: AlignReport) -> None:
    lines = [f"# facekd align: {report.summary()}"]
    lines += [f"no_face\t{rel}" for rel in sorted(report.no_face)]
    lines += [f"center_fallback\t{rel}" for rel in sorted(report.center_fallback)]
    lines += [f"retried\t{rel}\t{how}" for rel, how in sorted(report.retried)]
    lines += [f"too_small\t{rel}\t{problem}" for rel, problem in sorted(report.too_small)]
    lines += [f"unreadable\t{rel}\t{problem}" for rel, problem in sorted(report.unreadable)]
    atomic_write_text(report.log_path, "\n".join(lines) + "\n")


def read_align_log(path) -> Dict[str, Any]:
    """Parse an ``align_log.txt``: ``{'counts': {name: int}, 'no_face': [...], 'center_fallback': [...],
    'too_small': [...], 'unreadable': [...], 'retried': [(rel, 'pad=P'), ...]}`` (relative paths)."""
    result: Dict[str, Any] = {"counts": {}, "no_face": [], "center_fallback": [], "too_small": [],
                              "unreadable": [], "retried": []}
    for line in Path(path).read_text().splitlines():
        if line.startswith("# facekd align:"):
            for item in line.split(":", 1)[1].split():
                key, value = item.split("=")
                result["counts"][key] = int(value)
        elif line.startswith("retried\t"):
            _, rel, how = line.split("\t")[:3]
            result["retried"].append((rel, how))
        elif line.strip():
            kind, rel = line.split("\t")[:2]
            result[kind].append(rel)
    return result
