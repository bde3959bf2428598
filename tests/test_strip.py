"""``facekd strip``: a training checkpoint -> weights + model config only (the shipped students)."""
from __future__ import annotations

import torch

from facekd.cli import main
from facekd.models import build_model, load_pretrained
from facekd.config import ModelConfig
from facekd.models.checkpoint import read_checkpoint
from facekd.training.checkpoint import SHIPPED_KEYS, strip_checkpoint
from tests.test_training import teacher_ckpt  # noqa: F401  (fixture)


def test_strip_keeps_the_model_and_drops_the_training_state(tmp_path, teacher_ckpt):
    out = tmp_path / "shipped.pt"
    provenance = strip_checkpoint(teacher_ckpt, out)
    shipped, full = read_checkpoint(out), read_checkpoint(teacher_ckpt)
    assert set(shipped) == {"format", *SHIPPED_KEYS, "provenance"}
    assert provenance["step"] == full["step"] and provenance["name"] == full["config"]["name"]
    assert out.stat().st_size < 0.6 * __import__("os").path.getsize(teacher_ckpt)     # no optimiser / head state
    config = ModelConfig(**{k: v for k, v in shipped["model_config"].items()})
    a, b = build_model(config).eval(), build_model(config).eval()
    load_pretrained(a, teacher_ckpt)
    load_pretrained(b, out)
    faces = torch.randn(3, 3, config.input_size, config.input_size)
    assert torch.equal(a(faces), b(faces))


def test_strip_command_refuses_a_file_that_is_not_a_training_checkpoint(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "odd.pt")
    assert main(["strip", str(tmp_path / "odd.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "odd.pt: not a facekd training checkpoint (no model_config, state_dict)" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
