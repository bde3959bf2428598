"""Fuzzing every reader of untrusted input (issue 21): random and mutated bytes in, the project's
own error (or a valid result) out — never another exception, never a hang.

Each reader gets inputs derived from a small valid seed made here (a tiny JPEG/PNG, a pairs
file, a ``.bin``, a ``.rec``/``.idx``, a YAML config, an ONNX model, a checkpoint, an
embeddings ``.npz``): random byte strings, and the seed with a few bytes flipped, set,
inserted, deleted, duplicated or cut off.  Hypothesis runs derandomised with a fixed number
of examples (:data:`EXAMPLES`) and a per-example deadline, so the file takes well under a
minute on two cores; a hang fails as a deadline overrun.  :data:`CASES` counts the inputs
each reader saw (``python3 tests/test_fuzz_readers.py`` prints them and the outcomes;
docs/HOSTILE_INPUTS.md states the numbers of a run).
"""
from __future__ import annotations

import collections
import io
import pickle
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from facekd.errors import FaceKDError  # noqa: E402

#: examples per reader (cheap readers get more)
EXAMPLES = {"image": 1000, "pairs": 800, "bin": 800, "recordio": 800, "config": 800, "onnx": 500,
            "checkpoint": 500, "embeddings": 600}
#: inputs each reader saw in this process
CASES: Dict[str, int] = collections.Counter()
#: reader calls by outcome: ``(reader, "read")`` gave a valid result, ``(reader, "refused")`` facekd's error
OUTCOMES: Dict[tuple, int] = collections.Counter()


