"""Identity-folder datasets, bad-input handling, fingerprints, and build_train_dataset."""
from __future__ import annotations

import logging
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from facekd.data import (TRAIN_SOURCES, FolderDataset, SyntheticFaceGenerator, SyntheticFaces, build_train_dataset,
                         load_class_map, write_image)
from facekd.errors import ConfigError, DataError
from facekd.data.folders import images_under


@pytest.fixture()
def tree(tmp_path):
    """bob: 2 images, alice: 3 (one in a sub-folder), carol: 1; plus a non-image file."""
    generator = SyntheticFaceGenerator(0)
    root = tmp_path / "faces"
    layout = {"bob": ["1.png", "2.png"], "alice": ["a.png", "b.jpg", "more/c.png"], "carol": ["x.png"]}
    for identity, (name, files) in enumerate(layout.items()):
        for k, file in enumerate(files):
            write_image(root / name / file, generator(identity, k))
    (root / "alice" / "notes.txt").write_text("not an image")
    return root


def test_labels_classes_and_loading(tree):
    dataset = FolderDataset(tree)
    assert dataset.classes == ["alice", "bob", "carol"] and dataset.num_classes == 3
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 2] and dataset.labels.dtype == np.int64
    assert [p.relative_to(tree).as_posix() for p in dataset.paths] == [
        "alice/a.png", "alice/b.jpg", "alice/more/c.png", "bob/1.png", "bob/2.png", "carol/x.png"]
    np.testing.assert_array_equal(dataset.load(3), SyntheticFaceGenerator(0)(0, 0))   # bob was identity 0
    item = dataset[5]
    assert item["label"] == 2 and item["index"] == 5 and tuple(item["image"].shape) == (3, 112, 112)
    limited = FolderDataset(tree, num_identities=2, images_per_identity=1)
    assert limited.classes == ["alice", "bob"] and len(limited) == 2


def test_non_aligned_sizes(tree):
    write_image(tree / "bob" / "3.png", np.zeros((112, 92, 3), np.uint8))
    dataset = FolderDataset(tree)
    with pytest.raises(DataError, match=r"bob/3\.png: expected an aligned 112x112 face, got 92x112"):
        dataset.load(5)
    assert FolderDataset(tree, fit="resize").load(5).shape == (112, 112, 3)
    assert FolderDataset(tree, fit="center", input_size=64).load(5).shape == (64, 64, 3)


def test_orl_real_with_resize(shared_data):
    dataset = FolderDataset(shared_data / "orl", fit="resize")
    assert dataset.num_classes == 40 and len(dataset) == 400
    assert np.bincount(dataset.labels).tolist() == [10] * 40
    image = dataset.load(0)
    assert image.shape == (112, 112, 3) and (image[..., 0] == image[..., 2]).all()   # grey -> RGB


def test_empty_identity_folder(tree, caplog):
    (tree / "dave").mkdir()
    with pytest.raises(DataError, match="dave: identity folder contains no images") as info:
        FolderDataset(tree)
    assert info.value.path == str(tree / "dave")
    with caplog.at_level(logging.WARNING):
        dataset = FolderDataset(tree, skip_bad_images=True)
    assert dataset.classes == ["alice", "bob", "carol"] and dataset.skipped_identities == ["dave"]
    assert "dave" in caplog.text
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tree / "nowhere")


