"""Losses: hand-computed values on tiny tensors, numpy-loop references, build_losses."""
from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekd.config import load_config
from facekd.errors import ConfigError
from facekd.losses import (LOSSES, TEACHER_FIELDS, ArcFace, CosFace, Loss, LossInputs, WeightedLoss,
                           adaptive_margin, build_losses, mine_triplets)
from facekd.registry import Registry

S = 64.0


def unit(deg):
    """2-D unit vector at ``deg`` degrees."""
    rad = math.radians(deg)
    return [math.cos(rad), math.sin(rad)]


def head_with_axes(cls, **kw):
    """A 2-class, 2-D head whose class centres are the x and y axes."""
    head = cls(num_classes=2, embedding_size=2, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    return head


def inputs(student, labels, **kw):
    return LossInputs(student_embedding=torch.as_tensor(student, dtype=torch.float32),
                      labels=torch.as_tensor(labels, dtype=torch.long), **kw)


# ----------------------------------------------------------------------------- margin heads

def test_arcface_target_logit_is_cos_theta_plus_m():
    head = head_with_axes(ArcFace)                     # s=64, m=0.5
    x = torch.tensor([unit(60.0)])                     # cos(theta_0) = 0.5, cos(theta_1) = cos 30
    logits = head.logits(x, torch.tensor([0]))
    expected = [S * math.cos(math.pi / 3 + 0.5), S * math.cos(math.pi / 6)]
    assert logits[0].tolist() == pytest.approx(expected, abs=1e-4)
    # margin-free logits: s * cos for every class
    assert head.logits(x)[0].tolist() == pytest.approx([S * 0.5, S * math.cos(math.pi / 6)], abs=1e-4)
    # forward is cross entropy on the margin logits
    e = np.exp(np.array(expected) - max(expected))
    ce = -math.log(e[0] / e.sum())
    assert head(inputs(x, [0])).item() == pytest.approx(ce, rel=1e-5)


def test_arcface_fallback_when_theta_plus_m_passes_pi():
    m = 0.5
    head = head_with_axes(ArcFace, scale=1.0, margin=m)
    theta = math.radians(170.0)                        # theta + m > pi
    x = torch.tensor([[math.cos(theta), math.sin(theta)]])
    target = head.logits(x, torch.tensor([0]))[0, 0].item()
    assert target == pytest.approx(math.cos(theta) - math.sin(math.pi - m) * m, abs=1e-5)
    # just inside the valid range the real cos(theta + m) is used
    theta = math.pi - m - 0.05
    x = torch.tensor([[math.cos(theta), math.sin(theta)]])
    assert head.logits(x, torch.tensor([0]))[0, 0].item() == pytest.approx(math.cos(theta + m), abs=1e-5)


def test_arcface_easy_margin_leaves_obtuse_angles_alone():
    head = head_with_axes(ArcFace, scale=1.0, margin=0.5, easy_margin=True)
    x = torch.tensor([unit(120.0), unit(45.0)])
    logits = head.logits(x, torch.tensor([0, 0]))
    assert logits[0, 0].item() == pytest.approx(math.cos(math.radians(120.0)), abs=1e-5)
    assert logits[1, 0].item() == pytest.approx(math.cos(math.radians(45.0) + 0.5), abs=1e-5)


def test_arcface_gradient_finite_when_embedding_equals_centre():
    head = head_with_axes(ArcFace)
    x = torch.tensor([[3.0, 0.0], [0.0, 2.0]], requires_grad=True)
    head(inputs(x, [0, 1])).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_cosface_target_logit():
    head = head_with_axes(CosFace)                     # s=64, m=0.35
    x = torch.tensor([unit(60.0)])
    logits = head.logits(x, torch.tensor([1]))
    assert logits[0].tolist() == pytest.approx([S * 0.5, S * (math.cos(math.pi / 6) - 0.35)], abs=1e-4)


def test_margin_head_init_and_shape_check():
    head = LOSSES.build("arcface", num_classes=1000, embedding_size=64)
    assert head.weight.shape == (1000, 64)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="N x 64"):
        head.logits(torch.randn(3, 32))


# ----------------------------------------------------------------------------- adaptive margin

