"""Low-resolution degradations: determinism under a seed, output size, what they remove."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from facekd.data import Degradation, SyntheticFaceGenerator, degrade_to_size


@pytest.fixture(scope="module")
def face():
    return SyntheticFaceGenerator(0)(3, 1)


def _detail(image):
    return float(np.abs(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean())


def test_degradation_is_deterministic_for_a_seed(face):
    degrade = Degradation(min_size=14, max_size=56, blur_prob=0.5, jpeg_prob=0.5, noise_prob=0.5)
    outputs = [degrade(face, np.random.default_rng(seed)) for seed in range(8)]
    again = [degrade(face, np.random.default_rng(seed)) for seed in range(8)]
    for a, b in zip(outputs, again):
        np.testing.assert_array_equal(a, b)
        assert a.shape == (112, 112, 3) and a.dtype == np.uint8
    assert len({o.tobytes() for o in outputs}) == 8                      # seeds give different results
    assert all(_detail(o) < _detail(face) for o in outputs)              # high frequencies removed


def test_degradation_output_size_and_stream_independence(face):
    small = Degradation(min_size=10, max_size=20, out_size=64)
    assert small(face, np.random.default_rng(0)).shape == (64, 64, 3)
    # the same number of values is drawn whichever branches run
    never = Degradation(blur_prob=0, jpeg_prob=0, noise_prob=0)
    always = Degradation(blur_prob=1, jpeg_prob=1, noise_prob=1)
    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    never(face, rng_a)
    always(face, rng_b)
    assert rng_a.random() == rng_b.random()


def test_plain_degradation_equals_degrade_to_size(face):
    plain = Degradation(min_size=16, max_size=16, blur_prob=0, jpeg_prob=0, noise_prob=0,
                        down_interpolations=("area",), up_interpolations=("linear",))
    np.testing.assert_array_equal(plain(face, np.random.default_rng(0)), degrade_to_size(face, 16))


def test_degrade_to_size(face):
    out = degrade_to_size(face, 8)
    expected = cv2.resize(cv2.resize(face, (8, 8), interpolation=cv2.INTER_AREA), (112, 112),
                          interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, degrade_to_size(face, 8))
    np.testing.assert_array_equal(degrade_to_size(face, 112), face)     # full size: unchanged
    assert degrade_to_size(face, 28, out_size=56).shape == (56, 56, 3)
    details = [_detail(degrade_to_size(face, s)) for s in (14, 28, 56, 112)]
    assert details == sorted(details)                                   # more pixels, more detail
    with pytest.raises(ValueError, match="unknown interpolation"):
        degrade_to_size(face, 8, interpolation="magic")
