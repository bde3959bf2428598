"""Consistent teaching (issue 20): augmented views, the view cache, online teaching, unlabelled faces.

Every run uses the tiny IResNet teacher of tests/test_training.py on synthetic faces.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.data import SyntheticFaces, write_image
from facekd.data.augment import AUGMENTATIONS, build_augment
from facekd.data.unlabelled import UNLABELLED, UnlabelledBatches, WithUnlabelled
from facekd.data.sampler import PKBatchSampler
from facekd.errors import ConfigError, DataError
from facekd.losses import LossInputs, build_losses
from facekd.training import CACHE_STATS, StudentTask, TeacherCache, Trainer
from facekd.training.data import TrainView, ViewImages
from tests.test_training import (ALL_STUDENT_LOSSES, Interrupt, StopAt, student_overrides, teacher_ckpt,  # noqa: F401
                                 tiny_config, trainable_state)

AUGMENT = [{"name": "shift_scale", "max_shift": 0.1, "scale": [0.85, 1.15], "max_rotation": 12},
           {"name": "colour_jitter", "brightness": 0.3, "contrast": 0.3, "saturation": 0.3},
           {"name": "mixup", "prob": 1.0, "alpha": 1.0}]


# --------------------------------------------------------------------------- augmentations

def test_augmentations_are_reproducible_from_their_generator_and_change_the_face():
    face = SyntheticFaces(2, 2, seed=1).load(0)
    other = SyntheticFaces(2, 2, seed=1).load(3)
    augment = build_augment(AUGMENT)
    assert augment.needs_partner and not augment.without_partner().needs_partner
    a = augment(face, np.random.default_rng(7), lambda: other)
    b = augment(face, np.random.default_rng(7), lambda: other)
    c = augment(face, np.random.default_rng(8), lambda: other)
    assert a.dtype == np.uint8 and a.shape == face.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a.astype(int) - face).mean() > 5                       # really another view
    mixed = AUGMENTATIONS.build("mixup", prob=1.0, alpha=1.0)(face, np.random.default_rng(0), lambda: other)
    lo, hi = np.minimum(face, other).astype(int) - 1, np.maximum(face, other).astype(int) + 1
    assert ((mixed >= lo) & (mixed <= hi)).all()                         # a convex combination of the two
    assert np.abs(mixed.astype(int) - face).mean() < np.abs(mixed.astype(int) - other).mean()  # own face dominates


def test_augment_config_errors_name_the_entry():
    with pytest.raises(ConfigError, match=r"augment\[1\]: unknown augmentation 'blurr'"):
        build_augment([{"name": "shift_scale"}, {"name": "blurr"}])
    with pytest.raises(ConfigError, match=r"augment\[0\]"):
        build_augment([{"name": "shift_scale", "scael": [0.9, 1.1]}])
    with pytest.raises(ConfigError, match="low <= high"):
        build_augment([{"name": "shift_scale", "scale": [1.2, 0.9]}])


# --------------------------------------------------------------------------- consistent views

def test_online_teacher_sees_exactly_the_students_view_before_degradation(tmp_path, teacher_ckpt):
    """teacher.targets online: teacher_image is the student's flipped, augmented, mixed face; with
    degradation the student's pixels are that same face degraded (a second view without
    degradation yields the teacher's pixels as its own image)."""
    over = student_overrides(teacher_ckpt, tmp_path / "cache", teacher={"targets": "online"}, augment=AUGMENT)
    cfg = tiny_config(tmp_path, "online", **over)
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    view = trainer.task.train_set
    assert trainer.task.targets.name == "online" and view.teacher_images
    clean = TrainView(view.dataset, seed=cfg.seed, flip=True, augment=build_augment(AUGMENT))
    degraded = 0
    for index in range(12):
        item, same = view[(1, index)], clean[(1, index)]
        assert torch.equal(item["teacher_image"], same["image"])           # the same augmented pixels
        assert not torch.equal(item["teacher_image"], torch.from_numpy(view.dataset.load(index)))
        degraded += not torch.equal(item["image"], item["teacher_image"])
    assert degraded >= 6                                                   # clean_prob 0.2: most are degraded
    batch = {"teacher_image": torch.stack([view[(0, i)]["teacher_image"] for i in range(4)])}
    expected = trainer.task.teacher.embed(batch["teacher_image"])
    assert torch.allclose(trainer.task.targets.embeddings(batch), expected)