def test_adaptive_margin_values():
    d = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0])
    margin = adaptive_margin(d, m_min=0.2, m_max=0.5, d_max=1.0)
    assert margin.tolist() == pytest.approx([0.2, 0.275, 0.35, 0.5, 0.5])   # linear, then clipped
    assert adaptive_margin(d, 0.2, 0.5).tolist() == pytest.approx([0.2, 0.2375, 0.275, 0.35, 0.5])
    assert adaptive_margin(torch.zeros(3), 0.2, 0.5).tolist() == pytest.approx([0.2] * 3)  # d_max 0
    assert adaptive_margin(torch.tensor([-0.3]), 0.2, 0.5, 1.0).tolist() == pytest.approx([0.2])


# ----------------------------------------------------------------------------- triplets

def np_dist(x):
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0.0))


def np_valid_triplets(labels):
    n = len(labels)
    for a, p, q in itertools.product(range(n), repeat=3):
        if a != p and labels[a] == labels[p] and labels[q] != labels[a]:
            yield a, p, q


def np_distill_margins(teacher, labels, m_min=0.2, m_max=0.5):
    """triplet -> F(d), with d_max the largest d over all valid triplets (plain loops)."""
    t = np_dist(teacher)
    d = {tr: max(t[tr[0], tr[2]] - t[tr[0], tr[1]], 0.0) for tr in np_valid_triplets(labels)}
    d_max = max(d.values())
    return {tr: m_min + (m_max - m_min) * v / d_max if d_max > 0 else m_min for tr, v in d.items()}


def np_semihard(student, labels, margins):
    """FaceNet semi-hard selection, looped: closest negative in the band, else the closest."""
    s = np_dist(student)
    chosen = []
    for a, p in itertools.product(range(len(labels)), repeat=2):
        if a == p or labels[a] != labels[p]:
            continue
        negs = [q for q in range(len(labels)) if labels[q] != labels[a]]
        band = [q for q in negs if s[a, p] < s[a, q] < s[a, p] + margins[(a, p, q)]]
        chosen.append((a, p, min(band or negs, key=lambda q: s[a, q])))
    return chosen


@pytest.fixture
def pk_batch():
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    centres = torch.randn(3, 6, generator=gen)
    student = centres[labels] + 0.9 * torch.randn(9, 6, generator=gen)
    teacher = centres[labels] @ torch.randn(6, 10, generator=gen) + 0.5 * torch.randn(9, 10, generator=gen)
    return student, teacher, labels


def test_triplet_distill_all_matches_numpy_loop_on_four_samples():
    student = torch.tensor([[1.0, 0.1], [0.6, 0.8], [0.9, -0.4], [-0.2, 1.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.2], [0.8, 0.3, 0.1], [0.1, 1.0, 0.0], [0.3, 0.2, 1.0]])
    labels = [0, 0, 1, 1]
    margins = np_distill_margins(teacher.numpy(), labels)
    s = np_dist(student.numpy())
    losses = [max(s[a, p] - s[a, q] + margins[(a, p, q)], 0.0) for a, p, q in margins]
    assert len(losses) == 8
    positive = [v for v in losses if v > 0]
    expected = sum(positive) / len(positive)
    loss = LOSSES.build("triplet_distill", mining="all")(inputs(student, labels, teacher_embedding=teacher))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_triplet_distill_semihard_matches_numpy_loop(pk_batch):
    student, teacher, labels = pk_batch
    margins = np_distill_margins(teacher.numpy(), labels.tolist())
    s = np_dist(student.numpy())
    chosen = np_semihard(student.numpy(), labels.tolist(), margins)
    expected = np.mean([max(s[a, p] - s[a, q] + margins[(a, p, q)], 0.0) for a, p, q in chosen])
    loss = LOSSES.build("triplet_distill")(inputs(student, labels, teacher_embedding=teacher))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_triplet_distill_fixed_d_max_and_hard_mining(pk_batch):
    student, teacher, labels = pk_batch
    t, s = np_dist(teacher.numpy()), np_dist(student.numpy())
    expected = []
    for a in range(len(labels)):
        pos = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(len(labels)) if labels[q] != labels[a]]
        p, q = max(pos, key=lambda j: s[a, j]), min(neg, key=lambda j: s[a, j])
        d = min(max(t[a, q] - t[a, p], 0.0), 0.4)
        expected.append(max(s[a, p] - s[a, q] + 0.1 + 0.5 * d / 0.4, 0.0))
    loss = LOSSES.build("triplet_distill", m_min=0.1, m_max=0.6, d_max=0.4, mining="hard")
    got = loss(inputs(student, labels, teacher_embedding=teacher)).item()
    assert got == pytest.approx(np.mean(expected), rel=1e-5)


