"""Every shipped config builds: each ``configs/**/*.yaml`` (found by glob, so a new file or
folder is covered without touching this test) loads, and its model, its losses and its
teacher's spec are built without weights or data.  Networks are built on the meta device
(shapes only), which keeps IResNet-100 instant.  Each also keeps the layout's contract
(docs/DESIGN.md, "Configs"): one ``_base_`` a file, a chain of at most three files, ``name`` and
``output_dir`` from the path, a run directory of its own, and YAML that loads back equal."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest
import torch
import yaml

from facekd.config import CONFIG_DIR, load_config, to_yaml
from facekd.config_files import MAX_CHAIN, direct_bases, is_base_file
from facekd.data import PAIR_SOURCES, TRAIN_SOURCES
from facekd.data.augment import build_augment
from facekd.losses import TEACHER_FIELDS, build_losses
from facekd.models import build_model
from facekd.teachers import DLIB_BACKENDS, DLIB_FRAMING, TEACHERS, Framing, framing_from_config
from facekd.training.student_init import architecture_differences
from facekd.training.teaching import targets_name

CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_the_glob_finds_the_shipped_configs():
    assert len(CONFIGS) >= 5 and CONFIG_DIR / "base.yaml" in CONFIGS
    assert any(path.parent.parent == CONFIG_DIR / "experiments" for path in CONFIGS)


def base_chain(path: Path) -> List[Path]:
    """``path`` and the files below it (each a single ``_base_``; a list fails the test)."""
    files = [path.resolve()]
    while True:
        bases = direct_bases(files[-1])
        assert len(bases) <= 1, f"{files[-1]}: a shipped config names one _base_ (no diamonds), not {bases}"
        if not bases:
            return files
        files.append(bases[0])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(CONFIG_DIR)))
def test_shipped_config_is_one_delta_on_one_family_base(path, tmp_path):
    chain = base_chain(path)
    assert len(chain) <= MAX_CHAIN, f"{path}: the _base_ chain {[str(p) for p in chain]} is longer than {MAX_CHAIN}"
    for file in chain:
        assert not {"name", "output_dir"} & set(yaml.safe_load(file.read_text()) or {}), \
            f"{file}: name and output_dir come from the file's path"
    parts = path.relative_to(CONFIG_DIR).parts
    assert len(parts) == 1 or parts[0] == "experiments" and (len(parts) == 3 or is_base_file(path)), \
        "user-facing configs at the top, experiments in configs/experiments/<experiment>/"
    cfg = load_config(path)
    (tmp_path / "resolved.yaml").write_text(to_yaml(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_every_shipped_run_has_its_own_directory():
    runs = [load_config(path).output_dir for path in CONFIGS if not is_base_file(path)]
    assert len(runs) == len(set(runs)) and all(run.startswith("runs/") for run in runs)


def teacher_spec(teacher: Any) -> Tuple[int, Optional[int], Framing]:
    """``(embedding size, feature-map channels, framing)`` of a teacher config, without its weights."""
    assert teacher.kind in TEACHERS, teacher.kind
    if teacher.kind == "torch":
        with torch.device("meta"):
            network = build_model(teacher.model)
        framing = framing_from_config(teacher.framing, Framing(int(teacher.model.input_size)))
        return teacher.model.embedding_size, getattr(network, "feature_channels", None), framing
    if teacher.kind == "dlib":
        assert (teacher.backend or "torch") in DLIB_BACKENDS, teacher.backend
        return 128, None, framing_from_config(teacher.framing, DLIB_FRAMING)
    if teacher.kind == "sface":
        from facekd.teachers.onnx_teacher import SFACE_FRAMING

        return 128, None, framing_from_config(teacher.framing, SFACE_FRAMING)
    if teacher.kind == "ensemble":
        members = [teacher_spec(member) for member in teacher.members]
        assert members and len(teacher.member_weights) in (0, len(members))
        return sum(size for size, _, _ in members), None, members[0][2]
    raise AssertionError(f"teacher.kind {teacher.kind!r}: its spec needs its file; teach teacher_spec this kind")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(CONFIG_DIR)))
def test_shipped_config_builds_its_model_losses_and_teacher(path):
    cfg = load_config(path)
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert cfg.data.source in TRAIN_SOURCES and all(s.kind in PAIR_SOURCES for s in cfg.val.sets)
    build_augment(cfg.augment)
    context = {"num_classes": 10, "embedding_size": cfg.model.embedding_size,
               "student_channels": getattr(model, "feature_channels", None)}
    if cfg.teacher is not None:
        size, channels, framing = teacher_spec(cfg.teacher)
        assert framing.input_size > 0
        context.update(teacher_embedding_size=size, teacher_channels=channels)
    losses = build_losses(cfg.losses, **context)
    assert list(losses.terms)[0].startswith(cfg.losses[0]["name"])
    # what the student task would refuse when the run starts
    if losses.reads & TEACHER_FIELDS or cfg.init_from == "teacher":
        assert cfg.teacher is not None, "the losses (or init_from) need a teacher: section"
        targets_name(cfg.teacher, "teacher_feature_map" in losses.reads)
    if "student_logits" in losses.reads:
        assert losses.margin_head is not None, losses.readers("student_logits")
    if "student_feature_map" in losses.reads:
        assert hasattr(model, "forward_features")
    if cfg.init_from == "teacher":
        assert cfg.teacher.kind == "torch" and not architecture_differences(cfg.model, cfg.teacher.model)
