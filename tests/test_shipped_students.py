"""The students shipped in ``results/dlib_students/`` (issue 20) load, export and reproduce their numbers.

``expected.json`` beside them holds each student's LFW View 1 DevTest accuracy as measured when
they were shipped (flip embeddings, 10 folds, faces aligned by MTCNN as ``facekd align`` does);
the README beside them shows the same numbers.  The accuracy test re-evaluates them on the real
DevTest pairs (MTCNN alignment of the 1,000 pairs' photos: a few minutes on 2 cores) and runs
only where ``../shared/data`` is present.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from facekd.cli import main
from facekd.models.checkpoint import read_checkpoint

SHIPPED = Path(__file__).resolve().parents[1] / "results" / "dlib_students"
EXPECTED = SHIPPED / "expected.json"
STUDENTS = ("plain", "distilled")

pytestmark = pytest.mark.skipif(not EXPECTED.is_file(), reason="no shipped students")


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
    pairs = shared_data / "lfw-view1" / "pairsDevTest.txt"
    out = tmp_path / "results.json"
    models = [a for name in STUDENTS for a in ("--model", f"path={SHIPPED / (name + '.pt')},label={name}")]
    assert main(["eval", *models, "--val", f"lfw:{pairs},root={shared_data / 'lfw-view1' / 'images'},align=mtcnn",
                 "--sizes", "112", "--latency-runs", "0", "--hardest", "0", "--no-progress",
                 "--out", str(out)]) == 0
    results = {m["label"]: next(iter(m["results"].values()))["flip"]["accuracy_mean"]
               for m in json.loads(out.read_text())["models"]}
    for name in STUDENTS:
        assert abs(100 * results[name] - expected()[name]["lfw_devtest"]) <= 0.1, (name, results[name])