def fuzz_settings(reader: str):
    """Bounded, reproducible hypothesis settings for ``reader``."""
    return settings(max_examples=EXAMPLES[reader], deadline=5000, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


# --------------------------------------------------------------------------- mutations

@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """``seed`` with 1-6 random edits (flip a bit, set a byte, insert, delete, duplicate a span, truncate)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("flip", "set", "insert", "delete", "duplicate", "truncate")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from((0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255)))))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


def hostile(seed: bytes, max_random: int = 512):
    """Random bytes or a mutation of ``seed`` (mostly the latter: it reaches deeper)."""
    return st.one_of(st.binary(max_size=max_random), mutated(seed), mutated(seed), mutated(seed))


def hostile_text(seed: str):
    """Mutated text: byte mutations of ``seed`` (any encoding, even invalid UTF-8) or random text."""
    return st.one_of(hostile(seed.encode()), st.text(max_size=200).map(str.encode))


def outcome(reader: str, function: Callable[[], object]) -> object:
    """Run ``function``; the project's own error is fine (returned), any other exception fails the test."""
    try:
        result = function()
    except FaceKDError as error:
        assert str(error).strip(), f"{reader}: {type(error).__name__} without a message"
        OUTCOMES[reader, "refused"] += 1
        return error
    OUTCOMES[reader, "read"] += 1
    return result


def case(reader: str) -> None:
    """Count one fuzz input of ``reader``."""
    CASES[reader] += 1


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- seeds

@lru_cache(maxsize=None)
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="facekd-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _remove_fuzz_files():
    """The examples' files go once the module is done."""
    yield
    import shutil

    shutil.rmtree(workdir(), ignore_errors=True)
    workdir.cache_clear()


def tiny_face(seed: int = 0, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@lru_cache(maxsize=None)
def seed_images() -> Dict[str, bytes]:
    from PIL import Image

    from facekd.data.image_io import encode_image

    face = tiny_face()
    grey = io.BytesIO()
    Image.fromarray(face[..., 0]).save(grey, "PNG")
    return {"jpg": encode_image(face, ".jpg", 80), "png": encode_image(face, ".png"), "grey_png": grey.getvalue()}


LFW_PAIRS = "1\t2\nAlice\t1\t2\nBob\t1\t2\nAlice\t1\tBob\t2\nBob\t2\tAlice\t1\n"
AGEDB_PAIRS = "a/1.jpg b/1.jpg 1\na/2.jpg,b/2.jpg,0\n# comment\nc.jpg d.jpg same\n"
CFP_LIST = "1 ../Data/Images/001/frontal/01.jpg\n2 ../Data/Images/001/frontal/02.jpg\n"
CFP_SPLIT = "1,2\n2,1\n"
CONFIG = """_base_: base.yaml
model: {name: iresnet18, embedding_size: 32, input_size: 32, params: {width: [8, 16, 32, 64]}}
data: {source: synthetic, num_identities: 4, images_per_identity: 2}
train: {epochs: 1, identities_per_batch: 2, images_per_identity: 2, lr: 0.1}
losses: [{name: arcface, weight: 1.0, scale: 32.0, margin: 0.3}]
"""


@lru_cache(maxsize=None)
def seed_bin() -> bytes:
    images = [seed_images()["jpg"], seed_images()["png"]] * 2
    return pickle.dumps((images, [True, False]), protocol=4)


@lru_cache(maxsize=None)
def seed_recordio() -> Dict[str, bytes]:
    from facekd.data.recordio import write_recordio

    root = workdir() / "rec_seed"
    write_recordio(root, [(i // 2, tiny_face(i, 16)) for i in range(4)])
    return {"rec": (root / "train.rec").read_bytes(), "idx": (root / "train.idx").read_bytes()}


@lru_cache(maxsize=None)
def seed_onnx() -> bytes:
    """A 16x16 uint8 NHWC 'face model' with facekd metadata: Cast, Transpose, Conv, pool, Flatten."""
    from onnx import TensorProto, helper, numpy_helper

    from facekd.export.metadata import ExportMetadata

    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["embedding"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.UINT8,
                                                                            ["N", 16, 16, 3])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ExportMetadata(model_name="tiny", input_format="uint8", input_size=16, embedding_size=4, threshold=0.3)
    helper.set_model_props(model, meta.to_props())
    return model.SerializeToString()


@lru_cache(maxsize=None)
def seed_checkpoint() -> bytes:
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2))
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "epoch": 3, "best": {"name": "lfw", "value": 0.9},
                "model_config": {"name": "mobilefacenet", "embedding_size": 8, "input_size": 16, "params": {}}},
               buffer)
    return buffer.getvalue()


@lru_cache(maxsize=None)
def seed_embeddings() -> bytes:
    buffer = io.BytesIO()
    vectors = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.savez(buffer, keys=np.asarray(["a/1.jpg", "a/2.jpg", "b/1.jpg"]), embeddings=vectors,
             mirror_embeddings=vectors[::-1].copy())
    return buffer.getvalue()


def fresh(name: str) -> Path:
    """A new empty folder for one example (files of earlier examples never leak into it)."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir()))


# --------------------------------------------------------------------------- the readers

def check_image(result) -> None:
    if isinstance(result, np.ndarray):
        assert result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3 and result.size


@fuzz_settings("image")
@given(data=st.one_of(*(hostile(seed) for seed in seed_images().values())))
def test_fuzz_image_decoding(data):
    case("image")
    from facekd.data.image_io import decode_image, read_image

    check_image(outcome("image", lambda: decode_image(data, "fuzz.jpg")))
    path = write(fresh("image") / "fuzz.png", data)
    check_image(outcome("image", lambda: read_image(path)))


@fuzz_settings("pairs")
@given(lfw=hostile_text(LFW_PAIRS), agedb=hostile_text(AGEDB_PAIRS), cfp=hostile_text(CFP_LIST),
       split=hostile_text(CFP_SPLIT))
def test_fuzz_pair_files(lfw, agedb, cfp, split):
    case("pairs")
    from facekd.data.pairs import agedb_pair_set, cfp_pair_set, lfw_pair_set, parse_lfw_pairs

    root = fresh("pairs")
    lfw_file = write(root / "lfw" / "pairs.txt", lfw)
    outcome("pairs", lambda: parse_lfw_pairs(lfw_file))
    outcome("pairs", lambda: lfw_pair_set(lfw_file, check_files=True))
    outcome("pairs", lambda: agedb_pair_set(write(root / "agedb.txt", agedb), check_files=True))
    proto = root / "cfp" / "Protocol"
    write(proto / "Pair_list_F.txt", cfp)
    write(proto / "Pair_list_P.txt", cfp)
    write(proto / "Split" / "FP" / "01" / "same.txt", split)
    write(proto / "Split" / "FP" / "01" / "diff.txt", CFP_SPLIT.encode())
    outcome("pairs", lambda: cfp_pair_set(root / "cfp", "FP", check_files=True))


@fuzz_settings("bin")
@given(data=hostile(seed_bin()))
def test_fuzz_insightface_bin(data):
    case("bin")
    from facekd.data.pairs import bin_pair_set

    path = write(fresh("bin") / "fuzz.bin", data)
    pair_set = outcome("bin", lambda: bin_pair_set(path))
    if not isinstance(pair_set, FaceKDError):
        for index in range(len(pair_set.images)):
            face = outcome("bin", lambda: pair_set.load(index))
            if isinstance(face, np.ndarray):
                assert face.shape == (112, 112, 3)


@fuzz_settings("recordio")
@given(rec=hostile(seed_recordio()["rec"], 64), idx=st.one_of(st.just(seed_recordio()["idx"]),
                                                             hostile(seed_recordio()["idx"], 64)),
       with_index=st.booleans())
def test_fuzz_recordio(rec, idx, with_index):
    case("recordio")
    from facekd.data.recordio import RecordIODataset

    root = fresh("rec")
    write(root / "train.rec", rec)
    if with_index:
        write(root / "train.idx", idx)
    for skip in (False, True):
        dataset = outcome("recordio", lambda: RecordIODataset(root, input_size=16, skip_bad_images=skip))
        if isinstance(dataset, FaceKDError):
            continue
        assert len(dataset.labels) == len(dataset) and len(dataset.classes) == dataset.num_classes
        for index in range(min(len(dataset), 8)):
            face = outcome("recordio", lambda: dataset.load(index))
            if isinstance(face, np.ndarray):
                assert face.shape == (16, 16, 3) and face.dtype == np.uint8


@fuzz_settings("config")
@given(text=hostile_text(CONFIG), base=st.one_of(st.just(b"train: {epochs: 2}\n"), hostile_text("train: {epochs: 2}\n")))
def test_fuzz_config_yaml(text, base):
    case("config")
    from facekd.config import ExperimentConfig, load_config

    root = fresh("config")
    write(root / "base.yaml", base)
    config = outcome("config", lambda: load_config(write(root / "run.yaml", text)))
    if not isinstance(config, FaceKDError):
        assert isinstance(config, ExperimentConfig)


@fuzz_settings("onnx")
@given(data=hostile(seed_onnx()))
def test_fuzz_onnx_models(data):
    case("onnx")
    from facekd.export import FaceEmbedder, OnnxEmbedder
    from facekd.teachers.onnx_teacher import OnnxTeacher

    path = write(fresh("onnx") / "fuzz.onnx", data)
    face = tiny_face(1, 16)[None]
    embedder = outcome("onnx", lambda: OnnxEmbedder(path, threads=1))
    if not isinstance(embedder, FaceKDError):
        outcome("onnx", lambda: embedder.embed_uint8(face))
    deploy = outcome("onnx", lambda: FaceEmbedder(path, threads=1))
    if not isinstance(deploy, FaceKDError):
        outcome("onnx", lambda: deploy.embed_aligned(tiny_face(2, 16)))
    outcome("onnx", lambda: OnnxTeacher(str(path), threads=1))
    outcome("onnx", lambda: OnnxTeacher(str(path), backend="torch"))


@fuzz_settings("checkpoint")
@given(data=hostile(seed_checkpoint()))
def test_fuzz_checkpoints(data):
    case("checkpoint")
    import torch

    from facekd.models import load_pretrained, read_checkpoint

    path = write(fresh("ckpt") / "fuzz.pt", data)
    outcome("checkpoint", lambda: read_checkpoint(path))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2))
    outcome("checkpoint", lambda: load_pretrained(model, path, strict=True))
    outcome("checkpoint", lambda: load_pretrained(model, path, strict=False))


@fuzz_settings("embeddings")
@given(data=hostile(seed_embeddings()))
def test_fuzz_embeddings_npz(data):
    case("embeddings")
    from facekd.teachers.embeddings_teacher import EmbeddingsTeacher

    path = write(fresh("npz") / "fuzz.npz", data)
    teacher = outcome("embeddings", lambda: EmbeddingsTeacher(str(path)))
    if not isinstance(teacher, FaceKDError):
        rows = outcome("embeddings", lambda: teacher.lookup(["x/a/1.jpg"]))
        if not isinstance(rows, FaceKDError):
            assert tuple(rows.shape) == (1, 2, teacher.embedding_size)


def test_every_reader_was_fuzzed():
    """Runs last in this file: each reader saw its examples (``-k`` selections excepted)."""
    ran = {reader: CASES[reader] for reader in EXAMPLES if CASES[reader]}
    print("fuzz cases per reader:", dict(ran), file=sys.stderr)
    print("reader calls (read / refused):", {reader: (OUTCOMES[reader, "read"], OUTCOMES[reader, "refused"])
                                             for reader in ran}, file=sys.stderr)
    assert all(count > 0 for count in ran.values()), ran


if __name__ == "__main__":   # prints the counts (test_every_reader_was_fuzzed, with -s)
    raise SystemExit(pytest.main(["-q", "-p", "no:cacheprovider", "-s", __file__, *sys.argv[1:]]))
