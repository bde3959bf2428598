"""Pseudo-quantisation noise (``train.quant_noise``): its size, where it is added, that eval mode is exact,
and the gradient through its step size (``train.quant_noise_range_grad``)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facekd.config import ModelConfig
from facekd.errors import ConfigError
from facekd.models import build_model
from facekd.models.mobilefacenet import Bottleneck
from facekd.training import TeacherTask, Trainer
from facekd.training.quant_noise import LEVELS, add_quant_noise, attach_quant_noise
from tests.test_training import tiny_config


def test_noise_is_uniform_over_strength_rounding_steps_one_pattern_per_batch_and_passes_the_gradient():
    torch.manual_seed(0)
    x = (torch.rand(4, 200_000) * 6.0 - 2.0).requires_grad_()    # range 6: one uint8 step is 6 / 255
    strength = 2.0
    noisy = add_quant_noise(x, strength)
    noise = (noisy - x).detach()
    assert torch.allclose(noise, noise[:1].expand_as(noise), atol=1e-6)       # one pattern, shared by the batch
    step = float(x.detach().max() - x.detach().min()) / LEVELS
    half = step * strength / 2
    assert half * 0.99 < float(noise.abs().max()) <= half + 1e-6
    assert float(noise.std()) == pytest.approx(step * strength / math.sqrt(12), rel=0.01)
    assert abs(float(noise.mean())) < 0.01 * step
    noisy.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_range_grad_sends_the_step_size_gradient_to_the_extreme_elements_only():
    torch.manual_seed(1)
    strength = 2.0
    x = torch.randn(3, 500)
    weights = torch.randn(3, 500)
    for range_grad in (False, True):
        leaf = x.clone().requires_grad_()
        torch.manual_seed(2)
        noisy = add_quant_noise(leaf, strength, range_grad=range_grad)
        (noisy * weights).sum().backward()
        if not range_grad:
            assert torch.equal(leaf.grad, weights)
            continue
        unit = (noisy - leaf).detach() / (float(x.max() - x.min()) * strength / LEVELS)   # U(-1/2, 1/2)
        through_step = float((weights * unit).sum()) * strength / LEVELS
        expected = weights.clone()
        expected.view(-1)[int(x.argmax())] += through_step
        expected.view(-1)[int(x.argmin())] -= through_step
        assert torch.allclose(leaf.grad, expected, atol=1e-5)
    # the expected effect: a loss that grows with the noise pulls the range in from both ends
    leaf = x.clone().requires_grad_()
    (add_quant_noise(leaf, strength, range_grad=True) - x).pow(2).sum().backward()
    assert float(leaf.grad.view(-1)[int(x.argmax())]) > 0 > float(leaf.grad.view(-1)[int(x.argmin())])


def test_mobilefacenet_gets_noise_at_each_rounded_output_in_training_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mobilefacenet", embedding_size=32, input_size=56))
    clean = build_model(ModelConfig(name="mobilefacenet", embedding_size=32, input_size=56))
    clean.load_state_dict(model.state_dict())
    rounded = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.PReLU, Bottleneck))]
    handles = attach_quant_noise(model, 1.0)
    assert len(handles) == len(rounded) > 60
    x = torch.randn(4, 3, 56, 56)
    model.eval(), clean.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clean(x))                  # validation and export see the plain function
        model.train(), clean.train()
        first, second, reference = model(x), model(x), clean(x)
    assert not torch.equal(first, second)
    cosine = torch.nn.functional.cosine_similarity(first, reference)
    assert float(cosine.min()) > 0.9 and float(cosine.max()) < 1.0 - 1e-6   # small, but there
    assert model.state_dict().keys() == clean.state_dict().keys()
    for handle in handles:
        handle.remove()
    model.train()
    with torch.no_grad():
        assert torch.equal(model(x), clean(x))


def test_zero_strength_attaches_nothing():
    model = build_model(ModelConfig(name="mobilefacenet", embedding_size=32, input_size=56))
    assert attach_quant_noise(model, 0.0) == []
    assert not any(m._forward_hooks for m in model.modules())


def test_trainer_attaches_the_configured_noise_to_the_backbone(tmp_path):
    cfg = tiny_config(tmp_path, "noisy", train={"quant_noise": 1.5, "quant_noise_range_grad": True})
    trainer = Trainer(cfg, TeacherTask(cfg))
    trainer.build()
    hooked = [m for m in trainer.task.backbone.modules() if m._forward_hooks]
    assert hooked and all(isinstance(m, (nn.BatchNorm2d, nn.PReLU)) for m in hooked)
    assert {(hook.strength, hook.range_grad) for m in hooked for hook in m._forward_hooks.values()} == {(1.5, True)}
    plain_cfg = tiny_config(tmp_path, "plain")
    plain = Trainer(plain_cfg, TeacherTask(plain_cfg))
    plain.build()
    assert not any(m._forward_hooks for m in plain.task.backbone.modules())


@pytest.mark.parametrize("value", [-0.5, 17.0])
def test_out_of_range_strength_is_refused_by_name(tmp_path, value):
    with pytest.raises(ConfigError, match="train.quant_noise"):
        tiny_config(tmp_path, "bad", train={"quant_noise": value})


def test_range_grad_without_noise_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="train.quant_noise_range_grad"):
        tiny_config(tmp_path, "bad", train={"quant_noise_range_grad": True})
