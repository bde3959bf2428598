"""insightface/MXNet RecordIO (``train.rec`` + ``train.idx``) without mxnet.

File format (dmlc-core ``recordio``): each record is ``uint32 magic 0xced7230a``,
``uint32 lrecord`` (upper 3 bits: continuation flag, lower 29: length), the payload, zero
padding to a multiple of 4.  A payload containing the magic word at a 4-byte aligned
position is split there into parts (flags 1 = first, 2 = middle, 3 = last; the magic word
itself is dropped and restored on reading).  ``train.idx`` lines are ``key<TAB>byte offset``.

A payload (MXNet ``recordio.pack``) starts with ``IRHeader`` = struct ``'<IfQQ'``
(flag, label, id, id2); when ``flag > 0``, ``flag`` float32 labels follow (and ``label`` is
that array), then the encoded image.  insightface datasets start with a header record at
key 0 whose labels are ``(first identity record, end)``: images are keys ``1..label[0]-1``
and each identity record ``k`` in ``[label[0], label[1])`` holds ``(first image, end)``.
Datasets without that header record are read by scanning each image's own label.
"""
from __future__ import annotations

import logging
import os
import struct
from collections import namedtuple
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from facekd.data.base import FaceDataset
from facekd.data.image_io import decode_image, encode_image
from facekd.errors import DataError

LOG = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = "MXNet's image record header; ``label`` is a float, or a float32 array when ``flag > 0``."


def pack(header: IRHeader, payload: bytes = b"") -> bytes:
    """Serialise ``header`` + ``payload`` like ``mxnet.recordio.pack`` (array labels set ``flag``)."""
    label = header.label
    if np.ndim(label) == 0:
        head = struct.pack(_IR_FORMAT, 0, float(label), int(header.id), int(header.id2))
        return head + payload
    label = np.asarray(label, dtype=np.float32).ravel()
    head = struct.pack(_IR_FORMAT, len(label), 0.0, int(header.id), int(header.id2))
    return head + label.tobytes() + payload


