"""insightface ``.bin`` verification sets (``lfw.bin``, ``agedb_30.bin``, ``cfp_fp.bin``): a pickle
of ``(list of encoded images, list of issame)``; pair ``i`` is images ``2i, 2i+1``; folds are 10
consecutive blocks (sklearn ``KFold`` without shuffle).  Read with the restricted
:class:`~facekd.data.pairs.bin_unpickler.BinUnpickler` (``FACEKD_TRUST_PICKLES=1`` lifts the
restriction for files you trust).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from facekd.data.image_io import decode_image, encode_image
from facekd.data.pairs.bin_unpickler import BinUnpickler
from facekd.data.pairs.pair_set import PairSet, position_folds
from facekd.errors import DataError
from facekd.fileio import TRUST_HINT, pickles_trusted


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
