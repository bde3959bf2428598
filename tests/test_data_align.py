"""Alignment geometry, MTCNN on real faces, and the resumable align_tree / `facekd align`."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from facekd.data import (ARCFACE_DST, FaceAligner, SyntheticFaceGenerator, align_tree, arcface_template,
                         center_crop, choose_face, estimate_similarity, read_align_log, read_image,
                         transform_points, warp_face, write_image)
from facekd.data.align import Detection

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def _similarity(angle_deg, scale, tx, ty):
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def _marker_image(points, shape=(260, 240)):
    """Black canvas with one coloured anti-aliased dot per landmark."""
    canvas = np.zeros(shape + (3,), np.uint8)
    for (x, y), colour in zip(points, COLOURS):
        cv2.circle(canvas, (int(round(x * 16)), int(round(y * 16))), 3 * 16, colour, -1, cv2.LINE_AA, 4)
    return canvas


def _marker_centroids(image, colours=COLOURS):
    """Intensity-weighted centroid of each colour's dot."""
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    img = image.astype(np.float64)
    found = []
    for colour in colours:
        on = np.array(colour) > 0
        weight = img[..., on].min(-1) - (img[..., ~on].max(-1) if (~on).any() else 0)
        weight = np.clip(weight, 0, None)
        found.append([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
    return np.array(found)


def test_template_scaling_and_margin():
    np.testing.assert_allclose(arcface_template(112), ARCFACE_DST)
    np.testing.assert_allclose(arcface_template(224), ARCFACE_DST * 2, rtol=1e-6)
    np.testing.assert_allclose(arcface_template(128), ARCFACE_DST + [8, 0], rtol=1e-6)
    shrunk = arcface_template(112, margin=8)
    np.testing.assert_allclose(shrunk, 56 + (ARCFACE_DST - 56) * (96 / 112), rtol=1e-6)


@pytest.mark.parametrize("method", ["umeyama", "lmeds"])
def test_estimate_similarity_recovers_known_transform(method):
    true = _similarity(17.0, 2.3, 40.5, -12.25)
    src = ARCFACE_DST.astype(np.float64)
    dst = transform_points(true, src)
    np.testing.assert_allclose(estimate_similarity(src, dst, method), true, atol=1e-4)


def test_warp_puts_known_landmarks_on_template():
    """Landmarks drawn as coloured dots on a rotated, scaled, shifted 'face' land on the template."""
    rng = np.random.default_rng(3)
    for angle, scale in [(25.0, 1.8), (-40.0, 0.7), (5.0, 3.0)]:
        placement = _similarity(angle, scale, 0, 0)
        points = transform_points(placement, ARCFACE_DST - ARCFACE_DST.mean(0)) + [120, 130]
        canvas = _marker_image(points)
        noisy = points + rng.uniform(-0.5, 0.5, points.shape)      # detector jitter
        aligned = warp_face(canvas, noisy)
        assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
        found = _marker_centroids(aligned)
        error = np.linalg.norm(found - ARCFACE_DST, axis=1)
        assert error[:2].max() < 2.0, error      # eyes within 2 px of the template
        assert error.max() < 2.0, error


def test_center_crop_geometry():
    image = np.zeros((250, 250, 3), np.uint8)
    cx, cy = 125.0, 125.0 - 0.026 * 250          # the crop centre with the default y shift
    cv2.circle(image, (int(cx * 16), int(cy * 16)), 4 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    out = center_crop(image)
    assert out.shape == (112, 112, 3)
    centre = _marker_centroids(np.repeat(out[..., :1], 3, axis=2) * np.array([1, 0, 0], np.uint8), COLOURS[:1])[0]
    np.testing.assert_allclose(centre, [55.5, 55.5], atol=1.0)
    # fraction 0.5 of a 200-px image keeps the central 100 px: a corner pixel of that window
    ramp = np.tile(np.arange(200, dtype=np.uint8), (200, 1))
    out = center_crop(np.dstack([ramp] * 3), fraction=0.5, size=100, y_shift=0.0)
    assert out[0, 0, 0] == 50 and out[0, -1, 0] == 149


def test_choose_face_prefers_large_central():
    small_central = Detection(np.array([90, 90, 110, 110], np.float32), 0.99, np.zeros((5, 2)))
    large_corner = Detection(np.array([0, 0, 40, 40], np.float32), 0.99, np.ones((5, 2)))
    large_central = Detection(np.array([60, 60, 140, 140], np.float32), 0.95, np.full((5, 2), 2.0))
    assert choose_face([small_central, large_corner, large_central], (200, 200)) is large_central
    assert choose_face([], (200, 200)) is None


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


def _real_faces(shared_data, count=4):
    lfw = sorted((shared_data / "lfw-view1" / "images").glob("*/*_0001.jpg"))[:count]
    orl = [shared_data / "orl" / f"s{k}" / "1.pgm" for k in range(1, count + 1)]
    return [p for p in lfw + orl if p.exists()]


def test_mtcnn_alignment_on_real_faces(shared_data, aligner):
    """Re-detecting landmarks on the aligned output finds the eyes on the template."""
    template = arcface_template()
    eye_errors, consistency = [], []
    for path in _real_faces(shared_data):
        image = read_image(path)
        points = aligner.landmarks(image)
        assert points is not None and points.shape == (5, 2), path
        aligned = warp_face(image, points)
        assert aligned.shape == (112, 112, 3)
        again = aligner.landmarks(aligned)
        assert again is not None, path
        eye_errors.extend(np.linalg.norm(again[:2] - template[:2], axis=1))
        warped = transform_points(estimate_similarity(points, template), points)
        consistency.extend(np.linalg.norm(again[:2] - warped[:2], axis=1))
    assert len(eye_errors) >= 12
    assert np.mean(eye_errors) < 3.0, eye_errors          # eyes within ~2-3 px of the template
    assert np.median(eye_errors) < 2.5, eye_errors
    assert np.max(consistency) < 4.0, consistency          # detect -> warp -> detect agrees
    assert aligner.align(np.zeros((120, 120, 3), np.uint8)) is None


def _make_photo_tree(root, shared_data_dir=None):
    """3 face photos (ORL copies when available, else synthetic faces on a larger canvas),
    a blank image without a face and a corrupt file."""
    faces = root / "src"
    if shared_data_dir is not None and (shared_data_dir / "orl").is_dir():
        for k in (1, 2, 3):
            target = faces / f"s{k}" / "1.pgm"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shared_data_dir / "orl" / f"s{k}" / "1.pgm", target)
    else:
        generator = SyntheticFaceGenerator(0)
        for k, identity in enumerate((0, 1, 3), 1):   # identities MTCNN detects (checked)
            canvas = np.full((180, 160, 3), 90, np.uint8)
            canvas[30:142, 24:136] = generator(identity, 0)
            write_image(faces / f"s{k}" / "1.png", canvas)
    write_image(faces / "s3" / "blank.png", np.full((120, 100, 3), 128, np.uint8))
    (faces / "s2" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return faces


@pytest.fixture()
def photo_tree(tmp_path, request):
    from tests.conftest import SHARED_DATA

    return _make_photo_tree(tmp_path, SHARED_DATA if SHARED_DATA.is_dir() else None)


def test_align_tree_counts_log_and_resume(tmp_path, photo_tree):
    dst = tmp_path / "aligned"
    report = align_tree(photo_tree, dst, workers=1, progress=False)
    assert report.total == 5
    assert report.no_face == ["s3/blank.png"]
    assert [rel for rel, _ in report.unreadable] == ["s2/corrupt.jpg"]
    assert report.aligned == 3 and report.existing == 0
    outputs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg"))
    assert outputs == ["s1/1.jpg", "s2/1.jpg", "s3/1.jpg"]
    assert all(read_image(dst / rel).shape == (112, 112, 3) for rel in outputs)
    log = read_align_log(report.log_path)
    assert log["counts"] == {"total": 5, "aligned": 3, "existing": 0, "center_fallback": 0, "no_face": 1,
                             "too_small": 0, "unreadable": 1, "retried": 0}
    assert log["no_face"] == ["s3/blank.png"] and log["unreadable"] == ["s2/corrupt.jpg"]

    before = {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")}
    again = align_tree(photo_tree, dst, workers=1, progress=False)
    assert again.existing == 3 and again.aligned == 0 and again.total == 5
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.jpg")} == before   # nothing rewritten

    centred = align_tree(photo_tree, tmp_path / "centred", no_face="center", ext=".png", progress=False,
                         workers=2, backend="thread")
    assert centred.aligned == 3 and centred.center_fallback == ["s3/blank.png"]
    blank = read_image(tmp_path / "centred" / "s3" / "blank.png")
    assert blank.shape == (112, 112, 3) and int(blank[56, 56, 0]) == 128
    for rel in outputs:   # thread workers give the same faces as the in-process run
        a = read_image(dst / rel).astype(int)
        b = read_image(tmp_path / "centred" / rel.replace(".jpg", ".png")).astype(int)
        assert np.abs(a - b).mean() < 3.0


def test_align_command_with_process_workers(tmp_path, photo_tree, capsys):
    from facekd.cli import main

    dst = tmp_path / "out"
    code = main(["align", str(photo_tree), str(dst), "--workers", "2", "--no-progress", "--margin", "4"])
    assert code == 0
    assert "aligned=3" in capsys.readouterr().out
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg")) == ["s1/1.jpg", "s2/1.jpg", "s3/1.jpg"]
    assert read_align_log(dst / "align_log.txt")["counts"]["no_face"] == 1


def _odd_mode_photos(face: np.ndarray) -> dict:
    """``face`` (uint8 RGB) encoded in the modes and formats cameras and editors write."""
    import io

    from PIL import Image

    image = Image.fromarray(face)

    def encoded(img, fmt):
        buffer = io.BytesIO()
        img.save(buffer, fmt)
        return buffer.getvalue()

    grey16 = Image.fromarray((face.mean(-1) * 257).astype(np.uint16))
    return {"grey.png": encoded(image.convert("L"), "PNG"), "rgba.png": encoded(image.convert("RGBA"), "PNG"),
            "palette.gif": encoded(image.convert("P"), "GIF"), "grey16.png": encoded(grey16, "PNG"),
            "cmyk.jpg": encoded(image.convert("CMYK"), "JPEG")}


def test_align_skips_too_small_photos_and_finishes_the_tree(tmp_path, photo_tree, capsys):
    """Issue 21: a 10x10 JPEG among real photos ended `facekd align` with MTCNN's
    'torch.cat(): expected a non-empty list of Tensors'; a re-run hit it again."""
    from facekd.cli import main
    from facekd.data.image_io import encode_image

    tiny = {"s1/tiny.jpg": (10, 10), "s1/pixel.jpg": (1, 1), "s2/row.png": (1, 300), "s2/column.jpg": (300, 1)}
    for rel, (height, width) in tiny.items():
        (photo_tree / rel).write_bytes(encode_image(np.full((height, width, 3), 120, np.uint8), rel[-4:]))
    face = read_image(next(p for p in sorted((photo_tree / "s1").iterdir()) if p.stem == "1"))
    for name, data in _odd_mode_photos(face).items():
        (photo_tree / "s3" / name).write_bytes(data)
    dst = tmp_path / "aligned"
    for _ in range(2):    # the re-run skips the same files again, without failing
        assert main(["align", str(photo_tree), str(dst), "--no-progress"]) == 0
        log = read_align_log(dst / "align_log.txt")
        assert sorted(log["too_small"]) == sorted(tiny)
        assert log["unreadable"] == ["s2/corrupt.jpg"]
        assert log["counts"]["total"] == 5 + len(tiny) + 5 and log["counts"]["too_small"] == 4
    assert "too_small=4" in capsys.readouterr().out
    assert "photo too small to hold a face: 300x1 px" in (dst / "align_log.txt").read_text()
    # every odd-mode copy of a detectable face decodes and aligns like the original
    assert log["counts"]["aligned"] + log["counts"]["existing"] - 3 + len(log["no_face"]) - 1 == 5
    assert sum(rel.startswith("s3/") and rel != "s3/blank.png" for rel in log["no_face"]) <= 1
    assert not any(dst.rglob("tiny.*")) and not any(dst.rglob("pixel.*"))


@pytest.mark.parametrize("shape", [(1, 1), (10, 10), (19, 400), (400, 19), (1, 2000), (20, 20), (21, 900)])
def test_aligner_never_fails_on_any_photo_shape(shape):
    aligner = FaceAligner()
    image = np.full(shape + (3,), 90, np.uint8)
    assert (aligner.unusable(image) is None) == (min(shape) >= 20)
    assert aligner.detect(image) == [] and aligner.align(image) is None
    assert "expected a uint8 RGB" in aligner.unusable(np.zeros(shape, np.uint8))


def test_real_photos_align_beside_a_tiny_one_and_verify_names_it(tmp_path, shared_data):
    """Real CelebA photos next to a 10x10 JPEG: the tree finishes with the real faces aligned,
    and the deployment API refuses the tiny photo by name while embedding the real ones."""
    from facekd.data.image_io import encode_image
    from facekd.errors import DataError
    from facekd.export import FaceEmbedder, export_onnx
    from facekd.models import MODELS

    photos = sorted((shared_data / "celeba-subset" / "07201").glob("*.jpg"))[:3]
    src = tmp_path / "src" / "07201"
    src.mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, src / photo.name)
    (src / "tiny.jpg").write_bytes(encode_image(np.full((10, 10, 3), 120, np.uint8), ".jpg"))
    report = align_tree(tmp_path / "src", tmp_path / "aligned", progress=False)
    assert report.total == 4 and [rel for rel, _ in report.too_small] == ["07201/tiny.jpg"]
    assert report.aligned + len(report.no_face) == 3 and report.aligned >= 2

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = MODELS.build("iresnet18", embedding_size=16, input_size=32, width=[8, 16, 32, 64]).eval()
    export_onnx(model, tmp_path / "model.onnx", input_format="uint8")
    embedder = FaceEmbedder(tmp_path / "model.onnx", threads=1)
    aligned = [src / rel.split("/")[1] for rel in sorted(p.relative_to(tmp_path / "aligned").as_posix()
                                                          for p in (tmp_path / "aligned").rglob("*.jpg"))]
    embeddings = embedder.embed_photos(aligned[:2])
    assert embeddings.shape == (2, 16) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    with pytest.raises(DataError) as info:
        embedder.embed_photos([aligned[0], src / "tiny.jpg"])
    assert str(info.value) == f"{src / 'tiny.jpg'}: photo too small to hold a face: 10x10 px, " \
                              "the smallest face searched for is 20 px"


def _tight_crops(root, shared_data_dir):
    """Photos whose face fills the frame: the central 30 % of LFW's 250 px images (12 people),
    or, without the shared data, generated 112 px faces with no border."""
    if shared_data_dir is not None and (shared_data_dir / "lfw-view1").is_dir():
        for path in sorted((shared_data_dir / "lfw-view1" / "images").glob("*/*_0001.jpg"))[:12]:
            image = read_image(path)
            side = int(image.shape[0] * 0.3)
            top = (image.shape[0] - side) // 2
            write_image(root / path.name.replace(".jpg", ".png"), image[top:top + side, top:top + side])
    else:
        generator = SyntheticFaceGenerator(0)
        for identity in range(6):
            write_image(root / f"face{identity}.png", generator(identity, 0))
    return root


def test_padding_finds_tight_crops_the_unpadded_run_drops(tmp_path):
    """Issue 34: tight crops (FairFace's 224 px, faces filling the frame) lose faces without a
    border.  Each extra pad is a retry, counted in the report and the log."""
    from tests.conftest import SHARED_DATA

    src = _tight_crops(tmp_path / "tight", SHARED_DATA if SHARED_DATA.is_dir() else None)
    total = len(list(src.iterdir()))
    bare = align_tree(src, tmp_path / "bare", pad=0.0, progress=False)
    padded = align_tree(src, tmp_path / "padded", pad=0.25, progress=False)
    both = align_tree(src, tmp_path / "both", pad=(0.0, 0.25), progress=False)
    assert bare.total == padded.total == both.total == total
    assert padded.aligned > bare.aligned and bare.retried == [] and padded.retried == []
    assert len(bare.no_face) == total - bare.aligned and bare.dropped == len(bare.no_face)
    # the retry rescues exactly what pad 0 drops and 0.25 finds
    rescued = sorted(set(bare.no_face) - set(padded.no_face))
    assert sorted(rel for rel, _ in both.retried) == rescued and rescued
    assert all(how == "pad=0.25" for _, how in both.retried)
    assert both.aligned == total - len(set(bare.no_face) & set(padded.no_face))
    log = read_align_log(both.log_path)
    assert log["counts"]["retried"] == len(rescued) and log["retried"] == both.retried
    # a resumed run skips every output and still counts the earlier retries
    again = align_tree(src, tmp_path / "both", pad=(0.0, 0.25), progress=False)
    assert again.existing == both.aligned and again.retried == both.retried
    # replicated borders are an option of their own
    replicate = align_tree(src, tmp_path / "replicate", pad=0.25, pad_mode="replicate", progress=False)
    assert replicate.total == total


def test_align_command_pad_options(tmp_path, capsys):
    from facekd.cli import main

    src = tmp_path / "src"
    write_image(src / "face.png", SyntheticFaceGenerator(0)(2, 0))     # found with a border only
    assert main(["align", str(src), str(tmp_path / "out"), "--pad", "0,0.25", "--no-progress"]) == 0
    assert "aligned=1" in capsys.readouterr().out
    assert read_align_log(tmp_path / "out" / "align_log.txt")["retried"] == [("face.png", "pad=0.25")]
    with pytest.raises(SystemExit):
        main(["align", str(src), str(tmp_path / "x"), "--pad", "0,-1"])
    with pytest.raises(ValueError, match="pad mode"):
        FaceAligner(pad_mode="mirror")
