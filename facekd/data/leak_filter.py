"""Keep test identities out of training faces: drop every face the teacher matches to a test face.

Unlabelled faces gathered from the web may show people of the test sets (LFW, CFP are
celebrities).  A face is dropped when its teacher embedding is closer to any test face than a
threshold at which the teacher's false-match rate between *different* people is ``far``
(default 1e-6 per comparison).  The threshold is measured, not assumed: on every pair of test
faces of different identities within each test set (LFW View 1's 4,992 faces give 12.45 M such
pairs, CFP's 7,000 give 24.45 M), it is the value that at most ``floor(far * pairs)`` of them
exceed (:func:`false_match_threshold`).  The 50/50 verification threshold would drop nearly
every face: against ~12 k test faces a training face of a stranger is compared 12 k times.

* :class:`EmbeddingStore` — a teacher's embeddings of face files on disk, keyed by the file's
  bytes (BLAKE2b) under a folder named by the teacher's fingerprint: resumable (chunks are
  written atomically as they are computed), and a file moved or linked elsewhere is not
  embedded again.  The teacher is any object with ``embed(uint8 N x 112 x 112 x 3)`` and
  ``fingerprint()`` (:class:`facekd.teachers.Teacher`).
* :func:`reference_faces` — the faces of a test set aligned as ``root/<identity>/**/<image>``.
* :func:`false_match_threshold` — the threshold and how it was measured (:class:`Threshold`).
* :func:`nearest_reference` — each training face's closest test face and cosine.
* :func:`write_filtered` — ``kept.txt``, ``dropped.tsv`` and, optionally, a tree of links to
  the kept faces (``data.unlabelled`` reads it); source files are never touched.

``facekd leak-filter`` (:mod:`facekd.commands.leak_filter`) runs the whole step.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from facekd.data.base import fit_to_size
from facekd.data.folders import images_under
from facekd.data.image_io import read_image
from facekd.errors import DataError
from facekd.fileio import atomic_write_text

LOG = logging.getLogger(__name__)


def content_digest(path: Path) -> str:
    """BLAKE2b (128 bit, hex) of a file's bytes: the key of its embedding."""
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    except OSError as error:
        raise DataError(path, f"cannot read the face ({error.strerror or error})") from None


class EmbeddingStore:
    """``teacher``'s raw embeddings of aligned face files, computed once, kept in ``folder``.

    ``folder/<sha256(teacher.fingerprint())[:16]>/part-NNNNN.npz`` hold ``digests`` (the files'
    content digests) and ``embeddings`` (float32 ``[n, D]``); each part is written atomically once
    ``chunk`` faces are embedded, so an interrupted run loses at most one chunk.
    """

    def __init__(self, folder, teacher: Any, chunk: int = 256, batch_size: int = 32) -> None:
        self.teacher = teacher
        fingerprint = teacher.fingerprint()
        self.folder = Path(folder) / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = self.folder / "teacher.txt"
        if not stamp.exists():
            atomic_write_text(stamp, fingerprint + "\n")
        self.chunk, self.batch_size = int(chunk), int(batch_size)
        self._known: Dict[str, np.ndarray] = {}
        self._parts = 0
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as data:
                    self._known.update(zip(data["digests"].tolist(), data["embeddings"]))
            except (OSError, ValueError, KeyError) as error:
                raise DataError(part, f"bad embedding store part ({error}); remove it to recompute") from None
            self._parts = max(self._parts, int(part.stem.split("-")[1]) + 1)
        self.computed = 0

    def __len__(self) -> int:
        return len(self._known)

    def embed_files(self, paths: Sequence[Path], progress: Optional[Callable[[int, int], None]] = None
                    ) -> np.ndarray:
        """Raw float32 ``[len(paths), D]`` embeddings of the aligned faces at ``paths`` (112 px, or
        resized when another size), computing only those the store lacks."""
        digests = [content_digest(p) for p in paths]
        todo = list(dict.fromkeys(d for d in digests if d not in self._known))
        first = {d: p for p, d in zip(reversed(paths), reversed(digests))}
        pending_keys: List[str] = []
        pending: List[np.ndarray] = []
        for start in range(0, len(todo), self.batch_size):
            keys = todo[start:start + self.batch_size]
            faces = np.stack([fit_to_size(read_image(first[k]), 112, str(first[k]), "resize") for k in keys])
            embeddings = np.asarray(self.teacher.embed(faces), dtype=np.float32).reshape(len(keys), -1)
            self._known.update(zip(keys, embeddings))
            pending_keys += keys
            pending.append(embeddings)
            self.computed += len(keys)
            if len(pending_keys) >= self.chunk:
                self._write_part(pending_keys, pending)
                pending_keys, pending = [], []
            if progress is not None:
                progress(min(start + self.batch_size, len(todo)), len(todo))
        if pending_keys:
            self._write_part(pending_keys, pending)
        if not digests:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._known[d] for d in digests])

    def _write_part(self, keys: List[str], embeddings: List[np.ndarray]) -> None:
        path = self.folder / f"part-{self._parts:05d}.npz"
        temporary = path.with_name(path.stem + ".tmp.npz")
        np.savez(temporary, digests=np.asarray(keys), embeddings=np.concatenate(embeddings))
        os.replace(temporary, path)
        self._parts += 1