def test_corrupt_image_is_skipped_and_counted(tree, caplog):
    (tree / "alice" / "b.jpg").write_bytes(b"\xff\xd8\xff broken")
    strict = FolderDataset(tree)
    with pytest.raises(DataError, match=r"alice/b\.jpg"):
        strict[1]
    dataset = FolderDataset(tree, skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        item = dataset[1]
        again = dataset[1]
    assert item["index"] == 2 and item["label"] == 0          # next image of the same identity
    assert again["index"] == 2 and list(dataset.bad_images) == [1]
    assert caplog.text.count("b.jpg") == 1                    # warned once, with the path
    (tree / "carol" / "x.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="no readable image is left for identity 'carol'"):
        FolderDataset(tree, skip_bad_images=True)[5]


def test_fingerprint_reads_each_file_once_per_dataset(tree, monkeypatch):
    import facekd.data.folders as folders

    stamped = []
    real_stamp = folders.file_stamp
    monkeypatch.setattr(folders, "file_stamp", lambda path, root=None: stamped.append(path) or real_stamp(path, root))
    dataset = FolderDataset(tree)
    first = dataset.fingerprint()
    assert dataset.fingerprint() == first and len(stamped) == len(dataset)     # the second call reads nothing
    assert FolderDataset(tree).fingerprint() == first and len(stamped) == 2 * len(dataset)


def test_images_under_enters_linked_folders_only_when_asked(tmp_path):
    write_image(tmp_path / "real" / "x.png", SyntheticFaceGenerator(0)(0, 0))
    write_image(tmp_path / "id" / "a.png", SyntheticFaceGenerator(0)(0, 1))
    (tmp_path / "id" / "linked").symlink_to(tmp_path / "real")
    (tmp_path / "id" / "again").symlink_to(tmp_path / "real")
    assert images_under(tmp_path / "id") == [tmp_path / "id" / "a.png"]
    assert images_under(tmp_path / "id", follow_links=True) == [tmp_path / "id" / "a.png",
                                                                 tmp_path / "id" / "again" / "x.png"]


def test_fingerprint_tracks_the_files(tree, tmp_path):
    first = FolderDataset(tree).fingerprint()
    assert FolderDataset(tree).fingerprint() == first
    target = tree / "bob" / "2.png"
    write_image(target, SyntheticFaceGenerator(0)(0, 5))
    os.utime(target, ns=(1, 1))
    assert FolderDataset(tree).fingerprint() != first
    second = FolderDataset(tree).fingerprint()
    write_image(tree / "carol" / "y.png", SyntheticFaceGenerator(0)(2, 3))
    assert FolderDataset(tree).fingerprint() != second
    # by content: new modification times (a copy of the tree elsewhere, a touch) keep it
    third = FolderDataset(tree).fingerprint()
    copy = shutil.copytree(tree, tmp_path / "copy", copy_function=shutil.copyfile)
    os.utime(copy / "bob" / "2.png", ns=(7, 7))
    assert FolderDataset(copy).fingerprint() == third
    dataset = FolderDataset(tree)
    dataset.save_class_map(tmp_path / "map" / "classes.json")
    assert load_class_map(tmp_path / "map" / "classes.json") == ["alice", "bob", "carol"]


def test_build_train_dataset(tree):
    assert sorted(TRAIN_SOURCES) == ["folder", "recordio", "synthetic"]
    folder = build_train_dataset(SimpleNamespace(source="folder", root=str(tree), num_identities=1,
                                                 images_per_identity=1, seed=0, skip_bad_images=False,
                                                 input_size=112))
    assert isinstance(folder, FolderDataset) and len(folder) == 6     # synthetic-only sizes are ignored
    capped = build_train_dataset(SimpleNamespace(source="folder", root=str(tree), max_identities=1))
    assert capped.classes == ["alice"]
    synthetic = build_train_dataset(SimpleNamespace(source="synthetic", num_identities=7, images_per_identity=3,
                                                    seed=4, input_size=112))
    assert isinstance(synthetic, SyntheticFaces) and len(synthetic) == 21 and synthetic.generator.seed == 4
    default = build_train_dataset(SimpleNamespace())
    assert isinstance(default, SyntheticFaces) and default.num_classes == 200
    marker = object()
    assert build_train_dataset(SimpleNamespace(), transform=lambda image: marker)[0]["image"] is marker
    with pytest.raises(ConfigError, match="unknown data.source 'nope'"):
        build_train_dataset(SimpleNamespace(source="nope"))
    with pytest.raises(ConfigError, match="needs data.root"):
        build_train_dataset(SimpleNamespace(source="folder"))


def test_build_from_the_config_dataclass():
    config = pytest.importorskip("facekd.config")
    if not hasattr(config, "DataConfig"):
        pytest.skip("facekd.config has no DataConfig")
    cfg = config.DataConfig()
    dataset = build_train_dataset(cfg)
    assert isinstance(dataset, SyntheticFaces)
    assert dataset.num_classes == cfg.num_identities and len(dataset) == cfg.num_identities * cfg.images_per_identity
