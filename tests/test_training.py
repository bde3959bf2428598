"""Training: schedules, atomic checkpoints, the teacher cache, resume, the NaN guard, a short
synthetic run that learns, and the train-teacher/train-student commands.

Every run uses a tiny IResNet (widths 8..64, 32x32 input) on a few synthetic identities.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml

from facekd.config import CONFIG_DIR, ExperimentConfig, OptimConfig, load_config
from facekd.errors import CheckpointError, ConfigError, TrainingError
from facekd.training import (CACHE_STATS, Hook, StudentTask, TeacherCache, TeacherTask, Trainer, build_scheduler,
                             load_checkpoint, read_metrics, run_training)
from facekd.teachers import load_teacher
from facekd.teachers import torch_teacher as torch_teacher_module
from facekd.training.checkpoint import atomic_save
from facekd.training.teacher_cache import cache_key

TINY_MODEL = {"name": "iresnet18", "embedding_size": 32, "input_size": 32, "params": {"width": [8, 16, 32, 64]}}
ALL_STUDENT_LOSSES = [
    {"name": "arcface", "weight": 1.0, "scale": 32.0, "margin": 0.3},
    {"name": "triplet_distill", "weight": 1.0, "m_min": 0.2, "m_max": 0.5},
    {"name": "feature_distill", "weight": 1.0},
    {"name": "hinton_kd", "weight": 1.0, "temperature": 4.0},
]


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_config(path: Path, run_dir: Path, **over: Any) -> Path:
    """A tiny experiment YAML (based on configs/base.yaml) with ``over`` merged in."""
    data = {
        "_base_": str(CONFIG_DIR / "base.yaml"), "name": path.stem, "output_dir": str(run_dir),
        "model": TINY_MODEL,
        "data": {"source": "synthetic", "num_identities": 16, "images_per_identity": 8},
        "val": {"sets": [{"name": "synthetic", "kind": "synthetic", "params": {"num_pairs": 100, "cache": True}}],
                "every_epochs": 0, "batch_size": 100},
        "optim": {"lr": 0.1, "warmup_epochs": 0.5},
        "train": {"epochs": 1, "identities_per_batch": 8, "images_per_identity": 4, "checkpoint_every_steps": 3,
                  "log_every_steps": 1, "progress": False},
        "losses": [{"name": "arcface", "weight": 1.0, "scale": 32.0, "margin": 0.3}],
    }
    data = _merge(data, over)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_config(tmp_path: Path, name: str, **over: Any) -> ExperimentConfig:
    return load_config(write_config(tmp_path / f"{name}.yaml", tmp_path / name, **over))


def student_overrides(teacher_ckpt: str, cache_dir: Path, **over: Any) -> Dict[str, Any]:
    base = {"teacher": {"model": TINY_MODEL, "checkpoint": teacher_ckpt, "cache_dir": str(cache_dir)},
            "degrade": {"enabled": True, "min_size": 14, "max_size": 40, "blur_prob": 0.3, "jpeg_prob": 0.3,
                        "noise_prob": 0.3, "clean_prob": 0.2},
            "losses": ALL_STUDENT_LOSSES}
    return _merge(base, over)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    """A tiny teacher trained for a few steps (facekd checkpoint with its ArcFace head)."""
    root = tmp_path_factory.mktemp("teacher")
    cfg = tiny_config(root, "teacher", train={"max_steps_per_epoch": 3})
    summary = run_training(cfg, "teacher")
    return summary["best"]


class Interrupt(Exception):
    pass


class StopAt(Hook):
    """Raise :class:`Interrupt` after optimiser step ``step`` (simulates a killed job)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer, batch, loss, terms) -> None:
        if trainer.step == self.step:
            raise Interrupt


def trainable_state(trainer: Trainer) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.module.state_dict().items()}


# --------------------------------------------------------------------------- schedules

def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=0.1, warmup_epochs=1.0, scheduler="cosine", min_lr=0.001)
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10, total_steps=50)
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01)            # warm-up: (step + 1) / 10 of the LR
    assert lrs[4] == pytest.approx(0.05)
    assert lrs[9] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(0.1)            # cosine starts at the full LR
    progress = (30 - 10) / 39
    assert lrs[30] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert lrs[49] == pytest.approx(0.001)          # ... and ends at min_lr
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_step_schedule_and_unknown_names():
    cfg = OptimConfig(lr=1.0, scheduler="step", milestones=[2, 4], gamma=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=5, total_steps=30)
    lrs = []
    for _ in range(30):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="optim.scheduler"):
        build_scheduler(optimizer, OptimConfig(scheduler="linear"), 5, 30)


