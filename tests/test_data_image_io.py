"""Image reading: formats, grey -> RGB, explicit channel order, errors naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facekd.data import decode_image, encode_image, read_image, write_image
from facekd.errors import DataError


def _pattern() -> np.ndarray:
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 200          # strong red: a swapped channel order would show up
    image[5:15, 10:20, 2] = 90
    return image


@pytest.mark.parametrize("ext", [".png", ".gif", ".bmp", ".ppm"])
def test_lossless_formats_round_trip_rgb(tmp_path, ext):
    image = _pattern()
    Image.fromarray(image).save(tmp_path / f"x{ext}")
    out = read_image(tmp_path / f"x{ext}")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    if ext == ".gif":  # palette quantisation: colours are close, not exact
        assert np.abs(out.astype(int) - image).max() <= 8
    else:
        np.testing.assert_array_equal(out, image)


def test_jpeg_is_rgb(tmp_path):
    Image.fromarray(_pattern()).save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    assert out.shape == (20, 30, 3)
    assert abs(int(out[0, 0, 0]) - 200) <= 6 and out[0, 0, 2] <= 6   # red stays in channel 0


@pytest.mark.parametrize("ext", [".pgm", ".png", ".jpg"])
def test_grey_becomes_three_equal_channels(tmp_path, ext):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (12, 1))
    Image.fromarray(grey, mode="L").save(tmp_path / f"g{ext}")
    out = read_image(tmp_path / f"g{ext}")
    assert out.shape == (12, 25, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    if ext != ".jpg":
        np.testing.assert_array_equal(out[..., 0], grey)


def test_encode_decode_and_atomic_write(tmp_path):
    image = _pattern()
    np.testing.assert_array_equal(decode_image(encode_image(image, ".png")), image)
    write_image(tmp_path / "sub" / "y.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "y.png"), image)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["y.png"]   # no temp file left


def test_corrupt_truncated_missing_and_empty_name_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match="bad.jpg") as info:
        read_image(bad)
    assert info.value.path == str(bad) and str(info.value).startswith(str(bad))

    data = encode_image((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8), ".jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.jpg"):
        read_image(truncated)

    with pytest.raises(DataError, match="missing.png.*does not exist"):
        read_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png: empty"):
        read_image(empty)
    with pytest.raises(DataError, match="record#7"):
        decode_image(b"garbage", "record#7")
