"""``data.on_device`` (facekd.training.device_views): the training faces as one uint8 tensor where the
model trains, each batch's views made there with the augmentations' batched forms.  Run on the CPU
(the code is the same on a GPU)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekd.data import SyntheticFaces
from facekd.data.augment import AUGMENTATIONS, build_augment
from facekd.errors import ConfigError
from facekd.training import StudentTask, Trainer
from facekd.training.data import TrainView, keep_uint8
from facekd.training.device_views import DeviceViews
from tests.test_teaching import AUGMENT
from tests.test_training import Interrupt, StopAt, student_overrides, teacher_ckpt, tiny_config, trainable_state  # noqa: F401


def smooth_faces(count: int) -> np.ndarray:
    """Smooth 112 px images (bilinear sampling of them differs from OpenCV's only by rounding)."""
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float64)
    faces = []
    for k in range(count):
        faces.append(np.stack([128 + 100 * np.sin(xx / (9 + k)) * np.cos(yy / 13), 128 + 90 * np.cos(xx / 7 + yy / 11),
                               (xx + yy + 20 * k) / 264 * 255], -1))
    return np.clip(faces, 0, 255).astype(np.uint8)


def as_batch(faces: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(faces).permute(0, 3, 1, 2).float()


def params_of(augmentation, count: int, seed: int = 1):
    drawn = augmentation.draw_batch(np.random.default_rng(seed), count)
    return drawn, {key: torch.as_tensor(value) for key, value in drawn.items()}


def test_batched_shift_scale_is_opencvs_warp():
    faces = smooth_faces(6)
    shift_scale = AUGMENTATIONS.build("shift_scale", max_shift=0.08, scale=[0.9, 1.1], max_rotation=10)
    drawn, params = params_of(shift_scale, 6)
    got = shift_scale.apply_batch(as_batch(faces), params).permute(0, 2, 3, 1).numpy()
    for i, face in enumerate(faces):
        matrix = cv2.getRotationMatrix2D((56.0, 56.0), drawn["angle"][i], drawn["scale"][i])
        matrix[:, 2] += drawn["shift"][i] * 112
        expected = cv2.warpAffine(face, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        inner = np.abs(got[i] - expected)[16:-16, 16:-16]        # the mirrored borders differ by a pixel's offset
        assert inner.mean() < 1.0 and np.percentile(inner, 99) <= 2.0, i
    identity = {**params, "apply": torch.zeros(6, dtype=torch.bool)}
    assert torch.equal(shift_scale.apply_batch(as_batch(faces), identity), as_batch(faces))


def test_batched_colour_jitter_and_mixup_compute_what_the_per_face_forms_compute():
    faces = smooth_faces(4)
    jitter = AUGMENTATIONS.build("colour_jitter", brightness=0.3, contrast=0.3, saturation=0.3)
    drawn, params = params_of(jitter, 4)
    got = jitter.apply_batch(as_batch(faces), params).permute(0, 2, 3, 1).numpy()
    for i, face in enumerate(faces):
        b, c, s = drawn["factors"][i]
        x = face.astype(np.float32) * b
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = (x - grey.mean()) * c + grey.mean()
        grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        expected = np.clip(np.rint((x - grey) * s + grey), 0, 255)
        assert np.abs(got[i] - expected).max() <= 1.0                   # float32 rounding at .5
    mixup = AUGMENTATIONS.build("mixup", prob=1.0, alpha=1.0)
    drawn, params = params_of(mixup, 4)
    partners = as_batch(faces[::-1].copy())
    mixed = mixup.apply_batch(as_batch(faces), params, partners)
    lam = torch.as_tensor(drawn["lam"]).float().reshape(-1, 1, 1, 1)
    assert (lam >= 0.5).all()
    assert torch.allclose(mixed, (lam * as_batch(faces) + (1 - lam) * partners).round(), atol=1.0)


def synthetic_view(augment=None, teacher_images=True, **options) -> TrainView:
    dataset = SyntheticFaces(6, 4, seed=3, transform=keep_uint8)
    return TrainView(dataset, seed=5, augment=build_augment(augment), teacher_images=teacher_images, **options)


def test_a_batch_holds_the_loaders_keys_and_is_the_same_each_time_it_is_made():
    view = synthetic_view(AUGMENT)
    device_views = DeviceViews(view, "cpu")
    assert device_views.faces.shape == (24, 112, 112, 3) and device_views.faces.dtype == torch.uint8
    pairs = [(2, i) for i in (0, 5, 9, 23)]
    batch = device_views.batch(pairs)
    assert set(batch) == {"image", "label", "index", "flipped", "view", "teacher_image"}
    assert batch["image"].shape == (4, 112, 112, 3) and batch["image"].dtype == torch.uint8
    assert batch["label"].tolist() == [int(view.dataset.labels[i]) for i in (0, 5, 9, 23)]
    assert batch["index"].tolist() == [0, 5, 9, 23] and batch["view"].tolist() == [-1] * 4
    assert torch.equal(batch["teacher_image"], batch["image"])
    again = device_views.batch(pairs)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    other_epoch = device_views.batch([(3, i) for _, i in pairs])
    assert not torch.equal(other_epoch["image"], batch["image"])


def test_without_augmentations_a_view_is_the_face_or_its_mirror():
    device_views = DeviceViews(synthetic_view(), "cpu")
    batch = device_views.batch([(0, i) for i in range(24)])
    for row, flipped in enumerate(batch["flipped"].tolist()):
        face = torch.from_numpy(np.ascontiguousarray(device_views.faces[row].numpy()))
        assert torch.equal(batch["image"][row], face.flip(1) if flipped else face)
    assert 0 < int(batch["flipped"].sum()) < 24


def test_views_made_per_face_on_the_host_are_refused():
    from facekd.data import Degradation

    with pytest.raises(ConfigError, match="degrade"):
        DeviceViews(synthetic_view(degrade=Degradation(min_size=14, max_size=40)), "cpu")
    with pytest.raises(ConfigError, match="view_cache"):
        DeviceViews(synthetic_view(views=2), "cpu")


def test_on_device_config_refuses_degradation(tmp_path, teacher_ckpt):
    over = student_overrides(teacher_ckpt, tmp_path / "cache", data={"on_device": True})
    with pytest.raises(ConfigError, match="data.on_device cannot go with degrade.enabled"):
        tiny_config(tmp_path, "refused", **over)


def test_an_on_device_online_run_learns_and_resumes_bit_identically(tmp_path, teacher_ckpt):
    over = student_overrides(teacher_ckpt, tmp_path / "cache", teacher={"targets": "online"}, augment=AUGMENT,
                             degrade={"enabled": False}, data={"on_device": True},
                             losses=[{"name": "feature_distill", "weight": 1.0, "metric": "cosine"}],
                             train={"epochs": 2, "checkpoint_every_steps": 3, "keep_step_checkpoints": 1})
    cfg_a = tiny_config(tmp_path, "a", **over)
    full = Trainer(cfg_a, StudentTask(cfg_a))
    summary = full.fit()
    assert type(full._loader).__name__ == "DeviceLoader" and full.step == 8
    losses = [row["loss"] for row in map(eval_json, (Path(cfg_a.output_dir) / "metrics.jsonl").read_text().splitlines())
              if "loss" in row]
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < np.mean(losses[:3])
    cfg_b = tiny_config(tmp_path, "b", **over)
    with pytest.raises(Interrupt):
        Trainer(cfg_b, StudentTask(cfg_b), hooks=[StopAt(7)]).fit()
    resumed = Trainer(cfg_b, StudentTask(cfg_b))
    resumed.fit(resume=str(Path(cfg_b.output_dir) / "last.pt"))
    assert resumed.step == full.step and summary["steps"] == 8
    expected, actual = trainable_state(full), trainable_state(resumed)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_gpu_carry_packs_every_labelled_face_and_unlabelled_ones_in_turn_within_the_budget(tmp_path):
    import tarfile

    from facekd.data import FolderDataset, write_image
    from tests.conftest import load_script

    carry = load_script("bench/gpu_carry.py")
    faces = SyntheticFaces(3, 2, seed=4)
    labelled, linked = tmp_path / "labelled", tmp_path / "tree"
    for i in range(6):
        write_image(labelled / f"person{i // 2}" / f"{i}.png", faces.load(i))
    linked.mkdir()
    for person in ("person0", "person1", "person2"):
        (linked / person).symlink_to(labelled / person)        # as the training tree links identity folders
    sources = []
    for name in ("a", "b"):
        for i in range(20):
            write_image(tmp_path / name / f"{i:02d}.png", SyntheticFaces(20, 1, seed=5 + len(sources)).load(i))
        sources.append(str(tmp_path / name))
    out = tmp_path / "carry" / "faces.tgz"
    assert carry.main(["--labelled", str(linked), "--unlabelled", *sources, "--out", str(out),
                       "--budget-mb", "0.06"]) == 0
    assert out.stat().st_size <= 0.06 * 2 ** 20
    with tarfile.open(out) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "unpacked", filter="data")
    assert sorted(n for n in names if n.startswith("labelled/")) == sorted(
        f"labelled/person{i // 2}/{i}.webp" for i in range(6))
    a = [n for n in names if n.startswith("unlabelled/a/")]
    b = [n for n in names if n.startswith("unlabelled/b/")]
    assert 0 < len(a) < 20 and abs(len(a) - len(b)) <= 1       # taken in turn until the budget ends
    dataset = FolderDataset(str(tmp_path / "unpacked" / "labelled"))
    assert len(dataset) == 6 and len(dataset.classes) == 3
    unpacked = dataset._load(0).astype(int)                      # WebP q85 of the same face (grain smoothed)
    assert np.abs(unpacked - faces.load(0)).mean() < 0.5 * np.abs(unpacked - faces.load(2)).mean()
