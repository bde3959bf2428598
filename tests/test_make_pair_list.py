"""bench/make_pair_list.py: balanced, seeded verification pairs from an identity-folder tree."""
from __future__ import annotations

import pytest

from facekd.data.pairs import agedb_pair_set

from conftest import load_script

pairs_script = load_script("bench/make_pair_list.py")


def tree(root, counts):
    for identity, count in counts.items():
        (root / identity).mkdir(parents=True)
        for k in range(count):
            (root / identity / f"{k:02d}.jpg").write_bytes(b"")
    return root


def test_pairs_are_balanced_alternating_distinct_and_seeded(tmp_path):
    root = tree(tmp_path / "faces", {"a": 4, "b": 3, "c": 1, "d": 2})
    identities = pairs_script.identity_images(root)
    assert identities["a"] == ["a/00.jpg", "a/01.jpg", "a/02.jpg", "a/03.jpg"] and identities["c"] == ["c/00.jpg"]
    pairs = pairs_script.sample_pairs(identities, 5, seed=3)
    assert [same for _, _, same in pairs] == [True, False] * 5
    assert len(set(pairs)) == 10
    for a, b, same in pairs:
        assert a != b and (a.split("/")[0] == b.split("/")[0]) == same
    assert pairs == pairs_script.sample_pairs(identities, 5, seed=3)
    assert pairs != pairs_script.sample_pairs(identities, 5, seed=4)
    with pytest.raises(ValueError, match="fewer than 50"):
        pairs_script.sample_pairs(identities, 50)


def test_written_list_reads_back_as_an_agedb_pair_set(tmp_path):
    root = tree(tmp_path / "faces", {"x": 3, "y": 3, "z": 3})
    out = tmp_path / "pairs.txt"
    assert pairs_script.main([str(root), "--pairs", "5", "--out", str(out)]) == 0
    pair_set = agedb_pair_set(out, name="seen", root=root)
    assert pair_set.issame.tolist() == [True, False] * 5
    assert len(pair_set.pairs) == 10 and all(p.startswith(str(root)) for p in pair_set.images)


def test_paths_with_spaces_are_refused(tmp_path):
    root = tree(tmp_path / "faces", {"a b": 2})
    with pytest.raises(ValueError, match="spaces"):
        pairs_script.identity_images(root)