def test_plain_triplet_semihard_matches_numpy_loop(pk_batch):
    student, _, labels = pk_batch
    margins = {tr: 0.3 for tr in np_valid_triplets(labels.tolist())}
    s = np_dist(student.numpy())
    chosen = np_semihard(student.numpy(), labels.tolist(), margins)
    expected = np.mean([max(s[a, p] - s[a, q] + 0.3, 0.0) for a, p, q in chosen])
    assert LOSSES.build("triplet")(inputs(student, labels)).item() == pytest.approx(expected, rel=1e-5)


def test_hard_mining_picks_farthest_positive_and_closest_negative():
    # angles on the unit circle: identity 0 at 0, 10, 40 degrees; identity 1 at 50, 90, 180
    x = torch.tensor([unit(a) for a in (0.0, 10.0, 40.0, 50.0, 90.0, 180.0)])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    t = mine_triplets(x, labels, mining="hard")
    assert t.anchor.tolist() == [0, 1, 2, 3, 4, 5]
    assert t.positive.tolist() == [2, 2, 0, 5, 5, 3]
    assert t.negative.tolist() == [3, 3, 3, 2, 2, 2]


def test_semihard_mining_band_and_fallback():
    x = torch.tensor([unit(a) for a in (0.0, 30.0, 40.0, 50.0, 25.0)])
    labels = torch.tensor([0, 0, 1, 1, 2])
    t = mine_triplets(x, labels, mining="semihard", margin=0.3)
    chosen = {(a, p): n for a, p, n in zip(*(v.tolist() for v in (t.anchor, t.positive, t.negative)))}
    # anchor 0 / positive 1 (30 deg): the band ends near 48 deg, so only the 40-degree negative (2);
    # the 25-degree negative is closer than the positive, so not semi-hard
    assert chosen[(0, 1)] == 2
    # anchor 1 / positive 0 (30 deg): negatives at 10, 20, 5 deg are all closer -> fallback to
    # the hardest (closest), the 25-degree one
    assert chosen[(1, 0)] == 4
    assert (4, 4) not in chosen and len(t) == 4    # identity 2 has no positive


def test_triplet_without_valid_triplets_is_zero_and_backward_works():
    x = torch.randn(4, 8, requires_grad=True)
    for mining in ("semihard", "hard", "all"):
        loss = LOSSES.build("triplet", mining=mining)(inputs(x, [0, 1, 2, 3]))
        assert loss.item() == 0.0
        loss.backward()


def test_triplet_distill_gradient_reaches_student_only(pk_batch):
    student, teacher, labels = pk_batch
    student, teacher = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    LOSSES.build("triplet_distill", mining="all")(
        inputs(student, labels, teacher_embedding=teacher)).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


# ----------------------------------------------------------------------------- feature losses

def test_feature_distill_cosine_and_l2_values():
    student = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    teacher = torch.tensor([[1.0, 1.0], [0.0, -5.0]])
    cos = [1 / math.sqrt(2), -1.0]
    got = LOSSES.build("feature_distill", metric="cosine")(inputs(student, [0, 1], teacher_embedding=teacher))
    assert got.item() == pytest.approx(np.mean([1 - c for c in cos]), rel=1e-6)
    got = LOSSES.build("feature_distill", metric="l2")(inputs(student, [0, 1], teacher_embedding=teacher))
    assert got.item() == pytest.approx(np.mean([2 - 2 * c for c in cos]), rel=1e-6)


