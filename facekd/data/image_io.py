"""Reading images from disk or bytes into the package convention (uint8 RGB ``HxWx3``).

OpenCV decodes JPEG/PNG/PGM (and GIF where it can); Pillow is the fallback for anything
OpenCV refuses.  OpenCV returns BGR: the conversion to RGB here is explicit, once, so no
other module ever has to think about channel order.  Grey images become three equal
channels.  Every failure is a :class:`~facekd.errors.DataError` that starts with the file name.

Hostile files are refused before decoding: an image whose header claims more than
:data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb: a few KB of PNG can claim 30000x30000,
2.7 GB decoded) is rejected from its header alone, and a JPEG cut off before its end marker
is "truncated" instead of being decoded half grey.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np

from facekd.errors import DataError
from facekd.fileio import PathLike, atomic_write_bytes

try:  # facekd reports unreadable images itself (DataError); OpenCV's warnings would be noise
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:  # pragma: no cover - OpenCV builds without the logging module
    pass

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".bmp", ".gif", ".webp")
#: largest image accepted, in pixels (width x height): 64 MP, ~190 MB as RGB; face photos are far
#: smaller.  Checked on the header before anything is decoded.
MAX_IMAGE_PIXELS = 64_000_000


def is_image_file(path: PathLike) -> bool:
    """True when ``path`` has one of the image extensions this module reads."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def _decode_with_pillow(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)  # first frame of an animated GIF
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def header_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from the image header (Pillow reads only the header), or None when
    Pillow does not recognise the format.  Beyond Pillow's own decompression-bomb limit only
    the pixel count is known: ``(pixels, 1)`` is returned."""
    from PIL import Image

    # sizes between Pillow's warning limit and ours never get decoded: the warning is noise
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError as error:
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        return (int(claimed.group(1)), 1) if claimed else None
    except Exception:  # not a format Pillow knows (OpenCV may still decode it)
        return None


def _jpeg_truncated(data: bytes) -> bool:
    """A JPEG whose last end-of-image marker (FFD9) does not follow its last start-of-scan (FFDA).

    Entropy-coded data never holds ``FF DA``/``FF D9`` (0xFF is stuffed as ``FF 00``), and an
    EXIF thumbnail's own markers come before the main image's scan, so this only fires when
    the main image is cut off.
    """
    return data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def check_image_header(data: bytes, name: PathLike = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse, before decoding, images larger than ``max_pixels`` and truncated JPEGs."""
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        claimed = f"{size[0]}x{size[1]} = " if size[1] > 1 else ""
        raise DataError(name, f"image header claims {claimed}{size[0] * size[1]:,} pixels, more than the "
                              f"{max_pixels:,} allowed; refused before decoding (decompression bomb?)")
    if _jpeg_truncated(data):
        raise DataError(name, f"truncated JPEG: the data ends after {len(data)} bytes without the end-of-image "
                              f"marker")


def decode_image(data: bytes, name: PathLike = "<bytes>", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image ``data`` to uint8 RGB ``HxWx3``.

    ``name`` is only used in the error message (a file name or a record key).
    Raises :class:`DataError` when the bytes are empty, truncated, not an image, or the header
    claims more than ``max_pixels`` pixels (checked before decoding).
    """
    if not data:
        raise DataError(name, "empty image data (0 bytes)")
    check_image_header(data, name, max_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:
        rgb = _decode_with_pillow(data)
    except Exception as error:  # Pillow raises many types for bad data
        from PIL import UnidentifiedImageError

        if isinstance(error, UnidentifiedImageError):
            raise DataError(name, f"not an image: neither OpenCV nor Pillow recognises the format "
                                  f"(starts with {bytes(data[:8])!r})") from None
        raise DataError(name, f"cannot decode image ({type(error).__name__}: {error})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise DataError(name, f"decoded to unexpected shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def read_image(path: PathLike) -> np.ndarray:
    """Read the image file ``path`` as uint8 RGB ``HxWx3`` (grey is expanded to RGB).

    Raises :class:`DataError` naming the file when it is missing, unreadable or corrupt.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except OSError as error:
        raise DataError(path, f"cannot read file ({error.strerror or error})") from None
    return decode_image(data, path)


def encode_image(image: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """Encode a uint8 RGB image to bytes (``.jpg``/``.png``); the inverse of :func:`decode_image`."""
    ext = ext if ext.startswith(".") else "." + ext
    params = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"cannot encode image of shape {image.shape} as {ext}")
    return buffer.tobytes()


def write_image(path: PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write a uint8 RGB image atomically (temporary file + rename); format from the extension."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(image, path.suffix or ".png", quality))