def test_view_cache_reproduces_its_views_bit_identically_and_serves_their_embeddings(tmp_path, teacher_ckpt):
    over = student_overrides(teacher_ckpt, tmp_path / "cache", teacher={"targets": "view_cache", "views": 3},
                             augment=AUGMENT)
    cfg = tiny_config(tmp_path, "views", **over)
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    task = trainer.task
    images = ViewImages(task.train_set)
    first, again = images[4], images[4]
    assert first.shape == (3, 112, 112, 3) and torch.equal(first, again)
    assert not torch.equal(first[0], first[1])
    CACHE_STATS.reset()
    task.on_train_start(trainer)
    assert CACHE_STATS.misses >= 1 and task.targets.cache.embeddings.shape[:2] == (len(task.dataset), 3)
    items = [task.train_set[(2, i)] for i in range(6)]
    assert {it["view"] for it in items} <= {0, 1, 2}
    for it in items:                                        # the epoch's view is one of the cached ones
        face, flipped, _ = task.train_set.cached_view(it["index"], it["view"])
        assert it["flipped"] == flipped and np.array_equal(face, images[it["index"]][it["view"]].numpy())
    batch = {"index": torch.tensor([it["index"] for it in items]), "view": torch.tensor([it["view"] for it in items])}
    faces = torch.stack([images[it["index"]][it["view"]] for it in items])
    assert torch.allclose(task.targets.embeddings(batch), task.teacher.embed(faces), atol=1e-5)
    CACHE_STATS.reset()
    reloaded = TeacherCache.load_or_build(task.teacher, task.dataset, tmp_path / "cache", images=images)
    assert CACHE_STATS.hits == 1 and CACHE_STATS.misses == 0
    assert torch.equal(reloaded.embeddings, task.targets.cache.embeddings)
    other = tiny_config(tmp_path, "views4", **student_overrides(
        teacher_ckpt, tmp_path / "cache", teacher={"targets": "view_cache", "views": 4}, augment=AUGMENT))
    t2 = Trainer(other, StudentTask(other))
    t2.build()
    from facekd.training.teacher_cache import cache_key
    assert cache_key(task.teacher, task.dataset, ViewImages(t2.task.train_set)) != \
        cache_key(task.teacher, task.dataset, images)                    # 4 views: another cache


def test_view_cache_needs_views(tmp_path, teacher_ckpt):
    over = student_overrides(teacher_ckpt, tmp_path / "c", teacher={"targets": "view_cache"})
    with pytest.raises(ConfigError, match="teacher.views >= 1"):        # refused as the config loads
        tiny_config(tmp_path, "noviews", **over)


def test_resume_of_an_online_augmented_run_continues_bit_identically(tmp_path, teacher_ckpt):
    over = student_overrides(teacher_ckpt, tmp_path / "cache", teacher={"targets": "online"}, augment=AUGMENT,
                             losses=ALL_STUDENT_LOSSES[:3],
                             train={"epochs": 2, "checkpoint_every_steps": 3, "keep_step_checkpoints": 1})
    cfg_a = tiny_config(tmp_path, "a", **over)
    full = Trainer(cfg_a, StudentTask(cfg_a))
    full.fit()
    cfg_b = tiny_config(tmp_path, "b", **over)
    with pytest.raises(Interrupt):
        Trainer(cfg_b, StudentTask(cfg_b), hooks=[StopAt(7)]).fit()
    resumed = Trainer(cfg_b, StudentTask(cfg_b))
    resumed.fit(resume=str(Path(cfg_b.output_dir) / "last.pt"))
    assert resumed.step == full.step == 8
    expected, actual = trainable_state(full), trainable_state(resumed)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


# --------------------------------------------------------------------------- unlabelled faces

