"""Hostile inputs: each gives one clear line on stderr and exit code 2 from ``facekd``, never a
traceback or a hang.

Every case runs the real command line (``python -m facekd ...``) in a subprocess with a
timeout, on tiny inputs built here.  The same cases generate docs/HOSTILE_INPUTS.md::

    python3 tests/test_hostile_inputs.py docs/HOSTILE_INPUTS.md
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

from test_training import TINY_MODEL, write_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180           # a hang fails the test instead of blocking CI
NAMES = [f"person{i:02d}" for i in range(10)]


# --------------------------------------------------------------------------- building the inputs

def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header claims ``width`` x ``height``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def face_jpeg(seed: int) -> bytes:
    from facekd.data.image_io import encode_image

    rng = np.random.default_rng(seed)
    return encode_image((rng.random((112, 112, 3)) * 255).astype(np.uint8), ".jpg")


def write_lfw(root: Path) -> Path:
    """A 20-pair LFW View 1 tree (10 same, 10 different; 112x112 faces); returns pairs.txt."""
    for i, name in enumerate(NAMES):
        for j in (1, 2):
            path = root / "images" / name / f"{name}_{j:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(face_jpeg(10 * i + j))
    lines = ["10"] + [f"{n}\t1\t2" for n in NAMES] + [f"{a}\t1\t{b}\t2" for a, b in zip(NAMES, NAMES[1:] + NAMES[:1])]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root / "pairs.txt"


def lfw_with(root: Path, name: str, content: bytes) -> Path:
    """A copy of the base LFW tree whose first image is replaced by ``content``; returns that image."""
    tree = root / name
    shutil.copytree(root / "lfw", tree)
    image = tree / "images" / NAMES[0] / f"{NAMES[0]}_0001.jpg"
    image.write_bytes(content)
    return image


def write_checkpoints(root: Path) -> None:
    import torch

    from facekd.models import MODELS

    torch.manual_seed(0)
    model = MODELS.build(TINY_MODEL["name"], embedding_size=32, input_size=32, **TINY_MODEL["params"])
    torch.save({"model_config": TINY_MODEL, "state_dict": model.state_dict()}, root / "model.pt")
    from facekd.export import export_onnx

    export_onnx(model.eval(), root / "face_model.onnx", input_format="uint8")
    torch.save(model.state_dict(), root / "r18_backbone.pth")
    data = (root / "model.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (root / "empty.pt").write_bytes(b"")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_pickles(root: Path) -> None:
    import pickle

    import torch

    torch.save({"state_dict": {}, "x": _RunsCode(root / "MARKER_pt")}, root / "runs_code.pt")
    with open(root / "runs_code.bin", "wb") as handle:
        pickle.dump(([b"a", b"b"], [_RunsCode(root / "MARKER_bin")]), handle, protocol=4)
    with open(root / "bad_image.bin", "wb") as handle:
        pickle.dump(([face_jpeg(i) for i in range(19)] + [b"not an image"], [i % 2 == 0 for i in range(10)]), handle)


def write_recordio(root: Path) -> None:
    from facekd.data.recordio import write_recordio as write

    samples = [(i // 4, face_jpeg(i)) for i in range(16)]
    for name in ("rec_bad_magic", "rec_index_past_end"):
        write(root / name, samples)
    rec = root / "rec_bad_magic" / "train.rec"
    rec.write_bytes(b"\x00\x11\x22\x33" + rec.read_bytes()[4:])
    size = (root / "rec_index_past_end" / "train.rec").stat().st_size
    with open(root / "rec_index_past_end" / "train.idx", "a") as handle:
        handle.write(f"99\t{size + 4096}\n")


def write_configs(root: Path) -> None:
    write_config(root / "wrong_types.yaml", root / "runs" / "wrong_types", train={"epochs": "many"})
    write_config(root / "resume.yaml", root / "runs" / "resume")
    write_config(root / "init_other_arch.yaml", root / "runs" / "init_other_arch", init_from=str(root / "model.pt"),
                 model={**TINY_MODEL, "embedding_size": 16})
    write_config(root / "init_missing.yaml", root / "runs" / "init_missing", init_from=str(root / "no_such.pt"))
    (root / "not_yaml.yaml").write_text("model: {name: iresnet18\ntrain: [unclosed\n")
    (root / "cut_off_results.json").write_text('{"schema": "facekd.eval/1", "models": [')
    for name in ("rec_bad_magic", "rec_index_past_end"):
        write_config(root / f"{name}.yaml", root / "runs" / name,
                     data={"source": "recordio", "root": str(root / name), "skip_bad_images": False})


def write_onnx_not_a_face_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "not_a_face_model",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def build_inputs(root: Path) -> Path:
    """Every input the cases use, under ``root``."""
    write_lfw(root / "lfw")
    write_checkpoints(root)
    write_pickles(root)
    write_recordio(root)
    write_configs(root)
    write_onnx_not_a_face_model(root / "not_a_face.onnx")
    from facekd.data.image_io import encode_image

    png = encode_image(np.zeros((112, 112, 3), np.uint8), ".png")
    jpeg = face_jpeg(1)
    for name, content in {"zero_byte": b"", "truncated_jpeg": jpeg[: len(jpeg) // 2],
                          "truncated_png": png[: len(png) // 2], "huge_header": png_claiming(30000, 30000),
                          "not_an_image": b"#!/bin/sh\necho this is a shell script\n",
                          "tiny_photo": encode_image(np.full((10, 10, 3), 128, np.uint8), ".jpg")}.items():
        lfw_with(root, f"lfw_{name}", content)
    missing = root / "lfw_missing"
    shutil.copytree(root / "lfw", missing)
    (missing / "pairs.txt").write_text((missing / "pairs.txt").read_text().replace(f"{NAMES[3]}\t1\t2",
                                                                                   "Nobody_Here\t1\t2"))
    shutil.copyfile(root / "lfw" / "images" / NAMES[0] / f"{NAMES[0]}_0001.jpg", root / "face.jpg")
    (root / "one_pixel.jpg").write_bytes(encode_image(np.full((1, 1, 3), 200, np.uint8), ".jpg"))
    (root / "one_row.png").write_bytes(encode_image(np.full((1, 300, 3), 200, np.uint8), ".png"))
    return root


# --------------------------------------------------------------------------- the cases

def eval_on(val: str, model: str = "path={root}/model.pt") -> List[str]:
    return ["eval", "--model", model, "--val", val, "--out", "{root}/results.json", "--sizes", "none",
            "--latency-runs", "0", "--no-progress", "--workers", "1"]


@dataclass(frozen=True)
class Case:
    """One hostile input: what it is, the command run on it, what the message must name."""
    id: str
    input: str
    argv: Sequence[str]                  # ``{root}`` is replaced by the inputs folder
    names: str                           # the path the message must name (``{root}``-relative)
    problem: Sequence[str]               # words the message must contain


LFW_IMAGE = "{root}/lfw_%s/images/person00/person00_0001.jpg"
CASES = [
    Case("zero_byte_image", "zero-byte image in an LFW tree", eval_on("lfw:{root}/lfw_zero_byte/pairs.txt"),
         LFW_IMAGE % "zero_byte", ["empty image data"]),
    Case("truncated_jpeg", "JPEG cut in half", eval_on("lfw:{root}/lfw_truncated_jpeg/pairs.txt"),
         LFW_IMAGE % "truncated_jpeg", ["truncated JPEG"]),
    Case("truncated_png", "PNG cut in half", eval_on("lfw:{root}/lfw_truncated_png/pairs.txt"),
         LFW_IMAGE % "truncated_png", ["truncated"]),
    Case("huge_header", "PNG of 83 bytes whose header claims 30000x30000 (decompression bomb)",
         eval_on("lfw:{root}/lfw_huge_header/pairs.txt"), LFW_IMAGE % "huge_header",
         ["900,000,000 pixels", "refused before decoding"]),
    Case("not_an_image", "shell script named .jpg", eval_on("lfw:{root}/lfw_not_an_image/pairs.txt"),
         LFW_IMAGE % "not_an_image", ["not an image"]),
    Case("tiny_photo", "10x10 JPEG in an LFW tree (MTCNN alignment)", eval_on("lfw:{root}/lfw_tiny_photo/pairs.txt"),
         LFW_IMAGE % "tiny_photo", ["photo too small to hold a face", "10x10 px"]),
    Case("verify_one_pixel_photo", "1x1 JPEG photo", ["verify", "{root}/face_model.onnx", "{root}/one_pixel.jpg",
                                                      "{root}/face.jpg"],
         "{root}/one_pixel.jpg", ["photo too small to hold a face", "1x1 px"]),
    Case("verify_aligned_not_square", "1x300 PNG given as an aligned face",
         ["verify", "{root}/face_model.onnx", "{root}/face.jpg", "{root}/one_row.png", "--aligned"],
         "{root}/one_row.png", ["square aligned face", "300x1 px"]),
    Case("pairs_missing_image", "pairs.txt naming a person without images", eval_on("lfw:{root}/lfw_missing/pairs.txt"),
         "{root}/lfw_missing/images/Nobody_Here/Nobody_Here_0001.jpg", ["does not exist"]),
    Case("bin_bad_image", "insightface .bin whose last image is not an image", eval_on("bin:{root}/bad_image.bin"),
         "{root}/bad_image.bin#19", ["not an image"]),
    Case("bin_runs_code", "insightface .bin whose unpickling would run os.system",
         eval_on("bin:{root}/runs_code.bin"), "{root}/runs_code.bin", ["refused to load", "posix.system"]),
    Case("rec_bad_magic", "train.rec whose first record has a bad magic",
         ["train-teacher", "--config", "{root}/rec_bad_magic.yaml"], "{root}/rec_bad_magic/train.rec",
         ["bad magic 0x33221100"]),
    Case("rec_index_past_end", "train.idx listing an offset past the end of train.rec",
         ["train-teacher", "--config", "{root}/rec_index_past_end.yaml"], "{root}/rec_index_past_end/train.rec",
         ["past the end of the file"]),
    Case("config_wrong_types", "config with train.epochs: many",
         ["train-teacher", "--config", "{root}/wrong_types.yaml"], "{root}/wrong_types.yaml",
         ["train.epochs must be int", "'many'"]),
    Case("config_not_yaml", "config that is not valid YAML", ["train-teacher", "--config", "{root}/not_yaml.yaml"],
         "{root}/not_yaml.yaml", ["not valid YAML"]),
    Case("resume_not_a_training_checkpoint", "--resume from a backbone-only checkpoint",
         ["train-teacher", "--config", "{root}/resume.yaml", "--resume", "{root}/model.pt"], "{root}/model.pt",
         ["not a facekd training checkpoint"]),
    Case("init_from_other_arch", "init_from: a checkpoint of another architecture",
         ["train-teacher", "--config", "{root}/init_other_arch.yaml"], "{root}/model.pt",
         ["init_from needs this run's architecture", "embedding_size: student 16, checkpoint 32"]),
    Case("init_from_missing", "init_from: a checkpoint file that does not exist",
         ["train-teacher", "--config", "{root}/init_missing.yaml"], "{root}/init_missing.yaml",
         ["init_from:", "no such checkpoint file"]),
    Case("results_not_json", "results JSON cut off",
         ["report", "{root}/cut_off_results.json", "--out", "{root}/report"], "{root}/cut_off_results.json",
         ["not a readable results JSON"]),
    Case("onnx_not_a_face_model", "ONNX model with a 2-d input (not an image model)",
         ["verify", "{root}/not_a_face.onnx", "{root}/face.jpg", "{root}/face.jpg", "--aligned"],
         "{root}/not_a_face.onnx", ["not a face embedder: expected an image input"]),
    Case("checkpoint_other_arch", "IResNet-18 state dict exported as MobileFaceNet",
         ["export", "{root}/r18_backbone.pth", "--arch", "mobilefacenet", "--out", "{root}/never.onnx"],
         "{root}/r18_backbone.pth", ["missing key", "unexpected key"]),
    Case("checkpoint_zero_byte", "zero-byte checkpoint", eval_on("synthetic", "path={root}/empty.pt"),
         "{root}/empty.pt", ["empty file"]),
    Case("checkpoint_truncated", "checkpoint cut in half", eval_on("synthetic", "path={root}/truncated.pt"),
         "{root}/truncated.pt", ["not a readable PyTorch checkpoint"]),
    Case("checkpoint_runs_code", "checkpoint whose unpickling would run os.system",
         eval_on("synthetic", "path={root}/runs_code.pt"), "{root}/runs_code.pt",
         ["refused to load", "posix.system", "nothing was run"]),
]


@dataclass
class Outcome:
    returncode: int
    stderr: str
    seconds: float


def run_case(case: Case, root: Path) -> Outcome:
    """Run ``python -m facekd`` on the case; a hang past :data:`TIMEOUT_S` raises TimeoutExpired."""
    import time

    argv = [a.replace("{root}", str(root)) for a in case.argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("FACEKD_TRUST_PICKLES", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "facekd", *argv], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env, cwd=root)
    return Outcome(done.returncode, done.stderr, time.perf_counter() - start)


LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d )?(DEBUG|INFO|WARNING) ")


def error_lines(stderr: str) -> List[str]:
    """stderr without the logging lines (``[hh:mm:ss] INFO ...``); informational lines such as
    ``facekd eval: 2 compute thread(s)`` may precede the error line."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


