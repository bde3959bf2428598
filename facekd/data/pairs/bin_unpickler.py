"""The restricted unpickler of insightface ``.bin`` files: :class:`BinUnpickler` admits only
what the format holds — bytes, lists, tuples, bools and numbers, and plain numpy arrays (some
files keep ``issame`` or the images as arrays) — so a hostile file is refused, never executed.
"""
from __future__ import annotations

import pickle

import numpy as np


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
