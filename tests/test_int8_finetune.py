"""Quantisation-aware fine-tuning (``facekd int8-finetune``, :mod:`facekd.export.int8_finetune`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.cli import main
from facekd.errors import ConfigError
from facekd.export import load_checkpoint_model
from facekd.export.faces import synthetic_faces
from facekd.export.fold import find_fold_pairs, fold_batchnorm
from facekd.export.int8_finetune import (REDUCED_WEIGHT_LEVELS, WEIGHT_LEVELS, ActivationQuantizer, SimulatedConv,
                                         SimulatedPReLU, fake_quantize_weight, finetune_for_int8, freeze_ranges,
                                         remove_simulation, simulate_int8, unfold_into)
from facekd.export.int8_options import DEFAULT_INT8
from facekd.models.mobilefacenet import mobilefacenet
from facekd.models.checkpoint import read_checkpoint
from facekd.preprocess import normalize_uint8
from facekd.training.checkpoint import CHECKPOINT_FORMAT


def _student(seed: int = 0, size: int = 56) -> torch.nn.Module:
    """A MobileFaceNet with non-trivial BatchNorm statistics (a few train-mode batches)."""
    torch.manual_seed(seed)
    model = mobilefacenet(embedding_size=32, input_size=size)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    return model.eval()


def test_weight_rounding_is_symmetric_int8_per_output_channel():
    weight = torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 0.1, 10.0, 0.01]).view(4, 1, 1, 1)
    rounded = fake_quantize_weight(weight)
    for channel in range(4):
        scale = weight[channel].abs().max() / 127
        levels = rounded[channel] / scale
        assert torch.allclose(levels, levels.round(), atol=1e-3)          # on the channel's own grid
        assert levels.abs().max().round() == 127                         # the channel's max is exact
        assert (rounded[channel] - weight[channel]).abs().max() <= scale / 2 + 1e-6


def test_activation_rounding_observes_then_rounds_to_256_levels_with_zero_exact():
    quantizer = ActivationQuantizer()
    x = torch.linspace(-1.0, 3.0, 1001)
    assert torch.equal(quantizer(x), x)                                  # observing: unchanged
    quantizer.observing = False
    y = quantizer(torch.cat([x, torch.tensor([0.0, 5.0])]))
    assert len(torch.unique(y)) <= 256 and y[-2] == 0.0                  # 0 is exact
    assert y[-1] == y.max() and y[-1] == pytest.approx(3.0, abs=4.0 / 255)    # clipped to the observed range
    assert (y[:-2] - x).abs().max() <= 4.0 / 255 / 2 + 1e-6
    grad = torch.ones_like(x, requires_grad=True)
    (quantizer(grad * x)).sum().backward()
    assert torch.equal(grad.grad[10:-10], x[10:-10])                     # straight-through inside the range
    assert grad.grad[-1] == 0                                            # none where it clips


def test_fold_then_unfold_is_the_same_model_with_the_same_keys():
    model = _student()
    folded = fold_batchnorm(model)
    tuned = unfold_into(model, folded, find_fold_pairs(model))
    assert list(tuned.state_dict()) == list(model.state_dict())
    x = torch.randn(5, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(tuned(x), model(x), atol=1e-5, rtol=1e-4)


def test_simulation_wraps_every_layer_and_is_exact_until_its_ranges_freeze():
    model = _student()
    folded = fold_batchnorm(model)
    sim = simulate_int8(folded)
    convs = [m for m in sim.modules() if isinstance(m, SimulatedConv)]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert [c.quantize for c in convs].count(False) == 1 and not convs[-1].quantize    # "last" stays float
    assert sum(isinstance(m, SimulatedPReLU) for m in sim.modules()) == \
        sum(isinstance(m, torch.nn.PReLU) for m in model.modules())
    x = torch.randn(6, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(sim(x), folded(x), atol=1e-6)              # observing = float
        freeze_ranges(sim)
        rounded = sim(x)
        cosine = torch.nn.functional.cosine_similarity(rounded, folded(x))
    assert 0.9 < cosine.min() < 0.99999                                  # rounded, but close
    plain = remove_simulation(sim)
    with torch.no_grad():
        assert torch.allclose(plain(x), folded(x), atol=1e-6)


def test_unobserved_ranges_and_bad_arguments_are_refused():
    sim = simulate_int8(fold_batchnorm(_student()))
    with pytest.raises(ConfigError, match="saw no data"):
        freeze_ranges(sim)
    with pytest.raises(ConfigError, match="'first' and 'last' only"):
        simulate_int8(fold_batchnorm(_student()), keep_float=("Conv_3",))
    with pytest.raises(ConfigError, match="steps >= 0"):
        finetune_for_int8(_student(), synthetic_faces(4), steps=-1)


def _fragile_student() -> torch.nn.Module:
    """A student INT8 hurts: BatchNorm variances over 3 decades give per-tensor ranges with outliers."""
    model = _student()
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.copy_(torch.exp(torch.empty(module.num_features).uniform_(-5, 2, generator=generator)))
    return model


@pytest.fixture(scope="module")
def fragile_finetune():
    """``(model, tuned, report, faces, held_out)``: the fragile student fine-tuned for 20 steps."""
    model = _fragile_student()
    faces, held_out = synthetic_faces(32, seed=3), synthetic_faces(16, seed=4)
    tuned, report = finetune_for_int8(model, faces, steps=20, lr=1e-4, batch_size=8, eval_faces=held_out)
    return model, tuned, report, faces, held_out


def test_finetuning_reduces_the_simulated_int8_drift_on_held_out_faces(fragile_finetune):
    model, tuned, report, _, held_out = fragile_finetune
    assert report.quantizers > 100 and report.faces == 32
    assert report.simulated_before["mean"] < 0.9                         # measured: 0.85
    assert report.simulated_after["mean"] > report.simulated_before["mean"] + 0.03   # measured: 0.94 (30 steps)
    assert report.loss_last < report.loss_first
    x = normalize_uint8(held_out[:, ::2, ::2])                           # 56 px
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(tuned(x), model(x))
    assert cosine.mean() > 0.9                                           # still the user's function


def test_onnxruntime_int8_of_the_finetuned_student_drifts_less(fragile_finetune, tmp_path):
    from facekd.export import check_int8, export_onnx, quantize_int8

    model, tuned, _, faces, held_out = fragile_finetune
    drift = {}
    for name, student in (("original", model), ("tuned", tuned)):
        fp32 = tmp_path / f"{name}.onnx"
        export_onnx(student, fp32, input_format="uint8")
        report = check_int8(quantize_int8(fp32, tmp_path / f"{name}_int8.onnx", faces, threads=1), held_out, threads=1)
        drift[name] = report.drift.mean_cosine
    assert drift["tuned"] > drift["original"] + 0.03                     # measured (40 steps): 0.80 -> 0.91


def test_command_writes_a_shipped_model_that_export_reads(tmp_path, capsys):
    model = _student()
    source = tmp_path / "student.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model_config": {"name": "mobilefacenet", "embedding_size": 32,
                                                             "input_size": 56},
                "state_dict": model.state_dict(), "provenance": {"name": "s", "seed": 0}}, source)
    faces = tmp_path / "faces" / "person"
    faces.mkdir(parents=True)
    import cv2
    for index, face in enumerate(synthetic_faces(12)):
        cv2.imwrite(str(faces / f"{index}.png"), face[:, :, ::-1])
    out = tmp_path / "tuned.pt"
    assert main(["int8-finetune", str(source), "--faces", str(tmp_path / "faces"), "--out", str(out),
                 "--steps", "3", "--batch-size", "4"]) == 0
    shipped = read_checkpoint(out)
    assert shipped["provenance"]["name"] == "s" and shipped["provenance"]["int8_finetune"]["steps"] == 3
    tuned, info = load_checkpoint_model(out)
    assert info.model_config["input_size"] == 56
    assert set(tuned.state_dict()) == set(model.state_dict())
    assert not np.allclose(tuned.state_dict()["conv1.0.weight"].numpy(), model.state_dict()["conv1.0.weight"].numpy())


def test_simulated_weights_have_the_export_s_range():
    """7-bit weights ([-64, 64], the export's default reduce_range) or 8-bit ([-127, 127]), one scale per channel."""
    weight = torch.randn(4, 3, 3, 3)
    for levels in (WEIGHT_LEVELS, REDUCED_WEIGHT_LEVELS):
        steps = fake_quantize_weight(weight, levels) / (weight.abs().flatten(1).amax(1) / levels[1]).view(-1, 1, 1, 1)
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert steps.abs().flatten(1).amax(1).round().tolist() == [levels[1]] * 4      # each channel reaches the end
    folded = fold_batchnorm(_student())
    for reduce_range, levels in ((DEFAULT_INT8.reduce_range, REDUCED_WEIGHT_LEVELS), (False, WEIGHT_LEVELS)):
        convs = [m for m in simulate_int8(folded, reduce_range=reduce_range).modules() if isinstance(m, SimulatedConv)]
        assert {conv.weight_levels for conv in convs} == {levels}