def unpack(record: bytes, name: str = "<record>") -> Tuple[IRHeader, bytes]:
    """Split a payload into its :class:`IRHeader` and the remaining (image) bytes."""
    if len(record) < _IR_SIZE:
        raise DataError(name, f"record of {len(record)} bytes is shorter than its {_IR_SIZE}-byte header")
    flag, label, id1, id2 = struct.unpack_from(_IR_FORMAT, record)
    body = record[_IR_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DataError(name, f"record header announces {flag} labels but is only {len(record)} bytes")
        label = np.frombuffer(body, dtype=np.float32, count=flag).copy()
        body = body[4 * flag:]
    return IRHeader(flag, label, id1, id2), body


def pack_image(label: Union[float, Sequence[float]], image: Union[np.ndarray, bytes], id: int = 0,
               quality: int = 95, ext: str = ".jpg") -> bytes:
    """A record payload for one image: uint8 RGB arrays are encoded (JPEG by default), bytes kept."""
    data = image if isinstance(image, (bytes, bytearray)) else encode_image(image, ext, quality)
    return pack(IRHeader(0, label, id, 0), bytes(data))


class RecordIOWriter:
    """Write records (and optionally the ``.idx``) in the dmlc RecordIO format; a context manager."""

    def __init__(self, rec_path, idx_path=None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else None
        self._rec = open(self.rec_path, "wb")
        self._idx = open(self.idx_path, "w") if self.idx_path is not None else None
        self.count = 0

    def write(self, payload: bytes, key: Optional[int] = None) -> None:
        """Append one record; its ``key`` (default: the running count) goes to the index file."""
        key = self.count if key is None else int(key)
        offset = self._rec.tell()
        start = 0
        aligned_end = len(payload) // 4 * 4
        position = payload.find(_MAGIC_BYTES)
        while 0 <= position < aligned_end:
            if position % 4 == 0:
                self._write_part(1 if start == 0 else 2, payload[start:position])
                start = position + 4
                position = payload.find(_MAGIC_BYTES, start)
            else:
                position = payload.find(_MAGIC_BYTES, position + 1)
        self._write_part(0 if start == 0 else 3, payload[start:])
        if self._idx is not None:
            self._idx.write(f"{key}\t{offset}\n")
        self.count += 1

    def _write_part(self, cflag: int, data: bytes) -> None:
        if len(data) > _LENGTH_MASK:
            raise ValueError(f"record part of {len(data)} bytes is too long for RecordIO")
        self._rec.write(struct.pack("<II", MAGIC, (cflag << 29) | len(data)))
        self._rec.write(data)
        self._rec.write(b"\0" * (-len(data) % 4))

    def close(self) -> None:
        """Flush and close the files."""
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RecordIOReader:
    """Random access to the records of a ``.rec`` file by key.

    The keys come from the ``.idx`` file when there is one, else from a sequential scan
    (keys 0..N-1).  Opening checks that the last record is complete: a truncated file
    raises :class:`DataError`, or with ``strict=False`` its incomplete tail records are
    dropped with a warning.  Safe to use from forked or spawned DataLoader workers.
    """

    def __init__(self, rec_path, idx_path=None, strict: bool = True) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise DataError(self.rec_path, "record file does not exist")
        self.size = self.rec_path.stat().st_size
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        if idx_path is not None and Path(idx_path).is_file():
            self.idx_path: Optional[Path] = Path(idx_path)
            self.offsets = self._read_index(self.idx_path)
        else:
            self.idx_path = None
            self.offsets = self._scan()
        self.dropped_keys = self._check_tail(strict)

    # -- low-level reads ------------------------------------------------------------------
    def _pread(self, length: int, offset: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._pid = os.getpid()
        return os.pread(self._fd, length, offset)

    def _walk(self, offset: int, key, read_data: bool) -> Tuple[Optional[bytes], int]:
        """Read the (possibly multi-part) record at ``offset``; returns (payload or None, end offset)."""
        parts: List[bytes] = []
        while True:
            if offset >= self.size:
                where = f"listed in {self.idx_path} " if self.idx_path is not None and not parts else ""
                raise DataError(self.rec_path, f"record {key} {where}at byte {offset} is past the end of the "
                                               f"file ({self.size} bytes): truncated file or an index of another "
                                               f"file")
            head = self._pread(8, offset)
            if len(head) < 8:
                raise DataError(self.rec_path, f"truncated: record {key} at byte {offset} is cut off "
                                               f"(file has {self.size} bytes)")
            magic, lrecord = struct.unpack("<II", head)
            if magic != MAGIC:
                raise DataError(self.rec_path, f"record {key} at byte {offset}: bad magic {magic:#010x} (expected "
                                               f"{MAGIC:#010x}): not a RecordIO file, or the index does not match it")
            cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            end = offset + 8 + length + (-length % 4)
            if offset + 8 + length > self.size:
                raise DataError(self.rec_path, f"truncated: record {key} at byte {offset} needs "
                                               f"{length} bytes but the file has {self.size}")
            if read_data:
                parts.append(self._pread(length, offset + 8))
            offset = end
            if cflag in (0, 3):
                return (b"".join(parts) if read_data else None), end
            if read_data:
                parts.append(_MAGIC_BYTES)

    def _read_index(self, idx_path: Path) -> Dict[int, int]:
        offsets: Dict[int, int] = {}
        try:
            text = idx_path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(idx_path, f"not a readable RecordIO index ({error})") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                key, offset = line.split("\t") if "\t" in line else line.split()
                offsets[int(key)] = int(offset)
            except ValueError:
                raise DataError(idx_path, f"line {number}: expected 'key<TAB>offset', got {line!r}") from None
            if offsets[int(key)] < 0:
                raise DataError(idx_path, f"line {number}: negative offset {offset}")
        if not offsets:
            raise DataError(idx_path, "index file is empty")
        return offsets

    def _scan(self) -> Dict[int, int]:
        offsets: Dict[int, int] = {}
        offset = 0
        while offset < self.size:
            key = len(offsets)
            _, end = self._walk(offset, key, read_data=False)
            offsets[key] = offset
            offset = end
        if not offsets:
            raise DataError(self.rec_path, "record file is empty")
        return offsets

    def _check_tail(self, strict: bool) -> List[int]:
        dropped: List[int] = []
        for key, offset in sorted(self.offsets.items(), key=lambda item: -item[1]):
            try:
                self._walk(offset, key, read_data=False)
                break
            except DataError:
                if strict:
                    raise
                dropped.append(key)
        if dropped:
            LOG.warning("%s: truncated; dropped %d incomplete record(s)", self.rec_path, len(dropped))
            for key in dropped:
                del self.offsets[key]
            if not self.offsets:
                raise DataError(self.rec_path, "no complete record")
        return dropped

    # -- public ---------------------------------------------------------------------------
    @property
    def keys(self) -> List[int]:
        """The record keys, in index order."""
        return list(self.offsets)

    def read(self, key: int) -> bytes:
        """The payload of record ``key``."""
        try:
            offset = self.offsets[key]
        except KeyError:
            raise DataError(self.rec_path, f"no record with key {key}") from None
        return self._walk(offset, key, read_data=True)[0]

    def read_header(self, key: int) -> IRHeader:
        """Only the :class:`IRHeader` of record ``key`` (reads a few bytes)."""
        offset = self.offsets[key]
        head = self._pread(8 + 256, offset)
        if len(head) >= 8 + _IR_SIZE:
            magic, lrecord = struct.unpack_from("<II", head)
            flag = struct.unpack_from("<I", head, 8)[0]
            if magic == MAGIC and lrecord >> 29 == 0 and _IR_SIZE + 4 * flag <= min(len(head) - 8, lrecord):
                return unpack(head[8:8 + (lrecord & _LENGTH_MASK)], self._name(key))[0]
        return unpack(self.read(key), self._name(key))[0]

    def _name(self, key) -> str:
        return f"{self.rec_path}#{key}"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


def _first_label(label) -> float:
    return float(label) if np.ndim(label) == 0 else float(np.asarray(label).ravel()[0])


def _key_range(label, reader: RecordIOReader) -> Optional[Tuple[int, int]]:
    """``(first, end)`` from a record's two-value label when both are integers and ``end`` does not
    pass the last key + 1; else None (NaN, huge or fractional values never become a loop bound)."""
    values = np.asarray(label, dtype=np.float64).ravel()
    if len(values) < 2 or not np.isfinite(values[:2]).all() or (values[:2] != np.round(values[:2])).any():
        return None
    first, end = int(values[0]), int(values[1])
    if not 0 <= first <= end <= max(reader.offsets) + 1 or end - first > len(reader.offsets):
        return None
    return first, end


def _header_record(reader: RecordIOReader) -> Optional[Tuple[int, int]]:
    """``(first identity key, end)`` when record 0 is an insightface header record, else None."""
    if 0 not in reader.offsets:
        return None
    header, body = unpack(reader.read(0), reader._name(0))
    if header.flag < 2 or len(body) > 0:
        return None
    bounds = _key_range(header.label, reader)
    if bounds is None or not 1 <= bounds[0] or bounds[0] - 1 > len(reader.offsets):
        return None
    return bounds


def _integer_labels(raw: np.ndarray, path: Path) -> np.ndarray:
    """``raw`` labels as int64; :class:`DataError` naming ``path`` for NaN, infinite or huge ones."""
    raw = np.asarray(raw, dtype=np.float64)
    bad = ~np.isfinite(raw) | (np.abs(raw) > 2 ** 53)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} record label(s) are not integers (first: {raw[bad][0]!r})")
    return raw.astype(np.int64)


class RecordIODataset(FaceDataset):
    """An insightface ``train.rec``/``train.idx`` training set (no mxnet needed).

    ``path`` is a folder holding ``train.rec`` + ``train.idx`` (or a ``.rec`` file; its
    ``.idx`` is optional).  Labels are remapped to contiguous ``0..C-1``; ``classes`` holds the
    original label values as strings.  ``num_identities`` / ``images_per_identity`` keep the
    first N identities / images of each (0/None = all).  With ``skip_bad_images`` a truncated
    file loses its incomplete tail records (with a warning) instead of raising.
    """

    def __init__(self, path, input_size: int = 112, transform: Optional[Callable] = None,
                 skip_bad_images: bool = False, num_identities: Optional[int] = None,
                 images_per_identity: Optional[int] = None, fit: str = "none") -> None:
        super().__init__(input_size, transform, skip_bad_images)
        self.fit_mode = fit
        path = Path(path)
        rec = path / "train.rec" if path.is_dir() else path
        self.reader = RecordIOReader(rec, rec.with_suffix(".idx"), strict=not skip_bad_images)
        header = _header_record(self.reader)
        if header is not None:
            keys, raw = self._labels_from_identity_records(*header)
        else:
            keys = np.asarray(self.reader.keys, dtype=np.int64)
            raw = np.array([_first_label(self.reader.read_header(int(k)).label) for k in keys])
        values, labels = np.unique(_integer_labels(raw, self.reader.rec_path), return_inverse=True)
        keep = np.ones(len(keys), dtype=bool)
        if num_identities:
            keep &= labels < num_identities
        if images_per_identity:
            order = np.argsort(labels, kind="stable")
            rank = np.empty(len(labels), dtype=np.int64)
            starts = np.searchsorted(labels[order], labels[order])
            rank[order] = np.arange(len(labels)) - starts
            keep &= rank < images_per_identity
        self.keys = keys[keep]
        self.labels = labels[keep].astype(np.int64)
        count = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = [str(v) for v in values[:count]]
        self.has_header_record = header is not None

    def _labels_from_identity_records(self, start: int, end: int) -> Tuple[np.ndarray, np.ndarray]:
        keys, raw = [], []
        available = set(self.reader.offsets)
        for ordinal, key in enumerate(range(start, end)):
            if key not in available:
                continue  # dropped tail (truncated file, skip_bad_images)
            header, _ = unpack(self.reader.read(key), self.reader._name(key))
            bounds = _key_range(header.label, self.reader)
            if bounds is None:
                raise DataError(self.reader._name(key), f"identity record label {header.label!r} is not a "
                                                        "range of record keys")
            members = [k for k in range(*bounds) if k in available]
            keys.extend(members)
            raw.extend([ordinal] * len(members))
        if not keys:  # identity records missing: fall back to the images' own labels
            keys = [k for k in range(1, start) if k in available]
            raw = [_first_label(self.reader.read_header(k).label) for k in keys]
        return np.asarray(keys, dtype=np.int64), np.asarray(raw, dtype=np.float64)

    def _load(self, index: int) -> np.ndarray:
        key = int(self.keys[index])
        name = self.describe(index)
        _, body = unpack(self.reader.read(key), name)
        return decode_image(body, name)

    def describe(self, index: int) -> str:
        return self.reader._name(int(self.keys[index]))

    def _fingerprint_parts(self) -> Sequence[str]:
        stat = self.reader.rec_path.stat()
        index = ",".join(f"{k}:{self.reader.offsets[int(k)]}" for k in self.keys)
        return [self.reader.rec_path.name, str(stat.st_size), str(stat.st_mtime_ns), index]


def write_recordio(path, samples: Iterable[Tuple[Union[float, Sequence[float]], Union[np.ndarray, bytes]]],
                   header_record: bool = True, quality: int = 95) -> Tuple[Path, Path]:
    """Write ``(label, image)`` samples to ``path/train.rec`` + ``train.idx`` (insightface layout).

    ``label`` is a number or a sequence whose first value is the identity; ``image`` is
    uint8 RGB or encoded bytes.  With ``header_record`` the samples are grouped by identity
    and written as insightface does: header record 0, images from key 1, then one record
    per identity with its key range.  Returns the two paths.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rec, idx = path / "train.rec", path / "train.idx"
    samples = list(samples)
    with RecordIOWriter(rec, idx) as writer:
        if not header_record:
            for key, (label, image) in enumerate(samples):
                writer.write(pack_image(label, image, id=key, quality=quality), key)
            return rec, idx
        samples.sort(key=lambda s: _first_label(s[0]))  # stable: keeps order within an identity
        identities = sorted({_first_label(label) for label, _ in samples})
        first_identity_key = len(samples) + 1
        writer.write(pack(IRHeader(0, [first_identity_key, first_identity_key + len(identities)], 0, 0)), 0)
        ranges: Dict[float, List[int]] = {}
        for key, (label, image) in enumerate(samples, 1):
            writer.write(pack_image(label, image, id=key, quality=quality), key)
            ranges.setdefault(_first_label(label), []).append(key)
        for offset, identity in enumerate(identities):
            keys = ranges[identity]
            writer.write(pack(IRHeader(0, [keys[0], keys[-1] + 1], int(identity), 0)), first_identity_key + offset)
    return rec, idx
