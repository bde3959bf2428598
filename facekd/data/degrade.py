"""Low-resolution degradations: random ones for training, fixed ones for evaluation."""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

from facekd.data.image_io import decode_image, encode_image

INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                  "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


def _interp(name: str) -> int:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; known: {sorted(INTERPOLATIONS)}") from None


def degrade_to_size(image: np.ndarray, size: int, out_size: int = 112, interpolation: str = "area",
                    up_interpolation: str = "linear") -> np.ndarray:
    """Downsample ``image`` to ``size`` x ``size`` (``interpolation``), then back up to ``out_size``.

    Deterministic: the evaluation's "face at N pixels" probe.  ``size >= `` the image size
    only resizes to ``out_size``.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    small = image
    if size < max(image.shape[:2]):
        small = cv2.resize(image, (size, size), interpolation=_interp(interpolation))
    if small.shape[:2] == (out_size, out_size):
        return np.ascontiguousarray(small)
    return cv2.resize(small, (out_size, out_size), interpolation=_interp(up_interpolation))


class Degradation:
    """Random low-resolution degradation of an aligned face (deterministic for a given ``rng`` state).

    Steps: optional Gaussian blur (``blur_prob``, sigma in ``blur_sigma`` scaled to the
    downsampling factor), downsample to a random side in ``[min_size, max_size]`` with a
    random interpolation, optional Gaussian noise (``noise_prob``, std in ``noise_std``),
    optional JPEG (``jpeg_prob``, quality in ``jpeg_quality``), upsample to ``out_size``.
    Every call draws the same number of random values, so branches never shift the stream.
    """

    def __init__(self, min_size: int = 14, max_size: int = 56, out_size: int = 112, blur_prob: float = 0.3,
                 jpeg_prob: float = 0.3, noise_prob: float = 0.3, blur_sigma: Tuple[float, float] = (0.3, 1.0),
                 noise_std: Tuple[float, float] = (1.0, 8.0), jpeg_quality: Tuple[int, int] = (30, 90),
                 down_interpolations: Sequence[str] = ("area", "linear", "cubic"),
                 up_interpolations: Sequence[str] = ("linear", "cubic")) -> None:
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size, self.out_size = int(min_size), int(max_size), int(out_size)
        self.blur_prob, self.jpeg_prob, self.noise_prob = blur_prob, jpeg_prob, noise_prob
        self.blur_sigma, self.noise_std, self.jpeg_quality = blur_sigma, noise_std, jpeg_quality
        self.down = [_interp(n) for n in down_interpolations]
        self.up = [_interp(n) for n in up_interpolations]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Degrade uint8 RGB ``image``; returns uint8 RGB ``out_size`` x ``out_size``."""
        size = int(rng.integers(self.min_size, self.max_size + 1))
        draws = rng.random(3)
        sigma = rng.uniform(*self.blur_sigma)
        noise_std = rng.uniform(*self.noise_std)
        quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
        down = self.down[int(rng.integers(len(self.down)))]
        up = self.up[int(rng.integers(len(self.up)))]
        noise_seed = int(rng.integers(2 ** 31))

        out = image
        factor = max(image.shape[:2]) / size
        if draws[0] < self.blur_prob and factor > 1:
            out = cv2.GaussianBlur(out, (0, 0), sigma * factor / 2.0)
        if size < max(out.shape[:2]):
            out = cv2.resize(out, (size, size), interpolation=down)
        if draws[1] < self.noise_prob:
            noise = np.random.default_rng(noise_seed).normal(0.0, noise_std, out.shape)
            out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        if draws[2] < self.jpeg_prob:
            out = decode_image(encode_image(out, ".jpg", quality), "<jpeg degradation>")
        if out.shape[:2] != (self.out_size, self.out_size):
            out = cv2.resize(out, (self.out_size, self.out_size), interpolation=up)
        return np.ascontiguousarray(out)

    def __repr__(self) -> str:
        return (f"Degradation(size {self.min_size}..{self.max_size} -> {self.out_size}, blur {self.blur_prob}, "
                f"noise {self.noise_prob}, jpeg {self.jpeg_prob})")
