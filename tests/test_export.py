"""ONNX export, its checks, INT8 quantisation, the runtime API and the export/verify commands.

Small 56x56 MobileFaceNets with randomised BatchNorm statistics keep this fast and make
BatchNorm folding matter.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from facekd.cli import main
from facekd.config import ExperimentConfig, config_digest, to_dict
from facekd.errors import DataError
from facekd.export import (FaceEmbedder, Int8Options, ModelInputError, OnnxEmbedder, check_export, check_int8,
                           export_onnx, fold_batchnorm, quantize_int8, read_metadata, synthetic_faces)
from facekd.export.metadata import ExportMetadata
from facekd.models import MODELS
from facekd.preprocess import normalize_uint8

SIZE = 56   # the synthetic 112x112 faces are resized (or subsampled with ::2) to it
EMBEDDING = 64


def randomize_batchnorm(model: nn.Module, batch: torch.Tensor, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (so folding matters).

    The running statistics are measured on ``batch`` (a train-mode pass), then randomly scaled;
    weights and biases are random.  Fully random statistics would make the embeddings of all
    faces nearly parallel, and an export check on such a model would prove little.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        for norm in norms:
            norm.momentum = None              # cumulative average over the pass below
            norm.reset_running_stats()
        model.train()(batch)
        for norm in norms:
            def jitter(spread: float) -> torch.Tensor:
                return 1 + spread * (torch.rand(norm.num_features, generator=generator) - 0.5)
            norm.running_mean.mul_(jitter(0.5))
            norm.running_var.mul_(jitter(0.5))
            norm.weight.copy_(jitter(0.5))
            norm.bias.copy_(jitter(0.4) - 1)
    return model.eval()


def small_student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS.build("mobilefacenet", embedding_size=EMBEDDING, input_size=SIZE)
    return randomize_batchnorm(model, normalize_uint8(synthetic_faces(16, seed=5)[:, ::2, ::2]), seed)


def embed_torch(model: nn.Module, faces: np.ndarray) -> np.ndarray:
    from facekd.export.runtime import resize_faces

    with torch.no_grad():
        return model(normalize_uint8(resize_faces(faces, SIZE))).numpy()


@pytest.fixture(scope="module")
def student() -> nn.Module:
    return small_student()


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return synthetic_faces(64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, student):
    """A facekd training checkpoint of the student, with a verification threshold."""
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    config = ExperimentConfig()
    torch.save({"model_config": {"name": "mobilefacenet", "embedding_size": EMBEDDING, "input_size": SIZE,
                                 "params": {}},
                "state_dict": student.state_dict(), "config": to_dict(config),
                "verification": {"synthetic": {"threshold_mean": 1.2, "accuracy_mean": 0.9, "epoch": 3}},
                "best": {"name": "synthetic", "value": 0.9, "epoch": 3}}, path)
    return path, config_digest(config)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, student):
    """The student exported in both input formats: ``{format: path}``."""
    root = tmp_path_factory.mktemp("onnx")
    meta = ExportMetadata(model_name="mobilefacenet", config_digest="0123456789abcdef", threshold=0.4,
                          threshold_flip=True)
    paths = {}
    for fmt in ("float", "uint8"):
        paths[fmt] = str(root / f"student_{fmt}.onnx")
        export_onnx(student, paths[fmt], input_format=fmt, metadata=meta)
    return paths


# --------------------------------------------------------------------------- BatchNorm folding

def test_fold_batchnorm_mobilefacenet_is_equivalent(student):
    folded = fold_batchnorm(student)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    assert len(folded.folded_pairs) == sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
                                           for m in student.modules())
    assert ("linear", "bn") in {(p.layer, p.bn) for p in folded.folded_pairs}   # through the flatten
    assert any(isinstance(m, nn.BatchNorm2d) for m in student.modules())        # original untouched
    assert type(folded) is type(student) and hasattr(folded, "forward_features")
    x = normalize_uint8(synthetic_faces(5, seed=3)[:, ::2, ::2])
    with torch.no_grad():
        expected, actual = student(x), folded(x)
    # raw embeddings reach |values| ~ 30: compare them relative to their scale, and the
    # L2-normalised embeddings (what verification uses) absolutely
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
    torch.testing.assert_close(nn.functional.normalize(actual), nn.functional.normalize(expected),
                               atol=1e-5, rtol=0)


def test_fold_batchnorm_linear_and_unfoldable_pre_bn():
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(
        nn.BatchNorm2d(3),                                  # precedes a conv: must stay
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16)), torch.randn(16, 3, 6, 6))
    folded = fold_batchnorm(model)
    kinds = [type(m).__name__ for m in folded]
    assert kinds.count("BatchNorm2d") == 1 and "BatchNorm1d" not in kinds
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- export + checks

@pytest.mark.parametrize("fmt", ["float", "uint8"])
def test_export_passes_checks_at_batch_1_7_64(exported, student, faces, fmt):
    report = check_export(exported[fmt], student, faces, batch_sizes=(1, 7, 64))
    assert report.ok, str(report)
    assert report.checker_ok and report.opset >= 17 and report.dynamic_batch
    assert report.batchnorm_nodes == 0
    assert [b.batch_size for b in report.batches] == [1, 7, 64]
    assert all(b.min_cosine >= 0.9999 for b in report.batches)
    assert report.max_abs_diff < 1e-3 and "max |diff|" in str(report)
    proto = onnx.load(exported[fmt])
    graph_input = proto.graph.input[0]
    assert graph_input.name == "input" and graph_input.doc_string
    dtype = graph_input.type.tensor_type.elem_type
    assert dtype == (onnx.TensorProto.UINT8 if fmt == "uint8" else onnx.TensorProto.FLOAT)


def test_check_export_fails_for_a_different_model(exported, faces):
    from facekd.export import ExportCheckError

    with pytest.raises(ExportCheckError, match="failed its checks"):
        check_export(exported["float"], small_student(seed=1), faces[:8], batch_sizes=(1, 7))


@pytest.mark.parametrize("fmt", ["float", "uint8"])
def test_metadata_records_preprocessing_and_provenance(exported, fmt):
    props = {p.key: p.value for p in onnx.load(exported[fmt], load_external_data=False).metadata_props}
    assert props["facekd.input_size"] == str(SIZE)
    assert props["facekd.channel_order"] == "RGB"
    assert props["facekd.input_format"] == fmt
    assert props["facekd.input_layout"] == ("NHWC" if fmt == "uint8" else "NCHW")
    assert [float(v) for v in props["facekd.mean"].split(",")] == [0.5, 0.5, 0.5]
    assert [float(v) for v in props["facekd.std"].split(",")] == [0.5, 0.5, 0.5]
    assert props["facekd.embedding_size"] == str(EMBEDDING)
    assert props["facekd.config_digest"] == "0123456789abcdef"
    assert float(props["facekd.threshold"]) == pytest.approx(0.4)
    assert float(props["facekd.threshold_sqeuclidean"]) == pytest.approx(1.2)   # d = 2 - 2 cos
    assert props["facekd.bn_folded"] == "true"
    meta = read_metadata(exported[fmt])
    assert meta.input_size == SIZE and meta.embedding_size == EMBEDDING and meta.threshold == pytest.approx(0.4)


@pytest.mark.skipif(not os.environ.get("FACEKD_SLOW_TESTS"), reason="slow (~10-25 s); set FACEKD_SLOW_TESTS=1")
def test_dynamo_exporter_also_gives_a_dynamic_batch(tmp_path, student, faces):
    path = tmp_path / "dynamo.onnx"
    export_onnx(student, path, input_format="uint8", exporter="dynamo")
    assert check_export(path, student, faces, batch_sizes=(1, 7)).ok


# --------------------------------------------------------------------------- runtime

@pytest.mark.parametrize("fmt", ["float", "uint8"])
def test_onnx_embedder_follows_the_embedder_protocol(exported, student, faces, fmt):
    embedder = OnnxEmbedder(exported[fmt])
    batch = normalize_uint8(faces[:5, ::2, ::2])       # 56x56 normalised float tensor
    out = embedder(batch)
    assert out.shape == (5, EMBEDDING) and out.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(out, student(batch).numpy(), atol=1e-4)
    assert embedder.embedding_size == EMBEDDING and embedder.input_size == SIZE


def test_face_embedder_returns_unit_embeddings_matching_torch(exported, student, faces):
    embedder = FaceEmbedder(exported["uint8"], flip=False)
    out = embedder.embed_aligned(faces[:6])               # 112x112 faces, resized to 56 for the model
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    expected = embed_torch(student, faces[:6])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.min(np.sum(out * expected, axis=1)) >= 0.9999
    assert embedder.threshold == pytest.approx(0.4)
    assert FaceEmbedder(exported["uint8"]).flip is True      # the stored threshold was fitted with flip
    single = embedder.embed_aligned(faces[0])
    assert single.shape == (1, EMBEDDING)
    score, same = embedder.verify(single[0], out[0])
    assert score == pytest.approx(1.0, abs=1e-5) and same is True


def test_face_embedder_aligns_photos_with_the_aligner(exported, faces):
    class CentreAligner:                                  # stands in for MTCNN
        def align(self, image):
            h, w = image.shape[:2]
            return image[(h - 112) // 2:(h + 112) // 2, (w - 112) // 2:(w + 112) // 2] if h >= 112 else None

    embedder = FaceEmbedder(exported["float"], aligner=CentreAligner(), flip=False)
    photo = np.pad(faces[0], ((20, 20), (30, 30), (0, 0)))
    np.testing.assert_allclose(embedder.embed_photos([photo]), embedder.embed_aligned(faces[:1]), atol=1e-6)
    with pytest.raises(DataError, match="no face found"):
        embedder.embed_photos([np.zeros((50, 50, 3), np.uint8)])


def test_not_onnx_file_is_a_clear_error_naming_it(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    for make in (OnnxEmbedder, FaceEmbedder, read_metadata):
        with pytest.raises(DataError) as info:
            make(bogus)
        assert str(info.value).startswith(str(bogus)) and "not an ONNX model" in str(info.value)
    with pytest.raises(DataError, match="not found"):
        OnnxEmbedder(tmp_path / "missing.onnx")


def test_wrong_input_shape_or_dtype_is_a_clear_error(exported, faces):
    floating, uint8 = OnnxEmbedder(exported["float"]), OnnxEmbedder(exported["uint8"])
    with pytest.raises(ModelInputError, match=r"wrong input shape.*\[N, 3, 56, 56\]"):
        floating(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ModelInputError, match="wrong input dtype"):
        floating(np.zeros((2, 3, SIZE, SIZE), np.uint8))
    with pytest.raises(ModelInputError, match=r"wrong input dtype.*uint8 \[N, 56, 56, 3\]"):
        uint8.run(np.zeros((2, SIZE, SIZE, 3), np.float32))
    with pytest.raises(ModelInputError, match="wrong input shape"):
        uint8.run(np.zeros((2, 3, SIZE, SIZE), np.uint8))
    with pytest.raises(ModelInputError, match="must be uint8"):
        FaceEmbedder(exported["uint8"]).embed_aligned(faces[:2].astype(np.float32))
    with pytest.raises(ModelInputError, match="square"):
        FaceEmbedder(exported["uint8"]).embed_aligned(faces[:2, :100])


# --------------------------------------------------------------------------- INT8

def test_int8_quantization_reports_drift_and_accuracy(tmp_path, exported):
    from facekd.data.synthetic import synthetic_pair_set

    pair_set = synthetic_pair_set(num_pairs=40, num_folds=2, cache=True)
    out = tmp_path / "student_int8.onnx"
    report = check_int8(quantize_int8(exported["uint8"], out, synthetic_faces(32, seed=1),
                                      Int8Options(keep_float=("first", "last"))),
                        eval_faces=synthetic_faces(32, seed=2), pair_sets=[pair_set])
    assert report.drift is not None and report.drift.mean_cosine >= 0.9 and report.drift.faces == 32
    assert report.quantized_nodes > 0 and len(report.kept_float) == 2
    assert report.int8_mb < report.fp32_mb
    metrics = report.verification["synthetic"]
    assert 0.0 <= metrics["int8_accuracy"] <= 1.0 and "drop" in metrics
    assert "drift" in str(report) and "accuracy fp32" in str(report)
    meta = read_metadata(out)
    assert meta.quantization == "int8-qdq" and meta.input_size == SIZE and meta.threshold == pytest.approx(0.4)
    assert OnnxEmbedder(out).embed_uint8(synthetic_faces(7)[:, ::2, ::2]).shape == (7, EMBEDDING)


# --------------------------------------------------------------------------- commands

def test_export_command_writes_checked_fp32_and_int8(tmp_path, checkpoint, capsys):
    ckpt, digest = checkpoint
    out, report = tmp_path / "student.onnx", tmp_path / "report.json"
    code = main(["export", str(ckpt), "--out", str(out), "--int8", "--calib-count", "16",
                 "--keep-float", "first", "--report", str(report),
                 # a random-weight model drifts more under INT8 than a trained one
                 "--int8-min-cosine", "0.85"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("PASS") == 2 and "drift on 64 held-out faces" in printed
    meta = read_metadata(out)
    assert meta.config_digest == digest and meta.input_format == "uint8"
    assert meta.threshold == pytest.approx(1 - 1.2 / 2) and "synthetic" in meta.threshold_source
    data = json.loads(report.read_text())
    assert data["check"]["ok"] and data["int8_check"]["ok"]
    assert data["int8"]["drift"]["mean_cosine"] >= 0.9
    assert (tmp_path / "student_int8.onnx").is_file()


def test_a_centred_students_teacher_center_reaches_the_onnx_metadata(tmp_path, student):
    from facekd.export.onnx_export import load_checkpoint_model

    center = torch.nn.functional.normalize(torch.arange(1.0, EMBEDDING + 1), dim=0) * 0.9
    path = tmp_path / "centred.pt"
    torch.save({"model_config": {"name": "mobilefacenet", "embedding_size": EMBEDDING, "input_size": SIZE,
                                 "params": {}}, "state_dict": student.state_dict(), "teacher_center": center}, path)
    model, info = load_checkpoint_model(path)
    assert info.teacher_center == pytest.approx(center.tolist())
    out = tmp_path / "centred.onnx"
    export_onnx(model, out, metadata=info.metadata(model))
    assert read_metadata(out).teacher_center == pytest.approx(center.tolist())
    assert ExportMetadata.from_props(ExportMetadata().to_props()).teacher_center is None


def test_verify_command_prints_similarity_and_decision(tmp_path, exported, faces, capsys):
    from facekd.data.image_io import write_image

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_image(a, faces[0])
    write_image(b, faces[0])
    assert main(["verify", exported["uint8"], str(a), str(b), "--aligned"]) == 0
    printed = capsys.readouterr().out
    assert "similarity: 1.0000" in printed and "decision:   same person" in printed
    write_image(b, faces[40])
    assert main(["verify", exported["uint8"], str(a), str(b), "--aligned", "--threshold", "0.99999"]) == 0
    assert "different people" in capsys.readouterr().out


def test_verify_command_on_a_non_onnx_file_fails_clearly(tmp_path, faces, capsys):
    from facekd.data.image_io import write_image

    bogus, image = tmp_path / "weights.onnx", tmp_path / "a.png"
    bogus.write_text("not a model")
    write_image(image, faces[0])
    assert main(["verify", str(bogus), str(image), str(image), "--aligned"]) == 2
    assert f"{bogus}: not an ONNX model" in capsys.readouterr().err