def unlabelled_folder(root: Path, count: int = 10) -> Path:
    faces = SyntheticFaces(count, 1, seed=9)
    for i in range(count):
        write_image(root / "nobody" / f"{i:03d}.png", faces.load(i))
    return root


def test_unlabelled_faces_reach_only_the_distillation_losses():
    criterion = build_losses([{"name": "arcface", "weight": 1.0, "scale": 32.0, "margin": 0.3},
                              {"name": "feature_distill", "weight": 1.0}], num_classes=4, embedding_size=8,
                             teacher_embedding_size=8)
    torch.manual_seed(0)
    student, teacher = torch.randn(10, 8), torch.randn(10, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED])
    _, terms = criterion(LossInputs(student, labels, teacher_embedding=teacher, labelled_rows=6))
    _, labelled_only = criterion(LossInputs(student[:6], labels[:6], teacher_embedding=teacher[:6]))
    _, everything = criterion(LossInputs(student, labels.clamp(min=0), teacher_embedding=teacher))
    assert torch.allclose(terms["arcface"], labelled_only["arcface"])              # 6 labelled rows only
    assert torch.allclose(terms["feature_distill"], everything["feature_distill"])  # all 10 rows
    assert not torch.allclose(terms["feature_distill"], labelled_only["feature_distill"])


def test_unlabelled_folder_joins_each_batch_after_the_labelled_rows(tmp_path, teacher_ckpt):
    folder = unlabelled_folder(tmp_path / "unlabelled")
    over = student_overrides(teacher_ckpt, tmp_path / "cache", losses=[ALL_STUDENT_LOSSES[0], ALL_STUDENT_LOSSES[2]],
                             data={"unlabelled": [str(folder)]},
                             train={"unlabelled_per_batch": 4, "max_steps_per_epoch": 2})
    cfg = tiny_config(tmp_path, "unl", **over)
    trainer = Trainer(cfg, StudentTask(cfg))
    trainer.build()
    task = trainer.task
    assert isinstance(task.dataset, WithUnlabelled) and task.dataset.unlabelled_count == 10
    assert len(task.train_labels) == task.labelled_count == 128
    batch = next(iter(trainer.sampler))
    assert len(batch) == 32 + 4 and all(i < 128 for i in batch[:32]) and all(i >= 128 for i in batch[32:])
    assert all(task.dataset.labels[i] == UNLABELLED for i in batch[32:])
    trainer.sampler.load_state_dict({"epoch": 0, "position": 0, "seed": cfg.seed})   # unread that batch
    summary = trainer.fit()
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert task.cache.embeddings.shape[0] == 138                     # the teacher embeds them too


def test_unlabelled_batches_resume_and_errors(tmp_path):
    pk = PKBatchSampler(np.repeat(np.arange(8), 4), 4, 2, seed=3)
    wrapped = UnlabelledBatches(pk, first=32, count=5, per_batch=3, seed=3)
    full = list(wrapped)
    pk2 = PKBatchSampler(np.repeat(np.arange(8), 4), 4, 2, seed=3)
    pk2.load_state_dict({"epoch": 0, "position": 2, "seed": 3})
    assert list(UnlabelledBatches(pk2, first=32, count=5, per_batch=3, seed=3)) == full[2:]
    with pytest.raises(DataError, match="no images"):
        (tmp_path / "empty").mkdir()
        WithUnlabelled(SyntheticFaces(2, 2), [str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="data.unlabelled names no folder"):     # refused as the config loads
        tiny_config(tmp_path, "bad", train={"unlabelled_per_batch": 2})


def test_a_bad_unlabelled_face_is_replaced_by_another_unlabelled_one(tmp_path):
    folder = unlabelled_folder(tmp_path / "u", count=3)
    (folder / "nobody" / "001.png").write_bytes(b"not an image")
    labelled = SyntheticFaces(2, 2, seed=1, skip_bad_images=True)
    data = WithUnlabelled(labelled, [str(folder)])
    item = data[len(labelled) + 1]
    assert item["index"] == len(labelled) + 2 and item["label"] == UNLABELLED
    assert len(data.bad_images) == 1 and "001.png" in next(iter(data.bad_images.values()))