# --------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return build_inputs(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_one_clear_line_and_exit_2(case, inputs):
    outcome = run_case(case, inputs)
    lines = error_lines(outcome.stderr)
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.returncode == 2, outcome.stderr
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], outcome.stderr    # one error line, the last one
    command = case.argv[0]
    expected_path = case.names.replace("{root}", str(inputs))
    assert errors[0].startswith(f"facekd {command}: error: {expected_path}: "), errors[0]
    for word in case.problem:
        assert word in errors[0], errors[0]
    assert not list(inputs.glob("MARKER_*"))                       # no pickle payload ever ran
    assert not (inputs / "never.onnx").exists() and not (inputs / "results.json").exists()


# --------------------------------------------------------------------------- the docs table

def write_table(path: Path) -> None:
    """Run every case and write the Markdown table of what each gives."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = build_inputs(Path(tmp))
        for case in CASES:
            outcome = run_case(case, root)
            lines = error_lines(outcome.stderr)
            message = lines[-1] if lines else "(no message)"
            if "Traceback" in outcome.stderr:
                message = "TRACEBACK: " + message
            shown = lambda text: text.replace(str(root) + "/", "").replace("|", "\\|")  # noqa: E731
            command = "facekd " + " ".join(shown(a.replace("{root}", str(root))) for a in case.argv)
            rows.append(f"| {case.input} | `{command}` | {outcome.returncode} | {shown(message)} |")
            print(f"{case.id}: exit {outcome.returncode} in {outcome.seconds:.1f} s", file=sys.stderr)
    text = [
        "# Hostile inputs: what facekd does with them",
        "",
        "Generated by `python3 tests/test_hostile_inputs.py docs/HOSTILE_INPUTS.md` from the cases that",
        "`tests/test_hostile_inputs.py` runs in CI: every command was actually run (`python -m facekd ...`",
        "in a subprocess) on the tiny inputs that file builds; paths are relative to its inputs folder.",
        "Each must exit with 2 and print one line naming the file and the problem, never a traceback",
        f"(a hang past {TIMEOUT_S} s fails the test).",
        "",
        "Rules behind the messages: images are checked on their header before decoding (at most",
        "`facekd.data.image_io.MAX_IMAGE_PIXELS` = 64,000,000 pixels; a JPEG must end with its",
        "end-of-image marker); checkpoints load with `torch.load(weights_only=True)` and `.bin` sets",
        "through a restricted unpickler, so a file that would run code is refused before anything runs",
        "(`FACEKD_TRUST_PICKLES=1` / `--trust-pickles` lift this for files you trust).",
        "",
        "Why the header check matters (measured once, 2-core CPU box, not regenerated): a real bomb,",
        "a 2.6 MB PNG of 30000x30000 zeros, decoded with plain `cv2.imdecode` took 38.8 s and 5.2 GB",
        "peak RSS; `facekd.data.read_image` refuses it from the header in 0.06 s (+3 MB).",
        "",
        "Killed runs and full disks are covered by `tests/test_faults.py` (real `SIGKILL`s: mid-epoch",
        "then `--resume` gives bit-identical weights; a kill inside a checkpoint write keeps the previous",
        "`last.pt`; a killed teacher-cache build is rebuilt, not read; `facekd align` killed mid-write and",
        "restarted gives byte-identical faces; `ENOSPC` while writing `last.pt` is exit 2 with",
        "`<path>: no space left on device ...` and the previous file intact).",
        "",
        "Photos too small to hold a face (shorter side below `--min-face-size`, e.g. 10x10, 1x1, 1xN) are",
        "skipped and counted by `facekd align` (`too_small` in `align_log.txt`, warned with the path; the",
        "tree finishes and a re-run skips them again: tests/test_data_align.py); `eval` and `verify` refuse",
        "them (below). Grey, RGBA, palette, 16-bit and CMYK images decode to RGB.",
        "",
        "| input | command | exit code | message |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    Path(path).write_text("\n".join(text) + kept_sections(path))


def kept_sections(path: Path) -> str:
    """The sections of ``path`` this script does not generate (from :data:`KEPT_HEADING` on,
    written from tests/test_fuzz_readers.py's runs), kept when the table is regenerated."""
    old = Path(path).read_text() if Path(path).is_file() else ""
    return "\n" + old[old.index(KEPT_HEADING):] if KEPT_HEADING in old else ""


#: the first heading kept by :func:`kept_sections`
KEPT_HEADING = "## Fuzzing the readers"


if __name__ == "__main__":
    write_table(Path(sys.argv[1] if len(sys.argv) > 1 else REPO_ROOT / "docs" / "HOSTILE_INPUTS.md"))


# --------------------------------------------------------------------------- the checks themselves

def test_header_check_refuses_large_images_before_decoding():
    from facekd.data.image_io import MAX_IMAGE_PIXELS, decode_image
    from facekd.errors import DataError

    assert MAX_IMAGE_PIXELS == 64_000_000
    with pytest.raises(DataError, match=r"^big\.png: image header claims 10000x10000 = 100,000,000 pixels"):
        decode_image(png_claiming(10000, 10000), "big.png")              # below Pillow's own limit
    with pytest.raises(DataError, match=r"claims 900,000,000 pixels, more than the 64,000,000 allowed"):
        decode_image(png_claiming(30000, 30000), "bomb.png")             # beyond it
    with pytest.raises(DataError, match=r"claims 64x64 = 4,096 pixels, more than the 4,000 allowed"):
        decode_image(png_claiming(64, 64), "small.png", max_pixels=4000)


def test_truncated_jpeg_detection_spares_thumbnails_and_trailing_bytes():
    from facekd.data.image_io import decode_image, encode_image
    from facekd.errors import DataError

    rng = np.random.default_rng(0)
    main = encode_image((rng.random((96, 80, 3)) * 255).astype(np.uint8), ".jpg")
    thumb = encode_image(np.full((16, 16, 3), 200, np.uint8), ".jpg")          # has its own SOS and EOI
    app1 = b"Exif\0\0" + thumb
    with_thumb = main[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + main[2:]
    assert decode_image(with_thumb, "thumb.jpg").shape == (96, 80, 3)
    assert decode_image(main + b"trailing junk", "tail.jpg").shape == (96, 80, 3)
    for data in (main[:-2], with_thumb[: len(with_thumb) * 3 // 4]):
        with pytest.raises(DataError, match=r"^cut\.jpg: truncated JPEG"):
            decode_image(data, "cut.jpg")


def test_index_past_the_end_is_dropped_when_skipping_bad_images(tmp_path):
    from facekd.data.recordio import RecordIODataset, RecordIOReader
    from facekd.data.recordio import write_recordio as write
    from facekd.errors import DataError

    rec, idx = write(tmp_path, [(i // 2, face_jpeg(i)) for i in range(6)], header_record=False)
    with open(idx, "a") as handle:
        handle.write(f"6\t{rec.stat().st_size + 8}\n")
    with pytest.raises(DataError, match=r"record 6 listed in .*train\.idx at byte \d+ is past the end"):
        RecordIOReader(rec, idx)
    reader = RecordIOReader(rec, idx, strict=False)
    assert reader.dropped_keys == [6] and len(reader.keys) == 6
    assert len(RecordIODataset(tmp_path, skip_bad_images=True)) == 6


def test_worker_errors_are_unwrapped_to_their_line():
    """A DataLoader worker re-raises ``DataError(message)``; the CLI prints the original line."""
    from facekd.cli import error_message
    from facekd.errors import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nfacekd.errors.DataError: /d/a.jpg: not an image\n")
    assert wrapped.path is None and error_message(wrapped) == "/d/a.jpg: not an image"
    assert error_message(DataError("/d/b.jpg", "empty image data")) == "/d/b.jpg: empty image data"
    assert error_message(FileNotFoundError(2, "No such file or directory", "/d/c")) == "/d/c: No such file or directory"
    assert error_message(ValueError("a bug")) is None                   # bugs keep their traceback
