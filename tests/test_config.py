"""Config loading: base + override files, --set, typed values, unknown keys."""
from __future__ import annotations

from pathlib import Path

import pytest

from facekd.config import CONFIG_DIR, ExperimentConfig, config_digest, load_config, to_dict
from facekd.errors import ConfigError


def test_defaults_equal_base_yaml():
    """configs/base.yaml writes out the dataclass defaults exactly."""
    assert to_dict(load_config(CONFIG_DIR / "base.yaml")) == to_dict(load_config())


def test_override_file_merges_over_base(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {epochs: 7, amp: bf16}\nmodel: {name: iresnet18}\n")
    (tmp_path / "exp.yaml").write_text("_base_: base.yaml\ntrain: {epochs: 2}\n")
    cfg = load_config(tmp_path / "exp.yaml")
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.epochs == 2            # overridden
    assert cfg.train.amp == "bf16"          # inherited from the base
    assert cfg.model.name == "iresnet18"
    assert cfg.train.images_per_identity == 4   # dataclass default


def test_set_overrides_with_types_and_list_index():
    cfg = load_config(CONFIG_DIR / "student_mbf.yaml",
                      ["train.epochs=3", "optim.lr=1e-3", "losses.1.weight=0.5",
                       "teacher.checkpoint=/tmp/t.pth", "degrade.enabled=false"])
    assert cfg.train.epochs == 3
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.losses[1] == {"name": "triplet_distill", "weight": 0.5, "m_min": 0.2, "m_max": 0.5}
    assert cfg.teacher.checkpoint == "/tmp/t.pth"
    assert cfg.teacher.model.name == "iresnet100"
    assert cfg.degrade.enabled is False


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", r"unknown config key\(s\) train\.epoch"),
    ("modle.name=x", r"unknown config key\(s\) modle"),
    ("train.epochs=two", r"train\.epochs must be int, got 'two'"),
    ("train.epochs=2.5", r"train\.epochs must be an integer"),
    ("degrade.enabled=3", r"degrade\.enabled must be true or false"),
    ("losses.9.weight=1", r"'9' is not an index of a list of 1"),
    ("train", r"expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("_base_: " + str(CONFIG_DIR / "base.yaml") + "\nval:\n  sets:\n    - {name: a, knd: lfw}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key\(s\) val\.sets\.0\.knd"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


def test_every_shipped_config_loads():
    names = sorted(p.name for p in Path(CONFIG_DIR).glob("*.yaml"))
    assert "base.yaml" in names and "teacher_r100.yaml" in names and "student_mbf.yaml" in names
    for name in names:
        load_config(CONFIG_DIR / name)


def test_digest_is_stable_and_sensitive():
    assert config_digest(load_config()) == config_digest(load_config())
    assert config_digest(load_config()) != config_digest(load_config(None, ["seed=1"]))