def reference_faces(root) -> Tuple[List[Path], List[str]]:
    """The aligned faces of a test set laid out as ``root/<identity>/**/<image>`` and the identity
    (the first folder below ``root``) of each; a face directly in ``root`` is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "test face folder does not exist")
    paths = images_under(root)
    if not paths:
        raise DataError(root, "no images in this test face folder")
    identities = []
    for path in paths:
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            raise DataError(path, "test faces must be in identity folders (root/<identity>/...)")
        identities.append(parts[0])
    return paths, identities


def unit(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


@dataclass
class Threshold:
    """The cosine above which two faces are taken for the same person, and how it was measured.

    ``value``: the ``(allowed + 1)``-th highest cosine among ``pairs`` different-identity pairs,
    so that at most ``allowed = floor(far * pairs)`` pairs lie above it (the false-match rate at
    ``value`` is ``above / pairs`` <= ``far``).  ``groups``: per test set, its pairs, faces,
    identities and its own threshold at ``far``.  ``highest``: the top different-identity pairs
    (cosine, face, face), to look at (mislabelled identities show up here).
    """

    value: float
    far: float
    pairs: int
    allowed: int
    above: int
    groups: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    highest: List[Tuple[float, str, str]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _top_impostor_pairs(unit_rows: np.ndarray, identities: Sequence[str], keep: int,
                        block: int = 1024) -> Tuple[np.ndarray, np.ndarray, int]:
    """The ``keep`` highest cosines over pairs ``i < j`` of different identities, their ``(i, j)``,
    and the number of such pairs."""
    codes = np.unique(np.asarray(identities), return_inverse=True)[1]
    count = len(codes)
    pairs = count * (count - 1) // 2 - int(sum(n * (n - 1) // 2 for n in np.bincount(codes)))
    best = np.full(0, -np.inf, np.float32)
    best_ij = np.zeros((0, 2), np.int64)
    for start in range(0, count, block):
        stop = min(start + block, count)
        sims = unit_rows[start:stop] @ unit_rows.T
        rows = np.arange(start, stop)[:, None]
        invalid = (np.arange(count)[None, :] <= rows) | (codes[start:stop, None] == codes[None, :])
        sims[invalid] = -np.inf
        flat = sims.ravel()
        take = min(keep, flat.size)
        top = np.argpartition(flat, flat.size - take)[flat.size - take:]
        candidates = np.concatenate([best, flat[top]])
        ij = np.concatenate([best_ij, np.stack([start + top // count, top % count], 1)])
        order = np.argsort(-candidates, kind="stable")[:keep]
        best, best_ij = candidates[order], ij[order]
    valid = np.isfinite(best)
    return best[valid], best_ij[valid], pairs


def false_match_threshold(groups: Dict[str, Tuple[np.ndarray, Sequence[str], Sequence[str]]],
                          far: float = 1e-6, show: int = 10) -> Threshold:
    """The cosine threshold at false-match rate ``far`` over the different-identity pairs within
    each group (``name -> (embeddings [n, D], identities, names of the faces)``); pairs across
    groups are not used (the same person may be in two test sets under different names)."""
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    tops, report, total = [], {}, 0
    faces = sum(len(embeddings) for embeddings, _, _ in groups.values())
    # enough of each group's highest pairs for its own threshold and for the pooled one
    keep = max(show, 1 + math.floor(far * faces * (faces - 1) / 2))
    for name, (embeddings, identities, names) in groups.items():
        unit_rows = unit(embeddings)
        values, ij, pairs = _top_impostor_pairs(unit_rows, identities, keep)
        total += pairs
        allowed = math.floor(far * pairs)
        own = float(values[allowed]) if allowed < len(values) else float("-inf")
        report[name] = {"faces": len(unit_rows), "identities": len(set(identities)), "pairs": pairs,
                        "threshold": own, "allowed": allowed}
        tops += [(float(v), f"{name}:{names[i]}", f"{name}:{names[j]}") for v, (i, j) in zip(values, ij)]
    if not total:
        raise ValueError("no pairs of different identities to measure a threshold on")
    tops.sort(key=lambda t: -t[0])
    allowed = math.floor(far * total)
    value = tops[allowed][0] if allowed < len(tops) else float("-inf")
    above = sum(t[0] > value for t in tops)
    return Threshold(value, far, total, allowed, above, report, tops[:show])


def nearest_reference(train: np.ndarray, reference: np.ndarray, block: int = 2048
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """For each training embedding: the index of its most similar reference embedding and the cosine."""
    train, reference = unit(train), unit(reference)
    index = np.zeros(len(train), np.int64)
    cosine = np.zeros(len(train), np.float32)
    for start in range(0, len(train), block):
        sims = train[start:start + block] @ reference.T
        index[start:start + block] = sims.argmax(1)
        cosine[start:start + block] = sims.max(1)
    return index, cosine


@dataclass
class FilterResult:
    """What :func:`write_filtered` wrote: counts per training folder and the files."""

    kept: int
    dropped: int
    per_folder: Dict[str, Dict[str, int]]
    files: Dict[str, str]


def write_filtered(out, train: Sequence[Tuple[str, Path, Path]], nearest: np.ndarray, cosine: np.ndarray,
                   reference_names: Sequence[str], threshold: float, links: bool = False) -> FilterResult:
    """Write ``out/kept.txt`` (one absolute path a line), ``out/dropped.tsv`` (path, cosine, matched
    test face) and, with ``links``, ``out/faces/<folder>/<rel>`` links to each kept face.

    ``train``: ``(folder name, folder, path)`` of each training face, in the order of
    ``nearest`` / ``cosine``.  A face is dropped when ``cosine > threshold``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drop = np.asarray(cosine) > threshold
    kept_lines, dropped_lines = [], ["# path\tcosine\ttest face"]
    per_folder: Dict[str, Dict[str, int]] = {}
    faces = out / "faces"
    for (name, folder, path), dropped, k, c in zip(train, drop, nearest, cosine):
        counts = per_folder.setdefault(name, {"faces": 0, "kept": 0, "dropped": 0})
        counts["faces"] += 1
        counts["dropped" if dropped else "kept"] += 1
        if dropped:
            dropped_lines.append(f"{Path(path).resolve()}\t{c:.4f}\t{reference_names[k]}")
        else:
            kept_lines.append(str(Path(path).resolve()))
    atomic_write_text(out / "kept.txt", "".join(line + "\n" for line in kept_lines))
    atomic_write_text(out / "dropped.tsv", "".join(line + "\n" for line in dropped_lines))
    files = {"kept": str(out / "kept.txt"), "dropped": str(out / "dropped.tsv")}
    if links:
        _link_tree(faces, [(name, folder, path) for (name, folder, path), d in zip(train, drop) if not d])
        files["faces"] = str(faces)
    return FilterResult(int((~drop).sum()), int(drop.sum()), per_folder, files)


