"""Synthetic faces: determinism, alignment, separability, dataset and pair-set contracts.

Rendering speed is a benchmark, not a test: ``bench/train_throughput.py --synthetic generator``
reports it as the data pipeline's rate over the model step's, measured in one run.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from facekd.data import (ARCFACE_DST, HELD_OUT_OFFSET, FolderDataset, SyntheticFaceGenerator, SyntheticFaces,
                         load_class_map, synthetic_pair_set, write_synthetic_tree)


def test_rendering_is_deterministic():
    a, b = SyntheticFaceGenerator(0), SyntheticFaceGenerator(0)
    image, points = a.render(5, 3)
    a.render(9, 0)                                         # other calls in between change nothing
    again, points_again = b.render(5, 3)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(points, points_again)
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8 and points.shape == (5, 2)
    assert not np.array_equal(image, a(5, 4))              # another image of the identity
    assert not np.array_equal(image, a(6, 3))              # another identity
    assert not np.array_equal(image, SyntheticFaceGenerator(1)(5, 3))   # another seed


def test_faces_are_roughly_arcface_aligned():
    generator = SyntheticFaceGenerator(0)
    points = np.stack([generator.render(i, k)[1] for i in range(40) for k in range(3)])
    np.testing.assert_allclose(points.mean(0), ARCFACE_DST, atol=1.0)       # on average on the template
    spread = np.abs(points - ARCFACE_DST).mean(0)
    assert (spread > 1.0).all() and (spread < 5.0).all()                     # with per-image nuisance


def test_identities_are_separable_but_not_trivially():
    generator = SyntheticFaceGenerator(0)
    identities, per_identity = 20, 6
    images = np.stack([generator(i, k) for i in range(identities) for k in range(per_identity)])
    labels = np.repeat(np.arange(identities), per_identity)
    features = np.stack([cv2.resize(x, (28, 28), interpolation=cv2.INTER_AREA) for x in images])
    features = features.reshape(len(images), -1).astype(np.float32)
    features -= features.mean(1, keepdims=True)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    distance = np.linalg.norm(features[:, None] - features[None], axis=2)
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    intra, inter = distance[same].mean(), distance[labels[:, None] != labels[None]].mean()
    assert intra < 0.93 * inter, (intra, inter)
    np.fill_diagonal(distance, np.inf)
    nearest = (labels[distance.argmin(1)] == labels).mean()
    assert 3 / identities < nearest < 0.8, nearest      # well above chance on raw pixels, far from solved


def test_dataset_contract(tmp_path):
    dataset = SyntheticFaces(num_identities=5, images_per_identity=4, seed=2, identity_offset=10)
    assert len(dataset) == 20 and dataset.num_classes == 5
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [i // 4 for i in range(20)]
    assert dataset.classes[0] == "synth_0000010"
    np.testing.assert_array_equal(dataset.load(6), SyntheticFaceGenerator(2)(11, 2))
    item = dataset[6]
    assert tuple(item["image"].shape) == (3, 112, 112) and item["label"] == 1 and item["index"] == 6
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert SyntheticFaces(5, 4, seed=2, identity_offset=10, input_size=96).load(0).shape == (96, 96, 3)
    fingerprints = {SyntheticFaces(5, 4, 2, 10).fingerprint(), SyntheticFaces(5, 4, 3, 10).fingerprint(),
                    SyntheticFaces(5, 4, 2, 11).fingerprint(), SyntheticFaces(5, 5, 2, 10).fingerprint()}
    assert len(fingerprints) == 4 and dataset.fingerprint() in fingerprints
    dataset.save_class_map(tmp_path / "classes.json")
    assert json.loads((tmp_path / "classes.json").read_text())["num_classes"] == 5
    assert load_class_map(tmp_path / "classes.json") == dataset.classes


def test_pair_set_of_held_out_identities():
    pairs = synthetic_pair_set(seed=0)
    assert len(pairs) == 600 and int(pairs.issame.sum()) == 300 and pairs.num_folds == 10
    assert np.bincount(pairs.folds).tolist() == [60] * 10
    identity = np.array([int(key.split("/")[0]) for key in pairs.images])
    assert identity.min() >= HELD_OUT_OFFSET                                  # disjoint from training ids
    first, second = identity[pairs.pairs[:, 0]], identity[pairs.pairs[:, 1]]
    np.testing.assert_array_equal(first == second, pairs.issame)
    fold_ids = [set(identity[pairs.pairs[pairs.folds == f]].ravel()) for f in range(10)]
    assert all(not fold_ids[a] & fold_ids[b] for a in range(10) for b in range(a + 1, 10))
    same_images = pairs.pairs[pairs.issame]
    assert (same_images[:, 0] != same_images[:, 1]).all()                    # two different photos
    again = synthetic_pair_set(seed=0)
    assert again.images == pairs.images and np.array_equal(again.pairs, pairs.pairs)
    np.testing.assert_array_equal(pairs.load(7), again.load(7))
    assert pairs.load(0).shape == (112, 112, 3)
    small = synthetic_pair_set(num_pairs=40, num_folds=4, seed=1)
    assert len(small) == 40 and np.bincount(small.folds).tolist() == [10] * 4
    with pytest.raises(ValueError, match="multiple of num_folds"):
        synthetic_pair_set(num_pairs=55)


def test_write_synthetic_tree_reads_back_as_folders(tmp_path):
    root = write_synthetic_tree(tmp_path / "tree", num_identities=4, images_per_identity=3, seed=1, ext=".png")
    dataset = FolderDataset(root)
    assert dataset.classes == [f"synth_{k:07d}" for k in range(4)] and len(dataset) == 12
    np.testing.assert_array_equal(dataset.load(4), SyntheticFaceGenerator(1)(1, 1))
    lines = (root / "pairs.txt").read_text().splitlines()
    assert lines[0] == "10\t1" and len(lines) == 1 + 20
