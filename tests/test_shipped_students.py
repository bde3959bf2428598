"""The students shipped in ``results/students/`` (issues 20 and 34) load, export and reproduce their numbers.

``expected.json`` beside them holds each student's LFW View 1 DevTest accuracy as measured when
they were shipped (flip embeddings, 10 folds, faces aligned by ``facekd align``); the README
beside them shows the same numbers.  The accuracy test aligns the 1,000 pairs' photos the same
way (a few minutes on 2 cores), re-evaluates each and runs only where ``../shared/data`` is present.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from facekd.cli import main
from facekd.models.checkpoint import read_checkpoint

SHIPPED = Path(__file__).resolve().parents[1] / "results" / "students"
EXPECTED = SHIPPED / "expected.json"
#: every student expected.json lists (``plain``, ``distilled``, ``distilled_dlib``), each a ``<name>.pt`` here
STUDENTS = tuple(sorted(k for k in json.loads(EXPECTED.read_text()) if k != "note")) if EXPECTED.is_file() else ()

pytestmark = pytest.mark.skipif(not EXPECTED.is_file(), reason="no shipped students")


#: how far (accuracy points) a re-evaluation on another CPU may land from ``expected.json``: five pairs
TOLERANCE_PT = 0.5


def expected():
    return json.loads(EXPECTED.read_text())


@pytest.mark.parametrize("name", STUDENTS)
def test_shipped_student_is_weights_and_config_only_and_exports(name, tmp_path):
    path = SHIPPED / f"{name}.pt"
    assert path.stat().st_size <= 5 * 2 ** 20
    state = read_checkpoint(path)
    assert set(state) == {"format", "model_config", "state_dict", "teacher_center", "provenance"}
    assert state["model_config"]["name"] == "mobilefacenet"
    assert main(["export", str(path), "--out", str(tmp_path / f"{name}.onnx")]) == 0
    assert (tmp_path / f"{name}.onnx").stat().st_size > 1e6


def test_shipped_students_reproduce_their_devtest_accuracy(shared_data, tmp_path):
    """The DevTest photos aligned as the experiment aligned them (``facekd align --no-face center``,
    which writes JPEG crops), then both students evaluated on them."""
    from facekd.data import parse_lfw_pairs

    images = shared_data / "lfw-view1" / "images"
    pairs = shared_data / "lfw-view1" / "pairsDevTest.txt"
    entries, _, _ = parse_lfw_pairs(pairs)
    photos = tmp_path / "photos"
    for name, index in {(n, i) for n1, i1, n2, i2 in entries for n, i in ((n1, i1), (n2, i2))}:
        link = photos / name / f"{name}_{index:04d}.jpg"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(images / name / link.name)
    aligned = tmp_path / "aligned"
    assert main(["align", str(photos), str(aligned), "--no-face", "center", "--no-progress"]) == 0
    out = tmp_path / "results.json"
    models = [a for name in STUDENTS for a in ("--model", f"path={SHIPPED / (name + '.pt')},label={name}")]
    assert main(["eval", *models, "--val", f"lfw:{pairs},root={aligned},align=none", "--sizes", "112",
                 "--latency-runs", "0", "--hardest", "0", "--no-progress", "--out", str(out)]) == 0
    results = {m["label"]: next(iter(m["results"].values()))["flip"]["accuracy_mean"]
               for m in json.loads(out.read_text())["models"]}
    # 0.1 pt is one pair of the 1,000. Another CPU aligns and embeds with other rounding, and each fold's
    # threshold then moves a few pairs across it: measured 0.0-0.2 pt (CI's CPU: distilled 94.90, plain
    # 85.50 against expected.json's 95.10 / 85.60); the students themselves lie 4-10 points apart.
    for name in STUDENTS:
        assert abs(100 * results[name] - expected()[name]["lfw_devtest"]) <= TOLERANCE_PT + 1e-6, \
            (name, results[name])
