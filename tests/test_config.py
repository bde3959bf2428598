"""Config loading: base + override files, --set, typed values, unknown keys."""
from __future__ import annotations

from pathlib import Path

import pytest

from facekd.config import CONFIG_DIR, ExperimentConfig, config_digest, load_config, to_dict
from facekd.errors import ConfigError


def test_defaults_equal_base_yaml():
    """configs/base.yaml gives the dataclass defaults exactly (it sets nothing: they are the one source)."""
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
    names = sorted(str(p.relative_to(CONFIG_DIR)) for p in Path(CONFIG_DIR).rglob("*.yaml"))
    assert "base.yaml" in names and "teacher_r100.yaml" in names and "student_mbf.yaml" in names
    for name in names:
        load_config(CONFIG_DIR / name)


def test_digest_is_stable_and_sensitive():
    assert config_digest(load_config()) == config_digest(load_config())
    assert config_digest(load_config()) != config_digest(load_config(None, ["seed=1"]))


def test_name_and_output_dir_come_from_the_path_unless_set(tmp_path):
    hinton = load_config(CONFIG_DIR / "experiments" / "cpu_scale" / "student_hinton.yaml")
    assert (hinton.name, hinton.output_dir) == ("cpu_scale/student_hinton", "runs/cpu_scale/student_hinton")
    assert load_config("cpu_scale/student_hinton") == hinton            # a name is looked up in experiments/
    teacher = load_config("teacher_synthetic")
    assert (teacher.name, teacher.output_dir) == ("teacher_synthetic", "runs/teacher_synthetic")
    (tmp_path / "mine.yaml").write_text("train: {epochs: 2}\n")
    mine = load_config(tmp_path / "mine.yaml")
    assert (mine.name, mine.output_dir) == ("mine", "runs/mine")         # elsewhere: the file's stem
    moved = load_config(tmp_path / "mine.yaml", ["output_dir=/tmp/elsewhere"])
    assert (moved.name, moved.output_dir) == ("mine", "/tmp/elsewhere")  # --set wins
    (tmp_path / "family_base.yaml").write_text("output_dir: out/family\n")
    (tmp_path / "run.yaml").write_text("_base_: family_base.yaml\nname: my_run\n")
    run = load_config(tmp_path / "run.yaml")
    assert (run.name, run.output_dir) == ("my_run", "out/family")         # set by the file or a base: kept
    for base in (CONFIG_DIR / "experiments" / "cpu_base.yaml", tmp_path / "family_base.yaml"):
        assert load_config(base).name == "default"                        # a base is not a run


def test_config_command_prints_the_resolved_yaml(tmp_path, capsys):
    from facekd.cli import main

    assert main(["config", "cpu_scale/student_hinton", "--set", "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed)
    assert load_config(tmp_path / "printed.yaml") == load_config("cpu_scale/student_hinton", ["train.epochs=2"])
    assert "output_dir: runs/cpu_scale/student_hinton\n" in printed and "epochs: 2\n" in printed
    assert main(["config"]) == 0                                          # no file: the defaults
    (tmp_path / "defaults.yaml").write_text(capsys.readouterr().out)
    assert load_config(tmp_path / "defaults.yaml") == load_config()
    assert main(["config", "teacher_synthetic", "--set", "train.epoch=2"]) == 2
    assert "unknown config key(s) train.epoch" in capsys.readouterr().err

