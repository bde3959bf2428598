"""A disk-backed store of teacher targets: ``[N, V, D]`` rows in one memory-mapped file.

The teacher embeds each sample's ``V`` images (a face and its mirror, or ``K`` fixed views)
once, into a file that every process maps (:class:`numpy.memmap`): the rows cost page cache,
not process memory, whatever ``N x V``, and a step reads only the rows of its batch.  Every
rank of a distributed run writes the rows it embedded straight into the file and reads the
rows its batches need; nothing is gathered.  The file is the build's progress too: a
completeness map says which rows are written, so a killed build resumes with the missing
rows only.

File layout (:data:`VERSION` 1):

===========  ===============================================================================
header       :data:`MAGIC`, then a JSON object padded with spaces to :data:`HEADER_BYTES`:
             ``version``, ``key`` (the teacher cache key: teacher, framing, data, views),
             ``dtype`` (``float16`` or ``float32``, little-endian) and ``shape`` ``[N, V, D]``
rows         ``N x V x D`` values (C order) from byte :data:`HEADER_BYTES`
done         ``N`` bytes after the rows: 1 where row ``i`` is written
===========  ===============================================================================

A byte per row, not a bit: ranks mark their rows concurrently, and a byte is the smallest unit
two processes can set without a read-modify-write race.  Rows are marked by :meth:`TargetStore.sync`,
after their values are flushed, so a set byte always means a written row.  A build syncs every
``partial_every_s`` seconds (default 60) and when it stops, not after every batch: a flush took
~12 ms per batch of 128 rows here, as long as a GPU teacher takes to embed them.

A file is created whole (header, then space for every row, allocated up front so that a full
disk fails at creation and not as a ``SIGBUS`` in the middle of a build) and renamed into
place, so a file under the store's name always has a complete header and its full size.  A
store whose magic, version, key, dtype, shape or size does not match is refused with a
:class:`~facekd.errors.DataError` naming the file: it is never overwritten or rebuilt
silently.  Processes that share a store must share its filesystem (one node, or a shared
filesystem across nodes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from facekd.errors import DataError
from facekd.fileio import atomic_path

#: the file's first bytes
MAGIC = b"FACEKD-TARGETS\n"
#: bumped when the layout changes
VERSION = 1
#: the header's size: the rows start on a page boundary
HEADER_BYTES = 4096
#: the row dtypes a store may hold
DTYPES = ("float16", "float32")

Shape = Tuple[int, int, int]


def _header(key: str, shape: Shape, dtype: str) -> bytes:
    text = json.dumps({"version": VERSION, "key": key, "dtype": dtype, "shape": [int(s) for s in shape]})
    header = MAGIC + text.encode() + b"\n"
    if len(header) > HEADER_BYTES:
        raise ValueError(f"target store header too long ({len(header)} bytes)")
    return header.ljust(HEADER_BYTES, b" ")


def rows_size(shape: Shape, dtype: str) -> int:
    """Bytes of ``shape`` rows of ``dtype``."""
    n, v, d = shape
    return n * v * d * np.dtype(dtype).itemsize


def file_size(shape: Shape, dtype: str) -> int:
    """Bytes of a store of ``shape`` rows of ``dtype``: header, rows and completeness map."""
    return HEADER_BYTES + rows_size(shape, dtype) + shape[0]


class TargetStore:
    """An open store: :attr:`rows` ``[N, V, D]`` and :attr:`done` ``[N]`` mapped from ``path``.

    :meth:`create` makes an empty one, :meth:`open` checks and maps an existing one (writable
    for a build, else copy-on-write: a stray write in this process never reaches the file).
    """

    def __init__(self, path: Path, key: str, shape: Shape, dtype: str, writable: bool) -> None:
        self.path, self.key, self.shape, self.dtype, self.writable = path, key, shape, dtype, writable
        mode = "r+" if writable else "c"
        self.rows = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode=mode, offset=HEADER_BYTES,
                              shape=shape)
        self.done = np.memmap(path, dtype=np.uint8, mode=mode, offset=HEADER_BYTES + rows_size(shape, dtype),
                              shape=(shape[0],))
        self._unsynced: List[np.ndarray] = []

    # ------------------------------------------------------------------ files
    @classmethod
    def create(cls, path: Union[str, os.PathLike], key: str, shape: Sequence[int], dtype: str = "float16") -> None:
        """Write an empty store (no row done) at ``path``, atomically; an existing file is replaced."""
        shape = tuple(int(s) for s in shape)
        if dtype not in DTYPES or len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"a target store holds [N, V, D] rows of {' or '.join(DTYPES)}, got {shape} {dtype}")
        with atomic_path(path, remove_stale=True) as tmp, open(tmp, "wb") as stream:
            stream.write(_header(key, shape, dtype))
            stream.flush()
            size = file_size(shape, dtype)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(stream.fileno(), 0, size)      # zeros: no row done
            stream.truncate(size)
            os.fsync(stream.fileno())

    @classmethod
    def open(cls, path: Union[str, os.PathLike], key: Optional[str] = None, shape: Optional[Sequence[int]] = None,
             dtype: Optional[str] = None, writable: bool = False) -> "TargetStore":
        """Map the store at ``path``; ``key``/``shape``/``dtype``, when given, must match its header.

        Raises:
            DataError: (one line naming ``path``) missing or unreadable, not a store, another
                version, another key, dtype or shape, or a size that does not match its header
                (truncated).
        """
        path = Path(path)
        try:
            with open(path, "rb") as stream:
                head = stream.read(HEADER_BYTES)
        except OSError as error:
            raise DataError(path, f"cannot read the teacher-target store ({error.strerror})") from None
        if not head.startswith(MAGIC):
            raise DataError(path, "not a facekd teacher-target store (bad magic); delete it to rebuild")
        try:
            header = json.loads(head[len(MAGIC):].decode())
            found: Tuple[Any, ...] = (int(header["version"]), str(header["key"]), str(header["dtype"]),
                                      tuple(int(s) for s in header["shape"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise DataError(path, f"unreadable teacher-target store header ({type(error).__name__}); "
                                  "delete it to rebuild") from None
        version, stored_key, stored_dtype, stored_shape = found
        if version != VERSION:
            raise DataError(path, f"teacher-target store version {version}, this facekd reads {VERSION}; "
                                  "delete it to rebuild")
        if stored_dtype not in DTYPES or len(stored_shape) != 3:
            raise DataError(path, f"teacher-target store of {stored_dtype} {list(stored_shape)}: not [N, V, D] "
                                  f"{' or '.join(DTYPES)}")
        expected = {"key": key, "dtype": dtype, "shape": None if shape is None else tuple(int(s) for s in shape)}
        for name, stored in (("key", stored_key), ("dtype", stored_dtype), ("shape", stored_shape)):
            if expected[name] is not None and expected[name] != stored:
                raise DataError(path, f"teacher-target store holds {name} {_short(stored)}, this run needs "
                                      f"{_short(expected[name])}; delete it to rebuild")
        size, needed = path.stat().st_size, file_size(stored_shape, stored_dtype)
        if size != needed:
            raise DataError(path, f"teacher-target store is {size} bytes, its header says {needed} "
                                  f"({list(stored_shape)} {stored_dtype}): truncated or damaged; delete it to rebuild")
        return cls(path, stored_key, stored_shape, stored_dtype, writable)

    # ------------------------------------------------------------------ rows
    def __len__(self) -> int:
        return self.shape[0]

    @property
    def complete(self) -> bool:
        """Every row is written."""
        return bool(self.done.all())

    def missing(self) -> np.ndarray:
        """Indices of the rows not written yet (ascending)."""
        return np.flatnonzero(self.done == 0)

    def write(self, indices: Sequence[int], values: Any) -> None:
        """Write rows ``indices`` (``[B, V, D]`` values, converted to the store's dtype); they count
        as done once :meth:`sync` has run."""
        if not self.writable:
            raise ValueError(f"{self.path}: opened read-only")
        indices = np.asarray(indices, dtype=np.int64)
        values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        self.rows[indices] = values.astype(self.rows.dtype)
        self._unsynced.append(indices)

    def sync(self) -> None:
        """Flush the rows written since the last sync to the file, then mark them done."""
        if not self._unsynced:
            return
        self.rows.flush()
        self.done[np.concatenate(self._unsynced)] = 1
        self.done.flush()
        self._unsynced.clear()

    def tensor(self) -> torch.Tensor:
        """All rows as a ``[N, V, D]`` tensor on the mapped file (no copy: reading a row reads the file)."""
        return torch.from_numpy(self.rows)


def _short(value: Any) -> str:
    text = str(list(value) if isinstance(value, tuple) else value)
    return text[:16] + "..." if len(text) > 19 else text