def test_feature_distill_projection_when_sizes_differ():
    same = LOSSES.build("feature_distill", embedding_size=8, teacher_embedding_size=8)
    assert same.projection is None and not list(same.parameters())
    loss = LOSSES.build("feature_distill", embedding_size=4, teacher_embedding_size=6)
    assert loss.projection.weight.shape == (6, 4) and loss.projection.bias is None
    with torch.no_grad():
        loss.projection.weight.copy_(torch.eye(6, 4))   # pads the student with zeros
    student = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    got = loss(inputs(student, [0], teacher_embedding=teacher))
    assert got.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError, match="teacher_embedding_size"):
        LOSSES.build("feature_distill")(inputs(student, [0], teacher_embedding=teacher))
    with pytest.raises(ValueError, match="teacher_embedding"):
        LOSSES.build("feature_distill")(inputs(student, [0]))


def test_feature_distill_projectors():
    """projector: none / linear / mlp whatever the sizes; the MLP's output is what the distance sees."""
    assert LOSSES.build("feature_distill", embedding_size=4, teacher_embedding_size=6, projector="none").projection is None
    linear = LOSSES.build("feature_distill", embedding_size=8, teacher_embedding_size=8, projector="linear")
    assert list(linear.state_dict()) == ["projection.weight"]          # the key older checkpoints hold
    torch.manual_seed(0)
    mlp = LOSSES.build("feature_distill", embedding_size=4, teacher_embedding_size=6, projector="mlp")
    student, teacher = torch.randn(5, 4, requires_grad=True), torch.randn(5, 6)
    mlp.train()
    got = mlp(inputs(student, [0] * 5, teacher_embedding=teacher))
    projected = torch.nn.functional.normalize(mlp.projection(student))
    assert mlp.projection[0].weight.shape == (12, 4) and mlp.projection[3].weight.shape == (6, 12)
    assert got.item() == pytest.approx(float((1 - (projected * torch.nn.functional.normalize(teacher)).sum(1)).mean().detach()),
                                       rel=1e-5)
    got.backward()
    assert student.grad.abs().sum() > 0 and mlp.projection[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="projector must be auto, none or one of linear, mlp"):
        LOSSES.build("feature_distill", embedding_size=4, teacher_embedding_size=6, projector="deep")
    with pytest.raises(ConfigError, match="needs the student's and the teacher's embedding sizes"):
        LOSSES.build("feature_distill", projector="mlp")


def test_teacher_centre_arcface_centres_follow_the_teacher():
    """The centres are the teacher's: set by an identity's first batch, then a moving average; the loss is
    ArcFace's cross entropy against them; nothing is learnt; a student of another size is refused."""
    loss = LOSSES.build("teacher_centre_arcface", num_classes=3, embedding_size=4, teacher_embedding_size=4,
                        scale=16.0, margin=0.2, momentum=0.75)
    assert not list(loss.parameters()) and list(loss.state_dict()) == ["weight"]
    teacher = torch.tensor([[2.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 1.0, 0]])
    labels = torch.tensor([0, 0, 2])
    student = torch.randn(3, 4)
    got = loss(inputs(student, labels, teacher_embedding=teacher))
    first = F.normalize(torch.tensor([[1.0, 1.0, 0, 0]]))
    assert torch.allclose(loss.weight[0], first[0]) and torch.equal(loss.weight[1], torch.zeros(4))
    assert torch.allclose(loss.weight[2], torch.tensor([0, 0, 1.0, 0]))
    arcface = LOSSES.build("arcface", num_classes=3, embedding_size=4, scale=16.0, margin=0.2)
    with torch.no_grad():
        arcface.weight.copy_(loss.weight)
    assert got.item() == pytest.approx(arcface(inputs(student, labels, teacher_embedding=teacher)).item(), rel=1e-6)
    loss(inputs(student[:1], labels[:1], teacher_embedding=torch.tensor([[0, 0, 0, 5.0]])))
    assert torch.allclose(loss.weight[0], 0.75 * first[0] + 0.25 * torch.tensor([0, 0, 0, 1.0]))
    with pytest.raises(ConfigError, match="must be the teacher's"):
        LOSSES.build("teacher_centre_arcface", num_classes=3, embedding_size=4, teacher_embedding_size=6)


