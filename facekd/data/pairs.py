"""Verification pair sets and the parsers of their on-disk formats.

A :class:`PairSet` is the contract of docs/DESIGN.md: ``images`` (unique keys), ``pairs``
(``int64 Nx2`` indices into ``images``), ``issame`` (``bool N``), ``folds`` (``int64 N``, ``-1``
when the source defines none) and ``load(i) -> uint8 RGB 112x112``.

Formats:

* **LFW** ``pairs.txt`` — header ``N`` (View 1: N same then N different pairs, no folds: they are
  reordered into 10 View 2-like folds, each with equal numbers of same and different pairs) or
  ``F<TAB>P`` (View 2: F folds, each P same then P different lines).  Same pair:
  ``name<TAB>i<TAB>j``; different pair: ``name1<TAB>i<TAB>name2<TAB>j``; image
  ``<root>/<name>/<name>_%04d.jpg``.
* **insightface .bin** — a pickle of ``(list of encoded images, list of issame)``; pair ``i``
  is images ``2i, 2i+1``; folds are 10 consecutive blocks (sklearn ``KFold`` without shuffle).
  Read with a restricted unpickler (:class:`BinUnpickler`) that admits only what the format
  holds — bytes, lists, tuples, bools and numbers, and plain numpy arrays (some files keep
  ``issame`` or the images as arrays) — so a hostile file is refused, never executed
  (``FACEKD_TRUST_PICKLES=1`` lifts the restriction for files you trust).
* **AgeDB-30 pair list** — a text file, one pair per line: ``img1 img2 issame`` (whitespace
  or comma separated; ``issame`` is 1/0 or true/false; ``#`` starts a comment), image paths
  relative to ``root`` (default: the list's folder); folds are 10 consecutive blocks
  (600 pairs each for the 6,000-pair AgeDB-30).
* **CFP** official ``Protocol/`` — ``Pair_list_F.txt`` / ``Pair_list_P.txt`` map ``index path``
  (paths relative to ``Protocol/``); ``Split/FP|FF/01..10/{same,diff}.txt`` hold ``i,j`` lines
  (FP: i frontal, j profile; FF: both frontal); the split folder is the fold.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from facekd.data.align import FaceAligner, center_crop
from facekd.data.base import fit_to_size
from facekd.data.image_io import decode_image, encode_image, read_image
from facekd.errors import DataError
from facekd.fileio import TRUST_HINT, pickles_trusted

LOG = logging.getLogger(__name__)

ALIGN_MODES = ("none", "resize", "center", "mtcnn")


class PairSet:
    """Verification pairs over a list of image keys.

    ``reader(key) -> uint8 RGB`` fetches an image.  Images that are not ``size`` x ``size``
    are prepared by ``align``: ``'mtcnn'`` (detect + arcface warp; when no face is found, a
    centre crop, counted in :attr:`no_face` and warned about; a photo too small to hold a face
    raises :class:`DataError`), ``'center'`` (centre crop of
    ``center_fraction`` moved by ``center_y_shift``, then resize; fast, deterministic),
    ``'resize'``, or ``'none'`` (raise :class:`DataError`).  ``cache=True`` keeps prepared
    images in memory.
    """

    def __init__(self, name: str, images: Sequence[str], pairs: np.ndarray, issame: np.ndarray,
                 folds: np.ndarray, reader: Callable[[str], np.ndarray], align: str = "mtcnn",
                 center_fraction: float = 0.53, center_y_shift: float = -0.026, cache: bool = False,
                 aligner: Optional[FaceAligner] = None, size: int = 112) -> None:
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        self.name = name
        self.images = list(images)
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.issame = np.asarray(issame, dtype=bool).reshape(-1)
        self.folds = np.asarray(folds, dtype=np.int64).reshape(-1)
        if not len(self.pairs) == len(self.issame) == len(self.folds):
            raise ValueError("pairs, issame and folds must have the same length")
        if len(self.pairs) and (self.pairs.min() < 0 or self.pairs.max() >= len(self.images)):
            raise ValueError("pair indices out of range of images")
        self.reader = reader
        self.align = align
        self.center_fraction = center_fraction
        self.center_y_shift = center_y_shift
        self.size = size
        self.aligner = aligner
        self.cache = cache
        self._cache: Dict[int, np.ndarray] = {}
        self.no_face: List[str] = []

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_folds(self) -> int:
        """Number of folds (0 when the source defines none)."""
        return int(self.folds.max()) + 1 if len(self.folds) and self.folds.max() >= 0 else 0

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` (of :attr:`images`) as uint8 RGB ``size`` x ``size``."""
        image = self._cache.get(index)
        if image is None:
            image = self._prepare(self.images[index], self.reader(self.images[index]))
            if self.cache:
                self._cache[index] = image
        return image

    def _prepare(self, key: str, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (self.size, self.size):
            return image
        if self.align == "center":
            return center_crop(image, self.center_fraction, self.size, self.center_y_shift)
        if self.align != "mtcnn":
            return fit_to_size(image, self.size, key, self.align)
        if self.aligner is None:
            self.aligner = FaceAligner(size=self.size)
        problem = self.aligner.unusable(image)
        if problem is not None:
            raise DataError(key, problem)
        face = self.aligner.align(image)
        if face is None:
            self.no_face.append(key)
            LOG.warning("%s: no face found by MTCNN; using a centre crop (%d so far in %s)",
                        key, len(self.no_face), self.name)
            face = center_crop(image, self.center_fraction, self.size, self.center_y_shift)
        return face

    def __repr__(self) -> str:
        return (f"PairSet({self.name!r}, {len(self)} pairs ({int(self.issame.sum())} same), "
                f"{len(self.images)} images, {self.num_folds} folds)")


# -- helpers -------------------------------------------------------------------------------
def position_folds(count: int, num_folds: int = 10) -> np.ndarray:
    """Fold of each of ``count`` consecutive items: sklearn ``KFold(num_folds, shuffle=False)`` blocks."""
    sizes = np.full(num_folds, count // num_folds, dtype=np.int64)
    sizes[: count % num_folds] += 1
    return np.repeat(np.arange(num_folds, dtype=np.int64), sizes)


class _Index:
    """Assigns each distinct image key an index, in order of first use."""

    def __init__(self) -> None:
        self.keys: Dict[str, int] = {}

    def __call__(self, key: str) -> int:
        return self.keys.setdefault(key, len(self.keys))

    @property
    def images(self) -> List[str]:
        return list(self.keys)


def _check_files(paths: Sequence[str], source) -> None:
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(path, f"image listed in {source} does not exist")


def _content_lines(path: Path) -> List[Tuple[int, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(path, f"cannot read ({error})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append((number, line))
    return lines


# -- LFW -----------------------------------------------------------------------------------
def parse_lfw_pairs(pairs_file) -> Tuple[List[Tuple[str, int, str, int]], np.ndarray, np.ndarray]:
    """Parse an LFW ``pairs*.txt``: returns ``(entries, issame, folds)``.

    ``entries`` are ``(name1, index1, name2, index2)``.  A View 2 file keeps its order and folds;
    a View 1 file (no folds) is reordered into 10 balanced folds by :func:`view1_fold_order`.
    """
    pairs_file = Path(pairs_file)
    lines = _content_lines(pairs_file)
    if not lines:
        raise DataError(pairs_file, "empty pairs file")
    (_, header), body = lines[0], lines[1:]
    fields = header.split()
    try:
        if len(fields) == 1:
            num_folds, per_fold = 1, int(fields[0])
        elif len(fields) == 2:
            num_folds, per_fold = int(fields[0]), int(fields[1])
        else:
            raise ValueError
    except ValueError:
        raise DataError(pairs_file, f"line 1: expected a header 'N' or 'folds<TAB>pairs', got {header!r}") from None
    expected = 2 * num_folds * per_fold
    if len(body) != expected:
        raise DataError(pairs_file, f"header {header!r} announces {expected} pairs but the file has {len(body)}")
    entries, issame = [], []
    for number, line in body:
        parts = line.split()
        try:
            if len(parts) == 3:
                entries.append((parts[0], int(parts[1]), parts[0], int(parts[2])))
                issame.append(True)
            elif len(parts) == 4:
                entries.append((parts[0], int(parts[1]), parts[2], int(parts[3])))
                issame.append(False)
            else:
                raise ValueError
        except ValueError:
            raise DataError(pairs_file, f"line {number}: expected 'name i j' or 'name1 i name2 j', got {line!r}") \
                from None
    position = np.arange(expected)
    folds = position // (2 * per_fold) if len(fields) == 2 else np.full(expected, -1)
    block_same = (position % (2 * per_fold)) < per_fold
    issame_arr = np.asarray(issame, dtype=bool)
    if not np.array_equal(issame_arr, block_same):
        first = int(np.argmax(issame_arr != block_same))
        raise DataError(pairs_file, f"line {body[first][0]}: expected a {'same' if block_same[first] else 'different'}"
                                    f" pair ({per_fold} same then {per_fold} different per block)")
    if len(fields) == 1:
        order, folds = view1_fold_order(per_fold)
        entries, issame_arr = [entries[i] for i in order], issame_arr[order]
    return entries, issame_arr, folds.astype(np.int64)


def view1_fold_order(per_class: int, num_folds: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """Reorder a View 1 list (``per_class`` same then ``per_class`` different pairs) into folds.

    View 1 defines no folds, and contiguous ``KFold`` blocks of its file order would hold only
    same or only different pairs, so a fold's threshold would be chosen on a skewed mix.  Like
    View 2, fold ``f`` here is the ``f``-th consecutive block of the same pairs followed by the
    ``f``-th block of the different pairs; the returned ``order`` (indices into the file's
    pairs) lists the folds one after the other, so ``KFold`` without shuffle on the reordered
    pairs gives exactly these folds when the blocks are equal (1,100 / 500 pairs per class).
    Returns ``(order, folds)`` with ``folds`` the fold of each reordered pair.
    """
    class_folds = position_folds(per_class, num_folds)
    order, folds = [], []
    for fold in range(num_folds):
        members = np.flatnonzero(class_folds == fold)
        order.extend([members, members + per_class])
        folds.append(np.full(2 * len(members), fold))
    return np.concatenate(order), np.concatenate(folds)


def _default_lfw_root(pairs_file: Path) -> Path:
    for candidate in ("images", "lfw", "lfw-deepfunneled", "lfw_funneled"):
        if (pairs_file.parent / candidate).is_dir():
            return pairs_file.parent / candidate
    return pairs_file.parent


def lfw_pair_set(path, name: str = "lfw", root=None, ext: str = ".jpg", check_files: bool = True,
                 **options) -> PairSet:
    """LFW pairs from ``path`` (a ``pairs*.txt``, or a folder holding ``pairs.txt``).

    Images are ``root/<name>/<name>_%04d<ext>``; ``root`` defaults to an ``images``/``lfw``
    folder beside the pairs file, else the pairs file's folder.  ``options`` go to :class:`PairSet`.
    """
    path = Path(path)
    pairs_file = path / "pairs.txt" if path.is_dir() else path
    root = Path(root) if root is not None else _default_lfw_root(pairs_file)
    entries, issame, folds = parse_lfw_pairs(pairs_file)
    index = _Index()
    pairs = [[index(str(root / n / f"{n}_{i:04d}{ext}")) for n, i in ((a, i), (b, j))] for a, i, b, j in entries]
    if check_files:
        _check_files(index.images, pairs_file)
    return PairSet(name, index.images, np.asarray(pairs), issame, folds, read_image, **options)


def write_lfw_pairs(path, same: Sequence[Tuple[str, int, int]], diff: Sequence[Tuple[str, int, str, int]],
                    num_folds: Optional[int] = None) -> None:
    """Write an LFW pairs file: View 1 (``num_folds=None``: ``N`` header) or View 2 (``F<TAB>P``).

    For View 2, ``same`` and ``diff`` are split into ``num_folds`` equal consecutive blocks.
    """
    if len(same) != len(diff):
        raise ValueError("LFW pair files have as many same as different pairs")
    if num_folds is None:
        lines = [str(len(same))]
        blocks = [(same, diff)]
    else:
        per_fold, rest = divmod(len(same), num_folds)
        if rest:
            raise ValueError(f"{len(same)} pairs do not split into {num_folds} folds")
        lines = [f"{num_folds}\t{per_fold}"]
        blocks = [(same[f * per_fold:(f + 1) * per_fold], diff[f * per_fold:(f + 1) * per_fold])
                  for f in range(num_folds)]
    for block_same, block_diff in blocks:
        lines += ["\t".join(map(str, entry)) for entry in block_same]
        lines += ["\t".join(map(str, entry)) for entry in block_diff]
    Path(path).write_text("\n".join(lines) + "\n")


# -- insightface .bin ----------------------------------------------------------------------
def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, limited to latin-1."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _plain_dtype(spec, align=False, copy=False) -> np.dtype:
    """``numpy.dtype`` for booleans and numbers only (no object or structured dtypes)."""
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"refused numpy dtype {spec!r}")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"refused numpy dtype {dtype} (not boolean or numeric)")
    return dtype


def _plain_scalar(dtype, data: bytes):
    """numpy's ``scalar`` (e.g. a ``numpy.bool_`` in an ``issame`` list) for plain dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"refused numpy scalar of {dtype!r}")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _plain_frombuffer(buffer, dtype, shape, order):
    """numpy's ``_frombuffer`` (arrays in protocol-5 pickles) for plain dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"refused numpy array of {dtype!r}")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _ndarray_reconstruct(subtype, shape, dtype_code):
    """numpy's ``_reconstruct`` for plain ``ndarray`` only (no subclasses)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refused numpy array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


class BinUnpickler(pickle.Unpickler):
    """Unpickles insightface ``.bin`` files, admitting only the globals that format holds.

    Plain pickle opcodes build bytes, str, numbers, bools, lists, tuples and dicts without any
    global.  The globals admitted are ``_codecs.encode`` (bytes in protocol-2 pickles written by
    Python 3; latin-1 only), and numpy's ``_reconstruct`` / ``ndarray`` / ``dtype`` / ``scalar`` /
    ``_frombuffer`` (protocol 5) for arrays and scalars of booleans and numbers.  Anything else raises
    ``pickle.UnpicklingError("refused ...")`` naming it.
    """

    GLOBALS = {("_codecs", "encode"): _latin1_encode,
               ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): _plain_dtype,
               **{(f"{module}.multiarray", name): function for module in ("numpy.core", "numpy._core")
                  for name, function in (("_reconstruct", _ndarray_reconstruct), ("scalar", _plain_scalar))},
               **{(f"{module}.numeric", "_frombuffer"): _plain_frombuffer for module in ("numpy.core", "numpy._core")}}

    def find_class(self, module: str, name: str):
        """The admitted replacement of ``module.name``; anything else is refused."""
        try:
            return self.GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _bin_images(path: Path, bins) -> List[bytes]:
    if not isinstance(bins, (list, tuple)):
        raise DataError(path, f"not an insightface .bin: images are a {type(bins).__name__}, not a list")
    out = []
    for i, item in enumerate(bins):
        if isinstance(item, np.ndarray) and item.dtype == np.uint8:
            item = item.tobytes()
        if not isinstance(item, (bytes, bytearray)):
            raise DataError(path, f"not an insightface .bin: image {i} is a {type(item).__name__}, not bytes")
        out.append(bytes(item))
    return out


def _bin_issame(path: Path, issame) -> np.ndarray:
    values = np.asarray(issame) if isinstance(issame, (list, tuple, np.ndarray)) else None
    if values is not None and values.dtype.kind == "O" and all(
            isinstance(v, (bool, int, np.bool_, np.integer)) for v in values.ravel()):
        values = values.astype(bool)
    if values is None or (values.size and values.dtype.kind not in "biu"):
        raise DataError(path, f"not an insightface .bin: issame is not a list of booleans ({type(issame).__name__})")
    return values.astype(bool).reshape(-1)


def read_bin(path, trusted: Optional[bool] = None) -> Tuple[List[bytes], np.ndarray]:
    """Read an insightface ``.bin``: ``(encoded images, issame)``; checks ``2 * pairs`` images.

    Unpickled with :class:`BinUnpickler` unless ``trusted`` (or ``FACEKD_TRUST_PICKLES=1``);
    a file needing other globals raises :class:`DataError` naming the file and the global.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if pickles_trusted(trusted):
                content = pickle.load(handle, encoding="bytes")
            else:
                content = BinUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except pickle.UnpicklingError as error:
        if str(error).startswith("refused "):
            raise DataError(path, f"refused to load: an insightface .bin holds only bytes, lists, booleans and "
                                  f"plain arrays, but this file asks for {str(error)[len('refused '):]} (nothing "
                                  f"was run; for a file you trust, {TRUST_HINT})") from None
        raise DataError(path, f"not an insightface .bin pickle ({type(error).__name__}: {error})") from None
    except Exception as error:  # unpickling raises many types
        raise DataError(path, f"not an insightface .bin pickle ({type(error).__name__}: {error})") from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise DataError(path, f"not an insightface .bin: expected a pair (images, issame), got a "
                              f"{type(content).__name__}")
    bins, issame = _bin_images(path, content[0]), _bin_issame(path, content[1])
    if len(bins) != 2 * len(issame):
        raise DataError(path, f"{len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    return bins, issame


def write_bin(path, images: Sequence, issame: Sequence[bool], quality: int = 95) -> None:
    """Write an insightface ``.bin`` (images: uint8 RGB arrays, encoded as JPEG, or bytes)."""
    bins = [bytes(im) if isinstance(im, (bytes, bytearray)) else encode_image(im, ".jpg", quality) for im in images]
    with open(path, "wb") as handle:
        pickle.dump((bins, [bool(s) for s in issame]), handle, protocol=4)


def bin_pair_set(path, name: Optional[str] = None, num_folds: int = 10, **options) -> PairSet:
    """An insightface ``.bin`` verification set (e.g. ``lfw.bin``, ``agedb_30.bin``, ``cfp_fp.bin``)."""
    path = Path(path)
    bins, issame = read_bin(path)
    keys = [f"{path}#{i}" for i in range(len(bins))]
    lookup = dict(zip(keys, bins))

    def reader(key: str) -> np.ndarray:
        return decode_image(lookup[key], key)

    pairs = np.arange(len(bins)).reshape(-1, 2)
    options.setdefault("align", "none")
    return PairSet(name or path.stem, keys, pairs, issame, position_folds(len(issame), num_folds), reader,
                   **options)


# -- AgeDB-30 pair list ----------------------------------------------------------------------
_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "diff", "different"}


def parse_pair_list(path) -> Tuple[List[Tuple[str, str]], np.ndarray]:
    """Parse ``img1 img2 issame`` lines (whitespace or comma separated): ``(path pairs, issame)``."""
    path = Path(path)
    entries, issame = [], []
    for number, line in _content_lines(path):
        parts = [p for p in re.split(r"[,\s]+", line) if p]
        flag = parts[2].lower() if len(parts) == 3 else None
        if flag not in _TRUE and flag not in _FALSE:
            raise DataError(path, f"line {number}: expected 'img1 img2 issame', got {line!r}")
        entries.append((parts[0], parts[1]))
        issame.append(flag in _TRUE)
    if not entries:
        raise DataError(path, "no pairs")
    return entries, np.asarray(issame, dtype=bool)


def agedb_pair_set(path, name: str = "agedb_30", root=None, num_folds: int = 10, check_files: bool = True,
                   **options) -> PairSet:
    """AgeDB(-30) from a pair list (see the module doc); folds are ``num_folds`` consecutive blocks."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    entries, issame = parse_pair_list(path)
    index = _Index()
    pairs = [[index(str(root / a)), index(str(root / b))] for a, b in entries]
    if check_files:
        _check_files(index.images, path)
    return PairSet(name, index.images, np.asarray(pairs), issame, position_folds(len(issame), num_folds),
                   read_image, **options)


# -- CFP -------------------------------------------------------------------------------------
def _protocol_dir(path: Path) -> Path:
    for candidate in (path, path / "Protocol"):
        if (candidate / "Split").is_dir():
            return candidate
    raise DataError(path, "not a CFP folder (no Protocol/Split inside)")


def _cfp_list(path: Path) -> Dict[int, str]:
    mapping = {}
    for number, line in _content_lines(path):
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(path, f"line {number}: expected 'index path', got {line!r}")
        mapping[int(parts[0])] = os.path.normpath(path.parent / parts[1].strip())
    return mapping


def cfp_pair_set(path, protocol: str = "FP", name: Optional[str] = None, check_files: bool = True,
                 root=None, **options) -> PairSet:
    """CFP frontal-profile (``protocol='FP'``) or frontal-frontal (``'FF'``) from the official layout.

    ``path`` is the CFP folder (holding ``Protocol/`` and ``Data/``) or its ``Protocol/`` folder.
    ``root``: a folder of faces aligned beforehand with the layout of ``Data/Images``
    (``facekd align CFP/Data/Images ROOT``); the protocol's images are read from there instead.
    """
    protocol = protocol.upper()
    if protocol not in ("FP", "FF"):
        raise ValueError(f"protocol must be 'FP' or 'FF', got {protocol!r}")
    proto = _protocol_dir(Path(path))
    frontal = _cfp_list(proto / "Pair_list_F.txt")
    second = _cfp_list(proto / "Pair_list_P.txt") if protocol == "FP" else frontal
    if root is not None:
        images = os.path.normpath(proto.parent / "Data" / "Images")
        frontal, second = ({k: os.path.join(root, os.path.relpath(v, images)) for k, v in listing.items()}
                           for listing in (frontal, second))
    split_dir = proto / "Split" / protocol
    fold_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if not fold_dirs:
        raise DataError(split_dir, "no fold folders")
    index = _Index()
    pairs, issame, folds = [], [], []
    for fold, fold_dir in enumerate(fold_dirs):
        for file_name, same_flag in (("same.txt", True), ("diff.txt", False)):
            pair_file = fold_dir / file_name
            for number, line in _content_lines(pair_file):
                try:
                    i, j = (int(v) for v in line.split(","))
                    a, b = frontal[i], second[j]
                except (ValueError, KeyError):
                    raise DataError(pair_file, f"line {number}: expected 'i,j' with known image numbers, "
                                               f"got {line!r}") from None
                pairs.append([index(a), index(b)])
                issame.append(same_flag)
                folds.append(fold)
    if check_files:
        _check_files(index.images, proto)
    return PairSet(name or f"cfp_{protocol.lower()}", index.images, np.asarray(pairs), issame, folds, read_image,
                   **options)