# --------------------------------------------------------------------------- checkpoints

def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"step": 1}, target)

    def broken_save(obj, stream, *args, **kwargs):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["step"] == 1              # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temporary left behind


# --------------------------------------------------------------------------- teacher cache

def count_forwards(module: torch.nn.Module) -> List[int]:
    calls = [0]
    module.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_teacher_cache_hit_skips_teacher_and_rebuilds_on_change(tmp_path, teacher_ckpt):
    from facekd.data import SyntheticFaces
    from facekd.teachers import Framing, TorchTeacher

    frozen = load_teacher(load_config(None, [f"teacher.checkpoint={teacher_ckpt}"]).teacher)
    teacher, backbone = TorchTeacher(frozen, framing=Framing(32)), frozen.backbone
    dataset = SyntheticFaces(4, 3, seed=1)
    calls = count_forwards(backbone)
    CACHE_STATS.reset()
    first = TeacherCache.load_or_build(teacher, dataset, tmp_path, batch_size=5)
    assert (CACHE_STATS.misses, CACHE_STATS.hits) == (1, 0) and calls[0] == 3 and not first.from_disk
    assert first.embeddings.shape == (12, 2, 32)
    # the mirror's embedding is the teacher's embedding of the flipped image
    image = torch.from_numpy(dataset.load(5)[:, ::-1].copy())[None]
    from facekd.training.data import batch_to_input
    with torch.no_grad():
        expected = backbone.eval()(batch_to_input(image, 32))
    assert torch.allclose(first.lookup(torch.tensor([5]), torch.tensor([True])), expected, atol=1e-5)

    calls[0] = 0
    second = TeacherCache.load_or_build(teacher, dataset, tmp_path, batch_size=5)
    assert second.from_disk and CACHE_STATS.hits == 1 and calls[0] == 0    # no teacher forward on a hit
    assert torch.equal(second.embeddings, first.embeddings)

    with torch.no_grad():
        backbone.fc.bias.add_(0.01)                                       # other teacher weights
    third = TeacherCache.load_or_build(teacher, dataset, tmp_path, batch_size=5)
    assert not third.from_disk and CACHE_STATS.misses == 2 and calls[0] > 0
    assert not torch.allclose(third.embeddings, first.embeddings)
    assert cache_key(teacher, SyntheticFaces(4, 3, seed=2)) != third.key                   # other data
    assert cache_key(TorchTeacher(frozen, framing=Framing(28)), dataset) != third.key      # other framing
    assert cache_key(TorchTeacher(frozen, amp="bf16", framing=Framing(32)), dataset) != third.key  # precision
    assert len(list(tmp_path.glob("teacher_*.pt"))) == 2


def test_student_distillation_reads_the_cache(tmp_path, teacher_ckpt, monkeypatch):
    """All four student losses together; the second run's teacher never runs a forward pass."""
    calls = []
    original = torch_teacher_module.load_teacher

    def counting_load_teacher(*args, **kwargs):
        teacher = original(*args, **kwargs)
        calls.append(count_forwards(teacher.backbone))
        return teacher

    monkeypatch.setattr(torch_teacher_module, "load_teacher", counting_load_teacher)
    CACHE_STATS.reset()
    over = student_overrides(teacher_ckpt, tmp_path / "cache", train={"max_steps_per_epoch": 2})
    run_training(tiny_config(tmp_path, "first", **over), "student")
    assert CACHE_STATS.misses == 1 and calls[0][0] > 0
    summary = run_training(tiny_config(tmp_path, "second", **over), "student")
    assert CACHE_STATS.hits == 1 and calls[1][0] == 0
    record = read_metrics(Path(summary["output_dir"]) / "metrics.jsonl", "train")[-1]
    assert {"arcface", "triplet_distill", "feature_distill", "hinton_kd"} <= set(record)
    assert all(math.isfinite(record[k]) for k in ("arcface", "triplet_distill", "feature_distill", "hinton_kd"))


