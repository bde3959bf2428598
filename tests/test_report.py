"""Results JSON, the HTML/Markdown report, the eval/report commands, and a headless-Chromium render."""
from __future__ import annotations

import json
import re

import pytest

from facekd.errors import DataError
from facekd.evaluation import runner
from facekd.evaluation.render_check import check_render, find_chromium
from facekd.evaluation.report import inheritance_table, render_markdown, resolution_table, write_report
from facekd.evaluation.runner import EvalOptions, ModelSpec, evaluate_models, load_results, save_results

from conftest import load_script
from evaluation_fakes import FakePairSet, darken, save_checkpoint, tiny_arch  # noqa: F401

HARDEST = 2
SIZES = (112, 56, 28, 14)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_arch):
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for seed, (role, name) in enumerate([("teacher", "teacher"), ("baseline", "baseline"), ("distilled", "kd")]):
        paths[role] = root / f"{name}.pt"
        save_checkpoint(paths[role], tiny_arch, seed=seed)
    return paths


def options(**overrides):
    defaults = dict(resolution_sizes=SIZES, hardest=HARDEST, latency_runs=2, progress=False, degrade_fn=darken)
    return EvalOptions(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def results(checkpoints, tmp_path_factory):
    specs = [ModelSpec(str(checkpoints["distilled"]), role="distilled", label="MobileFaceNet KD"),
             ModelSpec(str(checkpoints["teacher"]), role="teacher", label="IResNet teacher"),
             ModelSpec(str(checkpoints["baseline"]), role="baseline")]
    data = evaluate_models(specs, [FakePairSet(num_images=30, num_pairs=60)], options(), log=lambda _: None)
    path = save_results(data, tmp_path_factory.mktemp("eval") / "results.json")
    return load_results(path)


def expected_images(results):
    """Two plots per set plus two thumbnails per hardest pair."""
    pairs = sum(len(r["hardest"]["false_accepts"]) + len(r["hardest"]["false_rejects"])
                for m in results["models"] for r in m["results"].values())
    return 2 * len(results["val_sets"]) + 2 * pairs


def test_results_json_schema(results):
    assert results["schema"] == runner.RESULTS_SCHEMA
    assert [v["name"] for v in results["val_sets"]] == ["fake"]
    assert results["val_sets"][0]["num_pairs"] == 60
    model = results["models"][0]
    assert model["role"] == "distilled" and model["embedding_size"] == 8 and model["params"] > 0
    assert model["macs"] > 0 and model["latency_ms"] > 0
    fake = model["results"]["fake"]
    for kind in ("plain", "flip"):
        metrics = fake[kind]
        assert 0 <= metrics["accuracy_mean"] <= 1 and len(metrics["fold_accuracies"]) == 10
        assert set(metrics["tar_at_far"]) == {"0.001", "0.01"}
        assert len(metrics["roc"]["fpr"]) == len(metrics["roc"]["tpr"]) >= 2
    assert fake["resolution"]["sizes"] == list(SIZES) and len(fake["resolution"]["accuracy_mean"]) == 4
    assert fake["resolution"]["accuracy_mean"][0] == fake["flip"]["accuracy_mean"]   # 112 px = clean
    for kind in ("false_accepts", "false_rejects"):
        for item in fake["hardest"][kind]:
            assert len(item["thumbnails"]) == 2 and item["images"][0].startswith("img/")
    assert 0 < len(fake["hardest"]["false_accepts"]) + len(fake["hardest"]["false_rejects"]) <= 2 * HARDEST


def test_report_contents(results, tmp_path):
    files = write_report(results, tmp_path / "report", title="LFW report")
    page = files.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>LFW report</title>" in page
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page)    # self-contained: no external references
    assert len(re.findall(r"src='data:image/(png|jpeg);base64,", page)) == expected_images(results)
    summary_table = next(t for t in page.split("<table>")[1:] if "<th>Accuracy % (flip)</th>" in t)
    rows = summary_table.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    labels = [re.search(r"<td>(.*?)</td>", r).group(1) for r in rows]
    assert labels[0] == "IResNet teacher" and labels[1].endswith("/baseline")   # teacher, baseline,
    assert labels[2] == "MobileFaceNet KD"                                      # then distilled
    for model in results["models"]:
        flip = model["results"]["fake"]["flip"]
        accuracy = f"{100 * flip['accuracy_mean']:.2f} ± {100 * flip['accuracy_std']:.2f}"
        tar = f"{100 * flip['tar_at_far']['0.01']['tar_mean']:.2f}"
        row = next(r for r in rows if model["label"] in r)
        for value in (accuracy, tar, f"{flip['auc']:.4f}", f"{model['latency_ms']:.2f}"):
            assert f"<td>{value}</td>" in row
    summary = files.markdown.read_text()
    assert "| Model | Role | Accuracy % (flip)" in summary and "IResNet teacher" in summary
    assert "(roc_fake.png)" in summary and "(resolution_fake.png)" in summary
    assert "| Model | Role | 112 px | 56 px | 28 px | 14 px |" in summary and "by probe size" in page
    assert {p.name for p in files.plots} == {"roc_fake.png", "resolution_fake.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in files.plots)


def test_resolution_table_numbers_and_baseline_differences(results):
    header, rows = resolution_table(results, "fake")
    assert header == ["Model", "Role", "112 px", "56 px", "28 px", "14 px"]
    assert [row[1] for row in rows] == ["teacher", "baseline", "distilled"]
    by_role = {m["role"]: m["results"]["fake"]["resolution"] for m in results["models"]}
    for row in rows:
        curve, base = by_role[row[1]], by_role["baseline"]
        for cell, mean, std, base_mean in zip(row[2:], curve["accuracy_mean"], curve["accuracy_std"],
                                              base["accuracy_mean"]):
            expected = f"{100 * mean:.2f} ± {100 * std:.2f}"
            if row[1] != "baseline":
                expected += f" ({100 * (mean - base_mean):+.1f})"
            assert cell == expected


def test_resolution_table_shows_a_model_without_curve_at_the_native_size(results):
    results = json.loads(json.dumps(results))
    teacher = next(m for m in results["models"] if m["role"] == "teacher")["results"]["fake"]
    teacher["resolution"] = None                                    # e.g. resolution=false
    header, rows = resolution_table(results, "fake")
    row = next(r for r in rows if r[1] == "teacher")
    base = next(m for m in results["models"] if m["role"] == "baseline")["results"]["fake"]["resolution"]
    flip = teacher["flip"]
    assert row[2] == (f"{100 * flip['accuracy_mean']:.2f} ± {100 * flip['accuracy_std']:.2f} "
                      f"({100 * (flip['accuracy_mean'] - base['accuracy_mean'][0]):+.1f})")
    assert header[2] == "112 px" and row[3:] == ["–"] * 3


@pytest.mark.skipif(find_chromium() is None, reason="Chromium is not installed")
def test_report_renders_in_chromium(results, tmp_path):
    files = write_report(results, tmp_path / "report")
    check = check_render(files.html, screenshot=tmp_path / "shot.png")
    assert check.images_total == expected_images(results)
    assert check.images_loaded == check.images_total, check.broken
    assert check.pixel_std > 10, "the screenshot is (nearly) blank"
    assert check.ok


def test_eval_and_report_commands(checkpoints, tmp_path, monkeypatch, capsys):
    from facekd.cli import main

    built = []

    def fake_build(name, kind, path, **kw):
        built.append((name, kind, path, kw))
        pair_set = FakePairSet(num_images=12, num_pairs=20)
        pair_set.name = name
        return pair_set

    monkeypatch.setattr(runner, "build_pair_set", fake_build)
    out = tmp_path / "results.json"
    code = main(["eval", "--model", f"path={checkpoints['teacher']},role=teacher,label=T",
                 "--model", str(checkpoints["distilled"]), "--val", "lfw:/data/lfw/pairs.txt",
                 "--val-option", "align=false", "--out", str(out), "--sizes", "none", "--latency-runs", "0",
                 "--no-progress", "--far", "1e-2"])
    assert code == 0 and built == [("lfw", "lfw", "/data/lfw/pairs.txt", {"cache": True, "align": False})]
    data = json.loads(out.read_text())
    assert data["models"][0]["label"] == "T" and data["models"][1]["label"].endswith("/kd")
    assert data["models"][0]["results"]["lfw"]["resolution"] is None
    assert set(data["models"][0]["results"]["lfw"]["flip"]["tar_at_far"]) == {"0.01"}
    assert "| T | teacher |" in capsys.readouterr().out

    code = main(["report", str(out), "--out", str(tmp_path / "page")])
    assert code == 0 and (tmp_path / "page" / "report.html").is_file()

    code = main(["eval", "--model", f"path={checkpoints['teacher']},embedding_size=512", "--val", "synthetic",
                 "--out", str(tmp_path / "never.json"), "--no-progress"])
    assert code == 2 and "teacher.pt" in capsys.readouterr().err and not (tmp_path / "never.json").exists()


def test_bad_results_file_is_named(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        load_results(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(DataError, match="other.json.*schema"):
        load_results(other)


def test_results_table_script_merges_files(results, tmp_path, capsys):
    script = load_script("bench/results_table.py")
    teacher_only = dict(results, models=[m for m in results["models"] if m["role"] == "teacher"])
    students = dict(results, models=[m for m in results["models"] if m["role"] != "teacher"])
    paths = [save_results(part, tmp_path / f"results_{i}.json") for i, part in enumerate((teacher_only, students))]
    assert script.main([str(p) for p in paths]) == 0
    printed = capsys.readouterr().out
    header, rows = resolution_table(results, "fake")
    assert "### fake (60 pairs)" in printed
    assert all(" | ".join(row) in printed for row in rows)          # same rows as from one file
    (tmp_path / "broken.json").write_text("{")
    assert script.main([str(tmp_path / "broken.json")]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_results_table_seed_means_average_seeds_and_keep_the_teacher(results):
    script = load_script("bench/results_table.py")
    results = json.loads(json.dumps(results))
    teacher = next(m for m in results["models"] if m["role"] == "teacher")
    teacher["results"]["fake"]["resolution"] = None
    kd = next(m for m in results["models"] if m["role"] == "distilled")
    other = json.loads(json.dumps(kd))
    kd["label"], other["label"] = "kd seed 0", "kd seed 1"
    other["results"]["fake"]["resolution"]["accuracy_mean"] = [a - 0.02 for a in
                                                              kd["results"]["fake"]["resolution"]["accuracy_mean"]]
    results["models"].append(other)
    means = script.seed_means(results)
    by_label = {m["label"]: m for m in means["models"]}
    assert by_label[teacher["label"]] is teacher                       # unseeded: kept as it is
    curve = by_label["kd (2 seeds)"]["results"]["fake"]["resolution"]
    first = kd["results"]["fake"]["resolution"]["accuracy_mean"]
    assert curve["accuracy_mean"] == pytest.approx([a - 0.01 for a in first])
    assert curve["accuracy_std"] == pytest.approx([0.02 / 2 ** 0.5] * len(first))


def test_inheritance_table_gives_the_share_of_the_teachers_lead(results):
    """(student - plain) / (teacher - plain) at the native size: teacher 90 %, plain 80 %, kd 86 % -> 60 %;
    it leads the Markdown section of the set; no rows when the teacher does not lead."""
    results = json.loads(json.dumps(results))
    for model, accuracy in zip(results["models"], (0.86, 0.90, 0.80)):        # kd, teacher, baseline
        curve = model["results"]["fake"]["resolution"]
        curve["accuracy_mean"][curve["sizes"].index(112)] = accuracy
    header, rows = inheritance_table(results, "fake")
    assert header[-1] == "Share of the teacher's lead"
    assert [row[0] for row in rows] == ["IResNet teacher", results["models"][2]["label"], "MobileFaceNet KD"]
    assert rows[2][1:] == ["86.00", "+6.0", "60 %"] and rows[0][-1] == "100 %"
    markdown = render_markdown(results)
    assert markdown.index("What the student inherits") < markdown.index("| Model | Role | Accuracy % (flip)")
    results["models"][1]["results"]["fake"]["resolution"]["accuracy_mean"][0] = 0.79
    assert inheritance_table(results, "fake")[1] == []


def test_learning_curves_script_reads_the_val_records(tmp_path, capsys):
    script = load_script("bench/learning_curves.py")
    for name, accuracies in (("plain", [0.6, 0.7, 0.65]), ("kd", [0.66, 0.75])):
        run = tmp_path / name
        run.mkdir()
        records = [{"kind": "train", "step": 1, "epoch": 0, "loss": 3.0}]
        records += [{"kind": "val", "step": 10 * e, "epoch": e, "lfw_devtrain/accuracy": a}
                    for e, a in enumerate(accuracies, start=1)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    header, rows = script.curves_table([tmp_path / "plain", tmp_path / "kd"])
    assert header == ["epoch", "plain", "kd"]
    assert rows == [["1", "60.00", "66.00"], ["2", "70.00", "75.00"], ["3", "65.00", "–"],
                    ["best", "70.00 (epoch 2)", "75.00 (epoch 2)"]]
    assert script.main([str(tmp_path / "plain"), str(tmp_path / "missing")]) == 2
    assert "missing/metrics.jsonl: no metrics.jsonl" in capsys.readouterr().err


def test_learning_curves_counts_image_steps_from_the_config_and_plots(tmp_path):
    """Image-steps = steps x (P x K + unlabelled per batch) x ranks; --png writes a real PNG."""
    script = load_script("bench/learning_curves.py")
    run = tmp_path / "regress"
    run.mkdir()
    (run / "config.yaml").write_text("data: {unlabelled: [faces]}\ntrain: {identities_per_batch: 16, "
                                     "images_per_identity: 4, unlabelled_per_batch: 32}\n")
    records = [{"kind": "train", "step": s, "epoch": 0, "feature_distill": 1 - s / 100} for s in range(1, 30)]
    records += [{"kind": "val", "step": 20, "epoch": 1, "lfw_devtrain/accuracy": 0.7, "cfp_fp/accuracy": 0.6}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert script.faces_per_step(run) == 96 and script.faces_per_step(run, world_size=2) == 192
    png = tmp_path / "curves.png"
    assert script.main([str(run), "--png", str(png), "--world-size", "2", "--smooth", "5"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    cycle = tmp_path / "cycle2"                       # warm-started from the end of run (step 29)
    cycle.mkdir()
    (cycle / "config.yaml").write_text("train: {identities_per_batch: 8, images_per_identity: 4}\n")
    (cycle / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 10, "feature_distill": 0.25}) + "\n"
                                         + json.dumps({"kind": "val", "step": 10, "epoch": 1, "cfp_fp/accuracy": 0.75}) + "\n")
    chained = script.image_step_series([run, cycle], world_size=2, chain=True)
    assert chained["cycle2"] == ([(pytest.approx((29 * 192 + 10 * 64) / 1e6), 0.75)],
                                 {"cfp_fp": [(pytest.approx((29 * 192 + 10 * 64) / 1e6), 75.0)]})
    assert script.image_step_series([run, cycle], world_size=2)["cycle2"][0] == [(pytest.approx(640 / 1e6), 0.75)]
    later = script.image_step_series([run, cycle], world_size=2, chain=True, start=2.5)   # earlier logs gone
    assert later["cycle2"][0] == [(pytest.approx(2.5 + (29 * 192 + 10 * 64) / 1e6), 0.75)]
    assert script.main([str(run), str(cycle), "--png", str(png), "--world-size", "2", "--chain"]) == 0
