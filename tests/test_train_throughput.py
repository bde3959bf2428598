"""bench/train_throughput.py: report structure, arithmetic and --out (no timing thresholds).

Tiny sizes: a narrow 32x32 IResNet-18 teacher and a 32x32 MobileFaceNet student, P x K =
4 x 2, a few steps per phase, one thread.
"""
from __future__ import annotations

import json
import math

import pytest

from conftest import load_script

bench = load_script("bench/train_throughput.py")


def tiny_settings(**over):
    settings = dict(threads=1, identities_per_batch=4, images_per_identity=2, workers=0,
                    teacher_params={"width": [8, 16, 32, 64]}, input_size=32, embedding_size=32, num_identities=8,
                    images_per_identity_data=4, warmup=1, model_steps={"teacher": 2, "student": 2}, data_batches=3,
                    e2e_steps_per_epoch={"teacher": 2, "student": 2}, matmul_size=128, matmul_repeats=2)
    settings.update(over)
    return bench.TrainBenchSettings.for_device("cpu", **settings)


@pytest.fixture(scope="module")
def report():
    return bench.run_benchmark(tiny_settings())


def test_report_structure_and_positive_numbers(report):
    assert json.loads(json.dumps(report)) == report
    assert report["device"].startswith("cpu") and report["device_type"] == "cpu"
    assert set(report["models"]) == {"teacher", "student"}
    assert report["environment"]["threads"] == 1
    assert report["matmul_peak"]["start"]["gflops"] > 0 and report["matmul_peak"]["start"]["dtype"] == "float32"
    for role, arch in (("teacher", "iresnet18"), ("student", "mobilefacenet")):
        m = report["models"][role]
        assert m["arch"] == arch and m["batch_size"] == 8 and m["input_size"] == 32
        for key in ("model_img_s", "data_img_s", "end_to_end_img_s", "train_gflop_per_img", "model_pct_of_peak"):
            assert m[key] > 0 and math.isfinite(m[key]), (role, key)
        assert 0 <= m["epoch_end_share"] < 1
        assert m["timed"] == {"model_steps": 2, "data_batches": 3, "end_to_end_steps": 3,
                              "cache_build_s": m["timed"]["cache_build_s"]}     # 2 epochs x 2 steps - 1 warm-up
        assert m["data_over_model"] == pytest.approx(m["data_img_s"] / m["model_img_s"])
        peak = report["matmul_peak"]["start"]["gflops"]
        assert m["model_pct_of_peak"] == pytest.approx(100 * m["model_img_s"] * m["train_gflop_per_img"] / peak)
    assert report["models"]["student"]["losses"] == ["arcface", "triplet_distill", "feature_distill"]
    assert report["models"]["student"]["timed"]["cache_build_s"] > 0        # the cache was built before timing
    assert report["ratios"]["student_over_teacher_model"] == pytest.approx(
        report["models"]["student"]["model_img_s"] / report["models"]["teacher"]["model_img_s"])


def test_flops_count_the_backbone_and_the_head(report):
    from facekd.models import MODELS, count_macs

    teacher = MODELS.build("iresnet18", embedding_size=32, input_size=32, width=(8, 16, 32, 64))
    expected = 6 * (count_macs(teacher, 32) + 8 * 32)        # 8 identities x 32-d class centres
    assert report["models"]["teacher"]["train_gflop_per_img"] == pytest.approx(expected / 1e9)


