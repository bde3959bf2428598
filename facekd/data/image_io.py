"""Reading images from disk or bytes into the package convention (uint8 RGB ``HxWx3``).

OpenCV decodes JPEG/PNG/PGM (and GIF where it can); Pillow is the fallback for anything
OpenCV refuses.  OpenCV returns BGR: the conversion to RGB here is explicit, once, so no
other module ever has to think about channel order.  Grey images become three equal
channels.  Every failure is a :class:`~facekd.errors.DataError` that starts with the file name.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np

from facekd.errors import DataError
from facekd.fileio import PathLike, atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".bmp", ".gif", ".webp")


def is_image_file(path: PathLike) -> bool:
    """True when ``path`` has one of the image extensions this module reads."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def _decode_with_pillow(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)  # first frame of an animated GIF
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes, name: PathLike = "<bytes>") -> np.ndarray:
    """Decode encoded image ``data`` to uint8 RGB ``HxWx3``.

    ``name`` is only used in the error message (a file name or a record key).
    Raises :class:`DataError` when the bytes are empty, truncated or not an image.
    """
    if not data:
        raise DataError(name, "empty image data")
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:
        rgb = _decode_with_pillow(data)
    except Exception as error:  # Pillow raises many types for bad data
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