def test_insightface_style_teacher_and_hinton_from_class_centres(tmp_path, teacher_ckpt):
    """A head-less teacher (plain state dict): Hinton KD's teacher logits are scale * cos to the
    identities' mean teacher embeddings; without the cache that is refused."""
    from facekd.teachers.base import ClassCentreHead

    raw = tmp_path / "backbone.pth"         # a plain state dict with DDP prefixes, like insightface's
    state = load_checkpoint(teacher_ckpt)["state_dict"]
    torch.save({f"module.{k}": v for k, v in state.items()}, raw)
    cfg = tiny_config(tmp_path, "raw", **student_overrides(str(raw), tmp_path / "cache",
                                                           losses=ALL_STUDENT_LOSSES[:3]))
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    assert trainer.task.teacher.head is None
    assert torch.equal(trainer.task.teacher.backbone.fc.weight, state["fc.weight"])

    cfg = tiny_config(tmp_path, "raw_hinton", **student_overrides(str(raw), tmp_path / "cache"))
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    task = trainer.task
    task.on_train_start(trainer)
    head = task.teacher.head
    assert isinstance(head, ClassCentreHead) and head.scale == 32.0        # the student head's scale
    clean = torch.nn.functional.normalize(task.cache.embeddings[:, 0].float(), dim=1)
    labels = torch.as_tensor(task.dataset.labels)
    for k in (0, task.dataset.num_classes - 1):                            # centre = mean unit embedding
        expected = torch.nn.functional.normalize(clean[labels == k].mean(0), dim=0)
        assert torch.allclose(head.centres[k], expected, atol=1e-5)
    batch = {"index": torch.tensor([0, 5]), "flipped": torch.tensor([False, True])}
    logits = task.teacher_outputs(batch)["teacher_logits"]
    e = torch.nn.functional.normalize(task.cache.lookup(batch["index"], batch["flipped"]), dim=1)
    assert logits.shape == (2, task.dataset.num_classes)
    assert torch.allclose(logits, 32.0 * e @ head.centres.t(), atol=1e-5)

    # online teaching: the class centres still come from the clean cache; the logits from the live view
    cfg = tiny_config(tmp_path, "raw_hinton_online", **student_overrides(
        str(raw), tmp_path / "cache", teacher={"targets": "online"}))
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    online = trainer.task
    online.on_train_start(trainer)
    assert online.targets.name == "online" and torch.equal(online.teacher.head.centres, head.centres)
    faces = torch.stack([online.train_set[i]["teacher_image"] for i in (0, 5)])
    live = torch.nn.functional.normalize(online.teacher.embed(faces), dim=1)
    assert torch.allclose(online.teacher_outputs({"teacher_image": faces})["teacher_logits"],
                          32.0 * live @ head.centres.t(), atol=1e-4)


