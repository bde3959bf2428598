"""PartialFC (facekd/losses/partial_fc.py): sampled class centres with the ArcFace/CosFace margin."""
from __future__ import annotations

import math

import pytest
import torch

from facekd.errors import ConfigError
from facekd.losses import LOSSES, LossInputs, build_losses
from facekd.losses.margin import ArcFace, CosFace, MarginHead

C, D, N = 50, 16, 12


def batch(seed: int = 0, n: int = N, classes: int = C):
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(n, D, generator=generator, requires_grad=True)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return embedding, labels


def pair(full_cls, partial_name, **params):
    """A full head and a PartialFC head with the same class centres."""
    torch.manual_seed(0)
    full = full_cls(C, D, **params)
    partial = LOSSES.build(partial_name, num_classes=C, embedding_size=D, **params, sample_rate=1.0)
    with torch.no_grad():
        partial.weight.copy_(full.weight)
    return full, partial


@pytest.mark.parametrize("full_cls, name, params", [(ArcFace, "partial_fc", {"scale": 32.0, "margin": 0.5}),
                                                    (CosFace, "partial_fc_cosface", {"scale": 30.0, "margin": 0.35})])
def test_sample_rate_one_is_exactly_the_full_head(full_cls, name, params):
    full, partial = pair(full_cls, name, **params)
    assert isinstance(partial, MarginHead) and isinstance(partial, full_cls)
    embedding, labels = batch()
    loss_full = full(LossInputs(student_embedding=embedding, labels=labels))
    grad_e_full, grad_w_full = torch.autograd.grad(loss_full, [embedding, full.weight])
    loss_partial = partial(LossInputs(student_embedding=embedding, labels=labels))
    grad_e_partial, grad_w_partial = torch.autograd.grad(loss_partial, [embedding, partial.weight])
    assert partial.num_sampled(N) == C and torch.equal(partial.last_index, torch.arange(C))
    assert torch.equal(loss_full, loss_partial)
    assert torch.equal(grad_e_full, grad_e_partial) and torch.equal(grad_w_full, grad_w_partial)
    # margin-free logits (Hinton KD) always cover every class
    assert torch.equal(full.logits(embedding), partial.logits(embedding))


def test_sampled_centres_include_the_labels_and_match_a_reference():
    torch.manual_seed(1)
    head = LOSSES.build("partial_fc", num_classes=C, embedding_size=D, sample_rate=0.3, scale=32.0, margin=0.4)
    k = head.num_sampled(N)
    assert k == math.ceil(0.3 * C) == 15
    for seed in range(20):
        embedding, labels = batch(seed)
        loss = head(LossInputs(student_embedding=embedding, labels=labels))
        index = head.last_index
        assert index.shape == (k,) and torch.equal(index, index.sort().values)
        assert len(torch.unique(index)) == k
        assert set(labels.tolist()) <= set(index.tolist())
        # reference: the full ArcFace head restricted to the sampled centres, labels renumbered
        reference = ArcFace(k, D, scale=32.0, margin=0.4)
        with torch.no_grad():
            reference.weight.copy_(head.weight[index])
        local = torch.tensor([index.tolist().index(int(y)) for y in labels])
        expected = reference(LossInputs(student_embedding=embedding, labels=local))
        assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-6)


def test_negatives_vary_between_steps_and_follow_the_global_generator():
    head = LOSSES.build("partial_fc", num_classes=C, embedding_size=D, sample_rate=0.3)
    embedding, labels = batch(3)
    torch.manual_seed(7)
    first = [head.sample_centres(labels) for _ in range(3)]
    torch.manual_seed(7)
    again = [head.sample_centres(labels) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))      # resume restores the generator
    assert not torch.equal(first[0], first[1])


def test_gradient_reaches_only_the_sampled_centres():
    torch.manual_seed(2)
    head = LOSSES.build("partial_fc", num_classes=C, embedding_size=D, sample_rate=0.2)
    embedding, labels = batch(4)
    head(LossInputs(student_embedding=embedding, labels=labels)).backward()
    sampled = torch.zeros(C, dtype=torch.bool)
    sampled[head.last_index] = True
    row_norm = head.weight.grad.norm(dim=1)
    assert int(sampled.sum()) == max(math.ceil(0.2 * C), N)
    assert torch.all(row_norm[~sampled] == 0)
    assert torch.all(row_norm[sampled] > 0)


def test_batch_with_more_classes_than_the_rate_keeps_every_positive():
    head = LOSSES.build("partial_fc", num_classes=1000, embedding_size=D, sample_rate=0.01)
    embedding = torch.randn(64, D)
    labels = torch.randperm(1000)[:64]                      # 64 distinct classes > ceil(0.01 * 1000)
    assert head.num_sampled(64) == 64
    head(LossInputs(student_embedding=embedding, labels=labels))
    assert set(head.last_index.tolist()) == set(labels.tolist())


def test_eval_mode_scores_all_centres_and_bad_rate_is_a_config_error():
    full, partial = pair(ArcFace, "partial_fc", scale=64.0, margin=0.5)
    partial.sample_rate = 0.1
    embedding, labels = batch(5)
    partial.eval()
    assert torch.equal(partial(LossInputs(student_embedding=embedding, labels=labels)),
                       full(LossInputs(student_embedding=embedding, labels=labels)))
    for rate in (0.0, 1.5):
        with pytest.raises(ConfigError, match="sample_rate"):
            LOSSES.build("partial_fc", num_classes=C, embedding_size=D, sample_rate=rate)


def test_build_losses_makes_it_the_margin_head():
    criterion = build_losses([{"name": "partial_fc", "sample_rate": 0.5, "scale": 32.0}], num_classes=C,
                             embedding_size=D)
    assert criterion.margin_head is criterion.terms["partial_fc"] and criterion.margin_head_key == "partial_fc"
    embedding, labels = batch(6)
    total, terms = criterion(LossInputs(student_embedding=embedding, labels=labels))
    assert float(total.detach()) == pytest.approx(float(terms["partial_fc"]))


def test_teacher_run_with_partial_fc_saves_a_head_the_student_can_load(tmp_path):
    from test_training import tiny_config

    from facekd.config import load_config
    from facekd.teachers import load_teacher
    from facekd.training import load_checkpoint, run_training

    cfg = tiny_config(tmp_path, "pfc", losses=[{"name": "partial_fc", "sample_rate": 0.5, "scale": 32.0,
                                                "margin": 0.3}], train={"max_steps_per_epoch": 3})
    summary = run_training(cfg, "teacher")
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    state = load_checkpoint(summary["last"])
    assert state["head"]["name"] == "partial_fc" and state["head"]["params"]["sample_rate"] == 0.5
    teacher = load_teacher(load_config(None, [f"teacher.checkpoint={summary['last']}"]).teacher)
    assert type(teacher.head).__name__ == "PartialFC" and teacher.head.num_classes == 16
    assert torch.equal(teacher.head.weight, state["head"]["state_dict"]["weight"])