def test_feature_map_distill_adapter_resize_and_value():
    loss = LOSSES.build("feature_map_distill", student_channels=2, teacher_channels=3, normalize=False)
    with torch.no_grad():
        loss.adapter.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(3, 2, 1, 1))
    student = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4)
    teacher = torch.zeros(1, 3, 2, 2)
    pooled = student.view(1, 2, 2, 2, 2, 2).mean(dim=(3, 5))           # 2x2 average pooling
    adapted = torch.cat([pooled, pooled.sum(dim=1, keepdim=True)], dim=1)
    got = loss(LossInputs(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                          student_feature_map=student, teacher_feature_map=teacher))
    assert got.item() == pytest.approx(adapted.pow(2).mean().item(), rel=1e-6)
    # normalised maps: identical directions give zero loss, up-sampling a smaller student map
    loss = LOSSES.build("feature_map_distill", student_channels=3, teacher_channels=3)
    with torch.no_grad():
        loss.adapter.weight.copy_(2.0 * torch.eye(3).view(3, 3, 1, 1))
    ones = torch.ones(2, 3, 7, 7)
    got = loss(LossInputs(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long),
                          student_feature_map=ones[..., :3, :3], teacher_feature_map=ones))
    assert got.item() == pytest.approx(0.0, abs=1e-7)


# ----------------------------------------------------------------------------- Hinton KD

def np_hinton(student, teacher, temperature):
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lt, ls = log_softmax(teacher), log_softmax(student)
    return temperature ** 2 * (np.exp(lt) * (lt - ls)).sum() / len(student)


def test_hinton_kd_equals_t2_kl_by_hand():
    student = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    teacher = np.array([[4.0, 0.0, 1.0], [-1.0, 2.0, 2.5]])
    loss = LOSSES.build("hinton_kd", temperature=4.0)
    got = loss(inputs(torch.zeros(2, 2), [0, 1], student_logits=torch.tensor(student),
                      teacher_logits=torch.tensor(teacher)))
    assert got.item() == pytest.approx(np_hinton(student, teacher, 4.0), rel=1e-5)
    # alpha mixes in the hard-label cross entropy
    mixed = LOSSES.build("hinton_kd", temperature=2.0, alpha=0.25)(
        inputs(torch.zeros(2, 2), [0, 1], student_logits=torch.tensor(student),
               teacher_logits=torch.tensor(teacher)))
    ce = F.cross_entropy(torch.tensor(student), torch.tensor([0, 1])).item()
    assert mixed.item() == pytest.approx(0.25 * np_hinton(student, teacher, 2.0) + 0.75 * ce, rel=1e-5)


def test_hinton_kd_gradient_scale_independent_of_temperature():
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 10, generator=gen)
    student0 = torch.randn(4, 10, generator=gen)

    def grad(temperature):
        student = student0.clone().requires_grad_()
        LOSSES.build("hinton_kd", temperature=temperature)(
            inputs(torch.zeros(4, 2), [0] * 4, student_logits=student, teacher_logits=teacher)).backward()
        return student.grad

    norms = {t: grad(t).norm().item() for t in (10.0, 20.0, 40.0)}
    # without the T^2 factor these ratios would be 4; with it they approach 1
    assert norms[10.0] / norms[20.0] == pytest.approx(1.0, abs=0.05)
    assert norms[20.0] / norms[40.0] == pytest.approx(1.0, abs=0.03)
    # high-temperature limit (Hinton et al. eq. 4): grad -> (s - mean s - t + mean t) / (C N)
    centred = (student0 - student0.mean(1, keepdim=True)) - (teacher - teacher.mean(1, keepdim=True))
    torch.testing.assert_close(grad(1000.0), centred / (10 * 4), rtol=0.02, atol=1e-5)