def test_whitened_teacher_embeddings_reach_the_losses(tmp_path, teacher_ckpt):
    """teacher.whiten: the losses see (t/|t| - mu) W with W the ZCA matrix of the centred clean training
    embeddings, whose covariance W makes (nearly) the identity; without teacher.center it is refused."""
    from facekd.training.tasks import zca_whitening

    cfg = tiny_config(tmp_path, "whitened", **student_overrides(teacher_ckpt, tmp_path / "cache",
                                                                losses=ALL_STUDENT_LOSSES[:3],
                                                                teacher={"center": True, "whiten": True}))
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    task = trainer.task
    task.on_train_start(trainer)
    centred = torch.nn.functional.normalize(task.cache.embeddings[:, 0].float(), dim=1) - task.teacher_center
    assert torch.allclose(task.teacher_whitening, zca_whitening(centred).float(), atol=1e-6)
    assert torch.allclose(task.teacher_whitening, task.teacher_whitening.T, atol=1e-5)     # ZCA: symmetric
    batch = {"index": torch.tensor([0, 5]), "flipped": torch.tensor([False, True])}
    raw = torch.nn.functional.normalize(task.cache.lookup(batch["index"], batch["flipped"]).float(), dim=1)
    assert torch.allclose(task.teacher_outputs(batch)["teacher_embedding"],
                          (raw - task.teacher_center) @ task.teacher_whitening, atol=1e-5)
    rows = torch.randn(4000, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    rows -= rows.mean(0)
    white = rows @ zca_whitening(rows, floor=0.0)
    assert torch.allclose(white.T @ white / (len(rows) - 1), torch.eye(6, dtype=torch.float64), atol=1e-8)
    with pytest.raises(ConfigError, match="teacher.whiten: true needs teacher.center: true"):
        tiny_config(tmp_path, "whiten_alone", **student_overrides(teacher_ckpt, tmp_path / "cache",
                                                                  teacher={"whiten": True}))


def test_centred_teacher_embeddings_reach_the_losses_and_the_checkpoint(tmp_path, teacher_ckpt, caplog):
    """teacher.center: the losses see t/|t| - mu (mu = mean unit clean embedding of the training
    set), class centres and the checkpoint use the same mu; with the cache off it is refused."""
    losses = ALL_STUDENT_LOSSES[:3] + [ALL_STUDENT_LOSSES[3]]
    cfg = tiny_config(tmp_path, "centred", **student_overrides(teacher_ckpt, tmp_path / "cache", losses=losses,
                                                               teacher={"center": True}))
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    task = trainer.task
    task.on_train_start(trainer)
    unit = torch.nn.functional.normalize(task.cache.embeddings[:, 0].float(), dim=1)
    mu = unit.mean(0)
    assert torch.allclose(task.teacher_center, mu, atol=1e-6)
    batch = {"index": torch.tensor([0, 5]), "flipped": torch.tensor([False, True])}
    seen = task.teacher_outputs(batch)["teacher_embedding"]
    raw = torch.nn.functional.normalize(task.cache.lookup(batch["index"], batch["flipped"]).float(), dim=1)
    assert torch.allclose(seen, raw - mu, atol=1e-6)
    assert abs(float((unit - mu).mean(0).norm())) < 1e-5                   # centred on the training set
    assert torch.equal(task.state_dict()["teacher_center"], mu)
    own_head = task.teacher.head.logits(task.cache.lookup(batch["index"], batch["flipped"]).float())
    assert torch.allclose(task.teacher_outputs(batch)["teacher_logits"], own_head)   # its head: raw input

    cfg = tiny_config(tmp_path, "plain_target", **student_overrides(teacher_ckpt, tmp_path / "cache",
                                                                    losses=losses[:3]))
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    trainer.task.on_train_start(trainer)
    assert trainer.task.teacher_center is None and trainer.task.state_dict()["teacher_center"] is None
    cone = torch.nn.functional.normalize(torch.randn(50, 32), dim=1) * 0.3 + torch.eye(32)[0]   # one direction
    with caplog.at_level("WARNING", logger="facekd.training.tasks"):
        assert torch.equal(trainer.task.center_statistics(cone), cone)          # off: unchanged, but warned
    assert "consider teacher.center: true" in caplog.text
    assert torch.equal(trainer.task.teacher_outputs(batch)["teacher_embedding"],
                       trainer.task.cache.lookup(batch["index"], batch["flipped"]))

    # online: mu still comes from the clean cache of the training set; the live view is centred by it
    cfg = tiny_config(tmp_path, "centred_online", **student_overrides(
        teacher_ckpt, tmp_path / "cache", losses=losses[:3], teacher={"center": True, "cache": False}))
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    trainer.task.on_train_start(trainer)
    assert trainer.task.targets.name == "online" and torch.allclose(trainer.task.teacher_center, mu, atol=1e-6)
    faces = torch.stack([trainer.task.train_set[i]["teacher_image"] for i in (0, 5)])
    live = torch.nn.functional.normalize(trainer.task.teacher.embed(faces), dim=1)
    assert torch.allclose(trainer.task.teacher_outputs({"teacher_image": faces})["teacher_embedding"],
                          live - mu, atol=1e-5)


def test_teacher_task_refuses_distillation_losses(tmp_path):
    cfg = tiny_config(tmp_path, "bad", losses=ALL_STUDENT_LOSSES[:2])
    with pytest.raises(ConfigError, match="needs a teacher"):
        Trainer(cfg, TeacherTask(cfg)).build()


# --------------------------------------------------------------------------- resume, NaN

def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, teacher_ckpt):
    """Student with cache, degradation and flips: stop after step 7 (last.pt is from step 6,
    the middle of epoch 2), resume, and end with exactly the weights of an uninterrupted run."""
    over = student_overrides(teacher_ckpt, tmp_path / "cache",
                             train={"epochs": 2, "checkpoint_every_steps": 3, "keep_step_checkpoints": 1})
    cfg_a = tiny_config(tmp_path, "a", **over)
    full = Trainer(cfg_a, StudentTask(cfg_a))
    full.fit()
    assert full.steps_per_epoch == 4 and full.step == 8

    cfg_b = tiny_config(tmp_path, "b", **over)
    with pytest.raises(Interrupt):
        Trainer(cfg_b, StudentTask(cfg_b), hooks=[StopAt(7)]).fit()
    last = Path(cfg_b.output_dir) / "last.pt"
    state = load_checkpoint(last)
    assert state["step"] == 6 and state["epoch"] == 1 and state["sampler"]["position"] == 2
    for key in ("model_config", "state_dict", "head", "optimizer", "scheduler", "rng", "config", "metrics"):
        assert key in state
    assert [p.name for p in Path(cfg_b.output_dir).glob("step_*.pt")] == ["step_0000006.pt"]

    resumed = Trainer(cfg_b, StudentTask(cfg_b))
    resumed.fit(resume=str(last))
    assert resumed.step == 8
    expected, actual = trainable_state(full), trainable_state(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.allclose(expected[key].float(), actual[key].float(), rtol=0, atol=1e-6), key
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


class PoisonWeights(Hook):
    def before_step(self, trainer, batch) -> None:
        if trainer.step == 2:
            with torch.no_grad():
                trainer.task.backbone.fc.weight.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "nan", train={"epochs": 2, "checkpoint_every_steps": 2})
    with pytest.raises(TrainingError, match=r"loss became nan .*last good checkpoint is .*last\.pt"):
        Trainer(cfg, TeacherTask(cfg), hooks=[PoisonWeights()]).fit()
    state = load_checkpoint(Path(cfg.output_dir) / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    from facekd.models import build_model, load_pretrained
    assert load_pretrained(build_model(cfg.model), Path(cfg.output_dir) / "last.pt").exact


# --------------------------------------------------------------------------- learning

class InitialAccuracy(Hook):
    def on_train_start(self, trainer) -> None:
        self.results = trainer.task.verify(trainer, trainer.pair_sets())


def test_short_synthetic_run_lowers_loss_and_lifts_verification(tmp_path):
    cfg = tiny_config(tmp_path, "learn", data={"num_identities": 24, "images_per_identity": 8},
                      val={"every_epochs": 4, "sets": [{"name": "synthetic", "kind": "synthetic",
                                                        "params": {"num_pairs": 300, "cache": True}}]},
                      train={"epochs": 8, "log_every_steps": 1})
    initial = InitialAccuracy()
    summary = Trainer(cfg, TeacherTask(cfg), hooks=[initial]).fit()
    losses = [r["loss"] for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl", "train")]
    assert len(losses) == summary["steps"] == 48
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.7 * first, (first, last)
    before = initial.results["synthetic"].accuracy_mean
    after = summary["verification"]["synthetic"]["accuracy_mean"]
    assert after >= 0.72 and after >= before + 0.05, (before, after)
    result = json.loads((Path(cfg.output_dir) / "verification.json").read_text())
    assert result["best"]["name"] == "synthetic" and (Path(cfg.output_dir) / "best.pt").exists()


# --------------------------------------------------------------------------- commands

def test_train_student_command_trains_the_teacher_first_and_resumes(tmp_path, capsys):
    from facekd.cli import main

    teacher_yaml = write_config(tmp_path / "t.yaml", tmp_path / "t_run", train={"max_steps_per_epoch": 2})
    student_yaml = write_config(
        tmp_path / "s.yaml", tmp_path / "s_run",
        **student_overrides(str(tmp_path / "t_run" / "best.pt"), tmp_path / "cache",
                            teacher={"train_config": str(teacher_yaml)},
                            val={"every_epochs": 1}, train={"max_steps_per_epoch": 2}))
    assert main(["train-student", "--config", str(student_yaml)]) == 0
    out = capsys.readouterr().out
    assert "teacher:" in out and "student:" in out and "verification synthetic: accuracy" in out
    for run in ("t_run", "s_run"):
        for name in ("best.pt", "last.pt", "metrics.jsonl", "verification.json", "config.yaml"):
            assert (tmp_path / run / name).exists(), (run, name)
    for run, config in (("t_run", teacher_yaml), ("s_run", student_yaml)):   # the resolved config, saved
        assert load_config(tmp_path / run / "config.yaml") == load_config(config)
    assert main(["train-student", "--config", str(student_yaml), "--resume", "--set", "train.epochs=2"]) == 0
    assert load_checkpoint(tmp_path / "s_run" / "last.pt")["step"] == 4
    assert main(["train-teacher", "--config", str(teacher_yaml), "--set", "train.epoch=2"]) == 2
    assert "unknown config key(s) train.epoch" in capsys.readouterr().err


# --------------------------------------------------------------------------- speed (issue 12)

def test_loss_is_checked_on_the_host_only_at_log_steps_and_nan_still_stops(tmp_path, monkeypatch):
    """No host sync per step: the finite check runs every log_every_steps; a NaN at step 3 is
    reported (with its own step number) at the log step 4, before any checkpoint is written."""
    from facekd.training import loss_watch

    checks = []
    original = loss_watch.all_finite

    def counting(value, dist):
        checks.append(int(value.numel()))
        return original(value, dist)

    monkeypatch.setattr(loss_watch, "all_finite", counting)
    cfg = tiny_config(tmp_path, "lazy", train={"epochs": 2, "log_every_steps": 4, "checkpoint_every_steps": 0})
    summary = Trainer(cfg, TeacherTask(cfg)).fit()
    assert summary["steps"] == 8 and math.isfinite(summary["final_loss"])
    assert checks == [4, 4]                   # steps 1-4 and 5-8, one host sync each
    assert [r["step"] for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl", "train")] == [4, 8]

    checks.clear()
    cfg = tiny_config(tmp_path, "lazy_nan", train={"epochs": 2, "log_every_steps": 4, "checkpoint_every_steps": 0})
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 1, step 3 .*no checkpoint was written yet"):
        Trainer(cfg, TeacherTask(cfg), hooks=[PoisonWeights()]).fit()
    assert checks == [4] and not (Path(cfg.output_dir) / "last.pt").exists()
    assert read_metrics(Path(cfg.output_dir) / "metrics.jsonl", "error")[0]["step"] == 3


class RecordBatches(Hook):
    def __init__(self) -> None:
        self.batches: List[tuple] = []
        self.loaders: List[int] = []

    def before_step(self, trainer, batch) -> None:
        self.batches.append((batch["index"].tolist(), batch["flipped"].tolist()))

    def on_epoch_end(self, trainer, epoch) -> None:
        self.loaders.append(id(trainer._loader))


def test_persistent_workers_see_each_epoch_and_resume_like_one_process(tmp_path):
    """Two loader workers kept alive across 3 epochs give the same batches, flips and weights as
    loading in the training process; a run resumed mid-epoch 2 with workers ends identically."""
    runs = {}
    for workers in (0, 2):
        cfg = tiny_config(tmp_path, f"w{workers}", data={"num_workers": workers},
                          train={"epochs": 3, "checkpoint_every_steps": 3, "log_every_steps": 2})
        record = RecordBatches()
        trainer = Trainer(cfg, TeacherTask(cfg), hooks=[record])
        trainer.fit()
        runs[workers] = (record, trainable_state(trainer))
    (rec0, state0), (rec2, state2) = runs[0], runs[2]
    assert len(rec2.batches) == 12 and rec2.batches == rec0.batches
    assert rec2.batches[:4] != rec2.batches[4:8]          # epochs differ (new plan, new flips)
    assert len(set(rec2.loaders)) == 1                    # one loader for the whole run
    for key in state0:
        assert torch.allclose(state0[key].float(), state2[key].float(), rtol=0, atol=1e-6), key

    cfg = tiny_config(tmp_path, "w2_resumed", data={"num_workers": 2},
                      train={"epochs": 3, "checkpoint_every_steps": 3, "log_every_steps": 2})
    with pytest.raises(Interrupt):
        Trainer(cfg, TeacherTask(cfg), hooks=[StopAt(7)]).fit()
    assert load_checkpoint(Path(cfg.output_dir) / "last.pt")["step"] == 6
    record = RecordBatches()
    resumed = Trainer(cfg, TeacherTask(cfg), hooks=[record])
    resumed.fit(resume=str(Path(cfg.output_dir) / "last.pt"))
    assert record.batches == rec0.batches[6:]
    actual = trainable_state(resumed)
    for key in state0:
        assert torch.allclose(state0[key].float(), actual[key].float(), rtol=0, atol=1e-6), key


def test_compile_flag_runs_the_step_through_torch_compile(tmp_path, monkeypatch):
    """train.compile compiles the backbone in place with torch.compile in train.compile_mode (eager
    backend here: no C compiler needed) and the compiled steps give the losses of the plain ones."""
    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):
        compiled.append((model, kwargs.get("mode")))
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    losses = {}
    for flag in (False, True):
        cfg = tiny_config(tmp_path, f"compile_{flag}", train={"max_steps_per_epoch": 2, "compile": flag,
                                                              "compile_mode": "max-autotune-no-cudagraphs"})
        trainer = Trainer(cfg, TeacherTask(cfg))
        summary = trainer.fit()
        losses[flag] = [r["loss"] for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl", "train")]
        assert summary["steps"] == 2
    assert len(compiled) == 1 and compiled[0][0].__self__ is trainer.task.backbone    # nn.Module.compile
    assert compiled[0][1] == "max-autotune-no-cudagraphs"
    assert trainer.model is trainer.module          # same module, same parameter names in checkpoints
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_unknown_compile_mode_is_refused_by_name():
    from facekd.config import load_config
    from facekd.training.preflight import check_run

    check_run(load_config(None, ["train.compile_mode=max-autotune-no-cudagraphs"]), "teacher")
    with pytest.raises(ConfigError, match="train.compile_mode") as refused:
        check_run(load_config(None, ["train.compile_mode=fastest"]), "teacher")
    assert "max-autotune-no-cudagraphs" in str(refused.value)


# --------------------------------------------------------------------------- issue 15's methods in a run

def test_student_initialised_from_the_teacher_starts_as_the_teacher(tmp_path, teacher_ckpt):
    """init_from: teacher copies the teacher's weights (same architecture); another one is refused."""
    over = student_overrides(teacher_ckpt, tmp_path / "cache", model=TINY_MODEL, init_from="teacher",
                             losses=[ALL_STUDENT_LOSSES[0], ALL_STUDENT_LOSSES[2]])
    cfg = tiny_config(tmp_path, "transfer", **over)
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    teacher_checkpoint = load_checkpoint(teacher_ckpt)
    teacher_state = teacher_checkpoint["state_dict"]
    student_state = trainer.task.backbone.state_dict()
    assert set(student_state) == set(teacher_state)
    assert all(torch.equal(student_state[k], teacher_state[k]) for k in teacher_state)
    teacher_head = teacher_checkpoint["head"]["state_dict"]["weight"]
    assert torch.equal(trainer.task.criterion.margin_head.weight.detach(), teacher_head)    # same identities
    cfg = tiny_config(tmp_path, "transfer_bad", **{**over, "model": {**TINY_MODEL, "embedding_size": 16}})
    with pytest.raises(ConfigError, match="embedding_size: student 16, teacher 32"):
        Trainer(cfg, StudentTask(cfg)).build()


def test_neuron_selection_is_fitted_on_the_teacher_cache(tmp_path, teacher_ckpt):
    from facekd.losses.neuron_selection import select_neurons

    loss = {"name": "neuron_select_distill", "weight": 1.0, "num_neurons": 8}
    over = student_overrides(teacher_ckpt, tmp_path / "cache", losses=[ALL_STUDENT_LOSSES[0], loss],
                             train={"max_steps_per_epoch": 2, "epochs": 1})
    summary = run_training(tiny_config(tmp_path, "neurons", **over), "student")
    record = read_metrics(Path(summary["output_dir"]) / "metrics.jsonl", "train")[-1]
    assert math.isfinite(record["neuron_select_distill"]) and record["neuron_select_distill"] > 0
    state = load_checkpoint(Path(summary["output_dir"]) / "last.pt")
    selected = next(v for k, v in state["losses"].items() if k.endswith("selected"))
    cache = next((tmp_path / "cache").glob("teacher_*.pt"))
    clean = torch.load(cache, weights_only=True)["embeddings"][:, 0]
    dataset_labels = torch.as_tensor(summary_dataset_labels(tiny_config(tmp_path, "neurons", **over)))
    assert torch.equal(selected, select_neurons(clean, dataset_labels, 8))
    online = student_overrides(teacher_ckpt, tmp_path / "cache", losses=[ALL_STUDENT_LOSSES[0], loss],
                               teacher={"cache": False})
    cfg = tiny_config(tmp_path, "neurons_online", **online)      # online: fitted on the clean cache all the same
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    trainer.task.on_train_start(trainer)
    term = next(t for t in trainer.task.criterion.terms.values() if hasattr(t, "selected"))
    assert trainer.task.targets.name == "online" and torch.equal(term.selected, selected)


def summary_dataset_labels(cfg: ExperimentConfig):
    from facekd.data import build_train_dataset

    return build_train_dataset(cfg.data).labels


def test_background_checkpoint_writer_copies_state_and_reraises_errors():
    from facekd.training.checkpoint_writer import CheckpointWriter, host_copy

    weight = torch.ones(3)
    state = host_copy({"model": {"w": weight}, "steps": [torch.tensor(1)], "name": "x"})
    weight.add_(1.0)                                     # training goes on in place
    assert torch.equal(state["model"]["w"], torch.ones(3)) and state["name"] == "x"
    writer, written = CheckpointWriter(background=True), []
    writer.submit(lambda: written.append(state["model"]["w"].sum().item()))
    writer.wait()
    assert written == [3.0] and not writer.busy

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        writer.submit(lambda: None)                      # the next submit (or wait) reports it
    writer.wait()


def test_init_from_a_checkpoint_is_a_warm_start(tmp_path, teacher_ckpt):
    """init_from: PATH takes a checkpoint's backbone and the loss modules that fit (the margin head
    when the identities are the same), with a fresh schedule; another architecture or a missing
    file is refused naming it."""
    source = load_checkpoint(teacher_ckpt)
    cfg = tiny_config(tmp_path, "warm", init_from=teacher_ckpt)
    trainer = Trainer(cfg, TeacherTask(cfg))
    trainer.build()
    own = trainer.task.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source["state_dict"].items()) and set(own) == set(source["state_dict"])
    assert torch.equal(trainer.task.criterion.margin_head.weight.detach(), source["head"]["state_dict"]["weight"])
    assert trainer.step == 0 and trainer.scheduler.last_epoch == 0 and not trainer.optimizer.state
    cfg = tiny_config(tmp_path, "warm_others", init_from=teacher_ckpt, data={"num_identities": 12})
    trainer = Trainer(cfg, TeacherTask(cfg))
    trainer.build()                                    # other identities: the head starts fresh
    assert torch.equal(trainer.task.backbone.state_dict()["fc.weight"], source["state_dict"]["fc.weight"])
    assert trainer.task.criterion.margin_head.weight.shape[0] == 12
    cfg = tiny_config(tmp_path, "warm_bad", init_from=teacher_ckpt, model={**TINY_MODEL, "embedding_size": 16})
    with pytest.raises(CheckpointError, match=r"best\.pt: init_from needs this run's architecture; "
                                              r"embedding_size: student 16, checkpoint 32"):
        Trainer(cfg, TeacherTask(cfg)).build()
    stripped = tmp_path / "stripped.pt"                # what facekd strip ships: weights and model config
    atomic_save({"model_config": source["model_config"], "state_dict": source["state_dict"]}, stripped)
    cfg = tiny_config(tmp_path, "warm_stripped", init_from=str(stripped))
    trainer = Trainer(cfg, TeacherTask(cfg))
    trainer.build()
    assert torch.equal(trainer.task.backbone.state_dict()["fc.weight"], source["state_dict"]["fc.weight"])
    odd = tmp_path / "odd.pt"
    atomic_save({**source, "model_config": {**source["model_config"], "depth_multiplier": 2}}, odd)
    cfg = tiny_config(tmp_path, "warm_odd", init_from=str(odd))
    with pytest.raises(CheckpointError, match=r"odd\.pt: its model_config is not a facekd model config"):
        Trainer(cfg, TeacherTask(cfg)).build()
    from facekd.training.preflight import check_run

    with pytest.raises(ConfigError, match=r"init_from: .*nothing\.pt: no such checkpoint file"):
        check_run(tiny_config(tmp_path, "warm_missing", init_from=str(tmp_path / "nothing.pt")), "teacher")