def test_targets_pass_miss_and_not_measured():
    settings = tiny_settings(teacher_arch="iresnet100")
    models = {"teacher": {"end_to_end_img_s": 5000.0, "epoch_end_share": 0.05, "data_over_model": 2.0},
              "student": {"end_to_end_img_s": 15000.0, "epoch_end_share": 0.01, "data_over_model": 4.0}}
    gpu = {(r["model"], r["quantity"]): r["status"] for r in bench.evaluate_targets("cuda", models, settings)}
    assert gpu == {("teacher", "end_to_end_img_s"): "PASS", ("student", "end_to_end_img_s"): "MISS",
                   ("teacher", "epoch_end_share"): "MISS", ("student", "epoch_end_share"): "PASS",
                   ("teacher", "data_over_model"): "not measured", ("student", "data_over_model"): "not measured"}
    cpu = {(r["model"], r["quantity"]): r["status"] for r in bench.evaluate_targets("cpu", models, settings)}
    assert cpu[("teacher", "data_over_model")] == "MISS" and cpu[("student", "data_over_model")] == "PASS"
    assert cpu[("teacher", "end_to_end_img_s")] == "not measured"
    small_teacher = bench.evaluate_targets("cuda", models, tiny_settings())      # iresnet18: no teacher target
    assert small_teacher[0]["status"] == "not measured"


