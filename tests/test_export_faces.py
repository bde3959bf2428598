"""facekd.export.faces.faces_from_dir: aligned faces from a folder, a tree of folder links included."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facekd.errors import DataError
from facekd.export.faces import faces_from_dir


def write_face(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((112, 112, 3), value, np.uint8)).save(path)


def test_linked_identity_folders_are_read_once_and_loops_end(tmp_path):
    data = tmp_path / "data"
    write_face(data / "a" / "1.png", 10)
    write_face(data / "b" / "1.png", 20)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").symlink_to(data / "a")
    (tree / "b").symlink_to(data / "b")
    (tree / "b_again").symlink_to(data / "b")      # the same real folder twice
    (data / "a" / "loop").symlink_to(tree)         # a link back up: must not loop
    faces = faces_from_dir(tree)
    assert faces.shape == (2, 112, 112, 3)
    assert sorted(int(f[0, 0, 0]) for f in faces) == [10, 20]
    assert len(faces_from_dir(tree, count=1)) == 1


def test_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no usable face images"):
        faces_from_dir(tmp_path)