def _link_tree(root: Path, kept: Iterable[Tuple[str, Path, Path]]) -> None:
    """``root/<name>/<rel>`` -> each kept face; links of faces no longer kept are removed."""
    wanted = {}
    for name, folder, path in kept:
        wanted[root / name / Path(path).relative_to(folder)] = Path(path).resolve()
    if root.is_dir():
        for dirpath, _, filenames in os.walk(root):
            for filename in filenames:
                link = Path(dirpath) / filename
                if link.is_symlink() and link not in wanted:
                    link.unlink()
    for link, target in wanted.items():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def progress_printer(what: str, every_s: float = 60.0) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback that logs at most every ``every_s`` seconds and at the end."""
    last = [0.0]
    started = time.time()

    def report(done: int, total: int) -> None:
        now = time.time()
        if done == total or now - last[0] >= every_s:
            last[0] = now
            rate = done / max(now - started, 1e-9)
            LOG.info("%s: %d/%d embedded (%.1f faces/s)", what, done, total, rate)

    return report


def filter_leaks(train: Dict[str, Path], references: Dict[str, Path], out, teacher: Any, far: float = 1e-6,
                 threshold: Optional[float] = None, cache=None, links: bool = False,
                 batch_size: int = 32) -> Dict[str, Any]:
    """The whole step: embed the test faces (``references``: name -> ``root/<identity>/...``) and
    the training faces (``train``: name -> folder, images anywhere below it), measure the
    threshold at ``far`` on the test faces' different-identity pairs (unless ``threshold`` is
    given), drop every training face closer than it to any test face, and write the lists
    (:func:`write_filtered`) and ``out/report.json``.  Returns the report."""
    import json

    out = Path(out)
    store = EmbeddingStore(cache if cache is not None else out / "embeddings", teacher, batch_size=batch_size)
    groups, reference_rows, reference_names = {}, [], []
    for name, root in references.items():
        paths, identities = reference_faces(root)
        embeddings = store.embed_files(paths, progress_printer(f"test faces {name}"))
        names = [p.relative_to(root).as_posix() for p in paths]
        groups[name] = (embeddings, identities, names)
        reference_rows.append(embeddings)
        reference_names += [f"{name}:{n}" for n in names]
    measured = false_match_threshold(groups, far) if threshold is None else None
    value = float(threshold) if threshold is not None else measured.value
    faces: List[Tuple[str, Path, Path]] = []
    for name, folder in train.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(folder, "training face folder does not exist")
        found = images_under(folder, follow_links=True)
        if not found:
            raise DataError(folder, "no images in this training face folder")
        faces += [(name, folder, path) for path in found]
    embeddings = store.embed_files([path for _, _, path in faces], progress_printer("training faces"))
    nearest, cosine = nearest_reference(embeddings, np.concatenate(reference_rows))
    result = write_filtered(out, faces, nearest, cosine, reference_names, value, links)
    reference_count = len(reference_names)
    report = {
        "teacher": teacher.fingerprint(), "threshold": value,
        "threshold_measured": measured.to_dict() if measured is not None else None,
        "references": {name: {"faces": len(g[0]), "identities": len(set(g[1]))} for name, g in groups.items()},
        "train": result.per_folder, "kept": result.kept, "dropped": result.dropped,
        # a stranger is compared with every test face: ~ far * test faces false drops per stranger
        "expected_false_drop_rate": (1 - (1 - far) ** reference_count) if threshold is None else None,
        "files": result.files, "embedded_now": store.computed,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    return report