def test_command_line_writes_the_json(tmp_path, monkeypatch, capsys):
    tiny = tiny_settings()

    def for_device(cls, device, **over):          # the command line's options over the tiny sizes
        return bench.dataclasses.replace(tiny, device=device, **over)

    monkeypatch.setattr(bench.TrainBenchSettings, "for_device", classmethod(for_device))
    out = tmp_path / "train.json"
    assert bench.main(["--device", "cpu", "--models", "student", "--batch", "4x2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["models"]) == {"student"} and data["device"].startswith("cpu")
    assert {"model_img_s", "data_img_s", "end_to_end_img_s"} <= set(data["models"]["student"])
    assert "| student | mobilefacenet | 8 |" in capsys.readouterr().out


def test_partial_fc_teacher_counts_only_the_sampled_centres():
    from facekd.models import MODELS, count_macs

    report = bench.run_benchmark(tiny_settings(teacher_loss="partial_fc", sample_rate=0.25, num_identities=40,
                                               models=("teacher",)))
    m = report["models"]["teacher"]
    assert set(report["models"]) == {"teacher"} and m["losses"] == ["partial_fc"] and m["num_classes"] == 40
    teacher = MODELS.build("iresnet18", embedding_size=32, input_size=32, width=(8, 16, 32, 64))
    sampled = max(10, 8)                                     # ceil(0.25 * 40) centres, batch of 8
    assert m["train_gflop_per_img"] == pytest.approx(6 * (count_macs(teacher, 32) + sampled * 32) / 1e9)
    assert m["model_img_s"] > 0 and m["end_to_end_img_s"] > 0


def test_teaching_variants_time_each_target_source_on_the_same_views():
    """--teaching: one student per teacher.targets source, the view cache built (and timed) once,
    every step against the clean-cache step in the ratios."""
    report = bench.run_benchmark(tiny_settings(models=("student",), teaching=("clean_cache", "view_cache", "online"),
                                               teaching_views=2))
    assert set(report["models"]) == {"student:clean_cache", "student:view_cache", "student:online"}
    assert all(m["model_step_ms"] > 0 for m in report["models"].values())
    assert report["models"]["student:view_cache"]["timed"]["cache_build_s"] > 0
    ratios = report["ratios"]
    assert ratios["clean_cache_step_over_clean_cache_step"] == 1.0
    assert ratios["online_step_over_clean_cache_step"] == pytest.approx(
        report["models"]["student:online"]["model_step_ms"] / report["models"]["student:clean_cache"]["model_step_ms"])


def test_step_variants_time_the_student_again_with_each_change():
    """--step-variants: the same student once more per variant (e.g. channels_last), its model step
    against the plain student's of the same run."""
    settings = bench.settings_from_args(bench.parse_args(["--models", "student", "--step-variants",
                                                          "channels_last,channels_last+bf16"]))
    assert settings.step_variants == ("channels_last", "channels_last+bf16")
    assert bench.variant_settings(settings, "channels_last+bf16").amp == "bf16"
    assert bench.variant_settings(settings, "channels_last+bf16").channels_last is True
    with pytest.raises(SystemExit, match="unknown variant 'fast'"):
        bench.variant_settings(settings, "fast")
    report = bench.run_benchmark(tiny_settings(models=("student",), step_variants=("channels_last",)))
    assert set(report["models"]) == {"student", "student+channels_last"}
    assert report["ratios"]["student+channels_last_speedup"] == pytest.approx(
        report["models"]["student"]["model_step_ms"] / report["models"]["student+channels_last"]["model_step_ms"])


def test_store_variant_takes_the_targets_from_the_memory_mapped_store():
    """--step-variants store: the same student fed from the float16 store, against today's cache."""
    report = bench.run_benchmark(tiny_settings(models=("student",), step_variants=("store",)))
    models = report["models"]
    assert models["student"]["teacher_cache"] == "file float32"
    assert models["student+store"]["teacher_cache"] == "store float16"
    assert 0 < models["student+store"]["targets_ms"] < models["student+store"]["model_step_ms"]
    assert report["ratios"]["student+store_speedup"] == pytest.approx(
        models["student"]["model_step_ms"] / models["student+store"]["model_step_ms"])
    assert bench.settings_from_args(bench.parse_args(["--store"])).store is True


def test_rounds_split_the_batch_between_ranks():
    """ddp2: two gloo ranks of one thread share the P x K batch, so the optimiser sees the same global batch."""
    import train_rounds

    settings = bench.variant_settings(tiny_settings(), "channels_last+ddp2")
    assert (settings.world_size, settings.threads, settings.channels_last) == (2, 1, True)
    assert train_rounds.rank_settings(settings).identities_per_batch == 2
    assert train_rounds.rank_settings(settings).batch_size * 2 == settings.batch_size == 8
    with pytest.raises(SystemExit, match="cannot be split between 2 ranks"):
        train_rounds.rank_settings(bench.variant_settings(tiny_settings(identities_per_batch=3), "ddp2"))
    ratios = train_rounds.round_ratios({"a": {"model_img_s": [10.0, 20.0], "end_to_end_img_s": [5.0, 8.0]},
                                        "b": {"model_img_s": [15.0, 10.0], "end_to_end_img_s": [10.0, 4.0]}}, "a")
    assert ratios["a"] == {"model": [1.0, 1.0], "model_median": 1.0, "end_to_end": [1.0, 1.0],
                           "end_to_end_median": 1.0}
    assert ratios["b"] == {"model": [1.5, 0.5], "model_median": 1.0, "end_to_end": [2.0, 0.5],
                           "end_to_end_median": 1.25}


def test_rounds_time_each_variant_in_its_own_processes_against_the_baseline():
    """--rounds: the baseline and each variant in worker processes of their own (a 1-process and a
    2-rank variant), interleaved; every round's ratio is the variant's img/s over the baseline's."""
    pytest.importorskip("torch.distributed")
    args = bench.parse_args(["--rounds", "2", "--baseline", "channels_last", "--step-variants",
                             "channels_last+ddp2,threads1"])
    assert (args.rounds, args.baseline) == (2, "channels_last")
    settings = tiny_settings(models=("student",), step_variants=("channels_last+ddp2", "threads1"))
    report = bench.run_rounds_benchmark(settings, rounds=2, baseline="channels_last", steps=1)
    assert json.loads(json.dumps(report)) == report
    variants = report["variants"]
    assert list(variants) == ["channels_last", "channels_last+ddp2", "threads1"]
    assert [(v["world_size"], v["threads"], v["batch_size"]) for v in variants.values()] == [(1, 1, 8), (2, 1, 8),
                                                                                              (1, 1, 8)]
    for v in variants.values():
        assert len(v["model_img_s"]) == len(v["end_to_end_img_s"]) == 2
        assert min(v["model_img_s"] + v["end_to_end_img_s"] + [v["data_img_s"]]) > 0
    ratios = report["ratios"]
    assert ratios["channels_last"]["end_to_end"] == [1.0, 1.0]
    assert ratios["channels_last+ddp2"]["model"] == pytest.approx(
        [a / b for a, b in zip(variants["channels_last+ddp2"]["model_img_s"], variants["channels_last"]["model_img_s"])])
    assert "| channels_last+ddp2 | 2 x 1 | 8 |" in report["table"]
