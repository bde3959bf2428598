"""bench/int8_accuracy_noise.py: the noise floor of an INT8 accuracy change on a pair list."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_script
from evaluation_fakes import structured_embeddings

noise_script = load_script("bench/int8_accuracy_noise.py")


def test_turned_keeps_each_face_s_cosine_exactly():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((50, 16)) * 3
    cosines = rng.uniform(0.9, 1.0, 50)
    out = noise_script.turned(embeddings, cosines, rng)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert np.allclose(np.linalg.norm(out, axis=1), 1)
    assert np.allclose(np.sum(out * unit, axis=1), cosines)
    # random directions: two draws differ
    assert not np.allclose(out, noise_script.turned(embeddings, cosines, rng))


def test_noise_report_of_identical_models_and_of_a_drifting_one():
    embeddings, issame = structured_embeddings(noise=1.2, seed=5)
    pairs = np.arange(len(embeddings)).reshape(-1, 2)
    same = noise_script.noise_report(embeddings, embeddings.copy(), issame, pairs, draws=5)
    assert same["decisions_changed"] == 0 and same["change_pt"] == 0
    assert same["cosine_min"] == pytest.approx(1.0)
    assert same["noise_change_std_pt"] == pytest.approx(0.0, abs=1e-9)     # a zero angle moves nothing
    drifted = embeddings + np.random.default_rng(1).normal(0, 0.3, embeddings.shape)
    report = noise_script.noise_report(embeddings, drifted, issame, pairs, draws=20)
    assert report["decisions_changed"] > 0 and report["cosine_min"] < 1
    assert report["noise_change_std_pt"] > 0
    assert report["noise_change_p5_pt"] <= report["noise_change_mean_pt"] <= report["noise_change_p95_pt"]
    assert 0 <= report["noise_within_0.3pt"] <= 1 and 0 <= report["noise_at_or_below_int8"] <= 1