def test_hinton_kd_rejects_mismatched_logits_and_missing_inputs():
    loss = LOSSES.build("hinton_kd")
    with pytest.raises(ValueError, match="same identities"):
        loss(inputs(torch.zeros(2, 2), [0, 1], student_logits=torch.zeros(2, 3),
                    teacher_logits=torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="teacher_logits"):
        loss(inputs(torch.zeros(2, 2), [0, 1], student_logits=torch.zeros(2, 3)))
    with pytest.raises(ConfigError, match="temperature"):
        LOSSES.build("hinton_kd", temperature=0.0)


# ----------------------------------------------------------------------------- build_losses

CONTEXT = dict(num_classes=5, embedding_size=8, teacher_embedding_size=12,
               student_channels=4, teacher_channels=6)


def test_build_losses_total_is_weighted_sum_of_terms():
    torch.manual_seed(0)
    specs = [{"name": "arcface", "weight": 1.0, "scale": 32.0, "margin": 0.4},
             {"name": "triplet_distill", "weight": 0.5, "m_min": 0.2, "m_max": 0.5},
             {"name": "feature_distill", "weight": 2.0, "metric": "l2"},
             {"name": "hinton_kd", "weight": 0.25, "temperature": 4.0},
             {"name": "triplet", "weight": 3.0, "mining": "hard"},
             {"name": "triplet", "weight": 0.1, "mining": "all"}]
    loss = build_losses(specs, **CONTEXT)
    assert isinstance(loss, WeightedLoss)
    assert list(loss.terms) == ["arcface", "triplet_distill", "feature_distill", "hinton_kd",
                                "triplet", "triplet_2"]
    assert loss.terms["arcface"].scale == 32.0 and loss.terms["arcface"].weight.shape == (5, 8)
    assert loss.terms["feature_distill"].projection.weight.shape == (12, 8)
    assert {"teacher_embedding", "teacher_logits"} <= loss.reads and "student_feature_map" not in loss.reads
    assert loss.margin_head is loss.terms["arcface"] and loss.margin_head_key == "arcface"
    assert loss.specs["triplet_2"] == specs[5]

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    student = torch.randn(8, 8, requires_grad=True)
    teacher = torch.randn(8, 12)
    batch = LossInputs(student, labels, teacher_embedding=teacher, teacher_logits=torch.randn(8, 5))
    total, terms = loss(batch)
    weights = [s["weight"] for s in specs]
    assert total.item() == pytest.approx(sum(w * v for w, v in zip(weights, terms.values())), rel=1e-5)
    # each term is the unweighted value of the module on its own; hinton_kd got the student
    # logits from the arcface head (margin-free)
    filled = LossInputs(student, labels, teacher_embedding=teacher, teacher_logits=batch.teacher_logits,
                        student_logits=loss.terms["arcface"].logits(student))
    for key, module in loss.terms.items():
        assert float(terms[key]) == pytest.approx(module(filled).item(), rel=1e-5)
    total.backward()
    assert loss.terms["arcface"].weight.grad is not None and student.grad is not None


def test_build_losses_defaults_and_flags():
    loss = build_losses([{"name": "cosface"}], num_classes=3, embedding_size=4)
    assert loss.weights == {"cosface": 1.0} and loss.terms["cosface"].margin == 0.35
    assert not loss.reads & TEACHER_FIELDS
    maps = build_losses([{"name": "feature_map_distill", "weight": 1.0}], **CONTEXT)
    assert "student_feature_map" in maps.reads and maps.reads & TEACHER_FIELDS and maps.margin_head is None
    assert set(maps.state_dict()) == {"terms.feature_map_distill.adapter.weight"}


def test_build_losses_packaged_configs():
    for name in ("base", "student_mbf"):     # base.yaml sets nothing: its losses are the defaults
        specs = load_config(name).losses
        loss = build_losses(specs, num_classes=10, embedding_size=512, teacher_embedding_size=512)
        assert [s["name"] for s in specs] == list(loss.terms)


@pytest.mark.parametrize("specs, context, message", [
    ([{"name": "arcfase", "weight": 1.0}], CONTEXT, r"losses\[0\]: unknown loss 'arcfase'; known: arcface"),
    ([{"name": "arcface"}, {"name": "triplet", "margn": 0.2}], CONTEXT,
     r"losses\[1\]: loss 'triplet' has no parameter\(s\) \['margn'\]"),
    ([{"name": "arcface", "num_classes": 3}], CONTEXT, r"losses\[0\]: \['num_classes'\] of loss 'arcface'"),
    ([{"name": "arcface"}], {"embedding_size": 8}, r"losses\[0\]: loss 'arcface' needs \['num_classes'\]"),
    ([{"name": "triplet", "mining": "hardest"}], {}, r"losses\[0\]: .*'hardest'.*known: all, hard, semihard"),
    ([{"name": "feature_distill", "metric": "l1"}], {}, r"losses\[0\]: .*'l1'.*cosine, l2"),
    ([{"name": "triplet_distill", "m_min": 0.6}], {}, r"losses\[0\]: triplet_distill: need 0 <= m_min"),
    ([{"name": "feature_map_distill"}], dict(CONTEXT, student_channels=None), r"losses\[0\]: .*feature_channels"),
    ([{"name": "triplet", "weight": "high"}], {}, r"losses\[0\]: weight of loss 'triplet'"),
    ([{"weight": 1.0}], {}, r"losses\[0\]: expected a mapping with a 'name'"),
    ([], {}, "empty"),
])
def test_build_losses_errors_name_the_entry(specs, context, message):
    with pytest.raises(ConfigError, match=message):
        build_losses(specs, **context)


# ----------------------------------------------------------------------------- every registered loss

#: a value for each LossInputs field a loss may read: 8 rows of 4 identities, 5 classes
SWEEP_CONTEXT = dict(num_classes=5, embedding_size=8, teacher_embedding_size=12, student_channels=4,
                     teacher_channels=6)
#: losses that work in the teacher's space and need the student's embedding size to be the teacher's
SAME_SPACE = {"teacher_centre_arcface"}


def declared_inputs(reads, generator, teacher_size=12):
    """LossInputs with only the fields in ``reads`` set (the rest None); the student's require grad."""
    values = {"student_embedding": torch.randn(8, 8, generator=generator),
              "labels": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
              "teacher_embedding": torch.randn(8, teacher_size, generator=generator),
              "teacher_logits": torch.randn(8, 5, generator=generator),
              "student_logits": torch.randn(8, 5, generator=generator),
              "student_feature_map": torch.randn(8, 4, 3, 3, generator=generator),
              "teacher_feature_map": torch.randn(8, 6, 2, 2, generator=generator)}
    for name in ("student_embedding", "student_logits", "student_feature_map"):
        values[name].requires_grad_(True)
    unknown = set(reads) - set(values) - {"extra"}
    assert not unknown, f"the sweep has no value for {sorted(unknown)}: add one"
    given = {name: values[name] if name in reads else None for name in values}
    return LossInputs(**given, extra={} if "extra" in reads else None)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_registered_loss_runs_forward_and_backward_on_its_declared_inputs(name):
    """Each loss gets only what its class declares in ``reads`` (every other field is None):
    a finite scalar whose gradient reaches a student input or the loss's own parameters."""
    generator = torch.Generator().manual_seed(0)
    context = {**SWEEP_CONTEXT, "teacher_embedding_size": 8} if name in SAME_SPACE else SWEEP_CONTEXT
    arguments = {k: v for k, v in context.items() if k in inspect.signature(LOSSES.get(name)).parameters}
    loss = LOSSES.build(name, **arguments)
    assert loss.reads and loss.reads <= type(loss).reads
    if loss.needs_teacher_statistics:
        loss.fit_selection(torch.randn(40, 12, generator=generator), torch.arange(40) % 5)
    batch = declared_inputs(loss.reads, generator, context["teacher_embedding_size"])
    value = loss(batch)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    student = [getattr(batch, f) for f in ("student_embedding", "student_logits", "student_feature_map")
               if f in loss.reads]
    gradients = [t.grad for t in student] + [p.grad for p in loss.parameters()]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in gradients), name


def test_weighted_loss_reads_the_union_and_registration_checks_the_declaration():
    loss = build_losses([{"name": "arcface"}, {"name": "feature_distill"}, {"name": "hinton_kd"}], **CONTEXT)
    assert loss.reads == {"student_embedding", "labels", "teacher_embedding", "student_logits", "teacher_logits"}
    assert loss.readers("teacher_embedding") == ["feature_distill"] and loss.readers("labels") == ["arcface"]
    mixed = build_losses([{"name": "hinton_kd", "alpha": 0.5}], **CONTEXT)
    assert "labels" in mixed.reads          # the hard-label term reads them

    registry = Registry("loss", check=LOSSES.check)

    class Undeclared(Loss):
        pass

    class Misspelt(Loss):
        reads = frozenset({"teacher_embeding"})

    class Plain(torch.nn.Module):
        reads = frozenset({"labels"})

    for cls, message in ((Undeclared, "non-empty frozenset"), (Misspelt, r"\['teacher_embeding'\]"),
                         (Plain, "subclass of facekd.losses.Loss")):
        with pytest.raises(TypeError, match=message):
            registry.register("x")(cls)
    assert "x" not in registry
