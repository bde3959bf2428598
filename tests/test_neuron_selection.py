"""Neuron-selection distillation (Luo et al., AAAI 2016): Fisher ratio, selection, the loss."""
import io

import numpy as np
import pytest
import torch

from facekd.errors import ConfigError
from facekd.losses import LOSSES, LossInputs, build_losses, fisher_ratio, select_neurons
from facekd.losses.neuron_selection import NeuronSelectDistillLoss, class_variances, noise_neurons


def identity_features(num_ids=10, per_id=20, informative=4, noise=8, seed=0):
    """Features whose first ``informative`` dimensions carry the identity (class means far
    apart, small within-class spread) and whose other ``noise`` dimensions are pure noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_ids), per_id)
    means = rng.normal(0.0, 3.0, size=(num_ids, informative))
    signal = means[labels] + rng.normal(0.0, 0.5, size=(len(labels), informative))
    rest = rng.normal(0.0, 2.0, size=(len(labels), noise))
    return torch.tensor(np.concatenate([signal, rest], axis=1), dtype=torch.float32), torch.tensor(labels)


def numpy_fisher(x, y):
    """Between / within identity variance per column, by the textbook formulas."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    between = np.zeros(x.shape[1])
    within = np.zeros(x.shape[1])
    for c in np.unique(y):
        rows = x[y == c]
        between += len(rows) * (rows.mean(axis=0) - mu) ** 2
        within += ((rows - rows.mean(axis=0)) ** 2).sum(axis=0)
    return between / within


def test_fisher_ratio_matches_numpy_reference_by_hand():
    x = np.array([[1.0, 0.0, 5.0], [3.0, 2.0, 5.0], [10.0, 1.0, 4.0], [12.0, 3.0, 6.0], [11.0, 2.0, 5.0]])
    y = np.array([7, 7, 2, 2, 2])   # non-contiguous label values
    # column 0 by hand: class means 2 and 11, overall mean 37/5; between = 2*(5.4)^2 + 3*(3.6)^2,
    # within = (1 + 1) + (1 + 1 + 0)
    assert numpy_fisher(x, y)[0] == pytest.approx((2 * 5.4 ** 2 + 3 * 3.6 ** 2) / 4.0)
    got = fisher_ratio(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    assert got.dtype == torch.float64 and got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), numpy_fisher(x, y), rtol=1e-6)
    between, within = class_variances(torch.tensor(x), y)       # numpy labels accepted too
    np.testing.assert_allclose((between + within).numpy(), x.var(axis=0), rtol=1e-12)


def test_fisher_ratio_matches_numpy_on_random_data_in_chunks(monkeypatch):
    import facekd.losses.neuron_selection as module

    x, y = identity_features()
    monkeypatch.setattr(module, "CHUNK_ROWS", 7)               # many chunks, last one partial
    np.testing.assert_allclose(fisher_ratio(x, y).numpy(), numpy_fisher(x.numpy(), y.numpy()), rtol=1e-5)


def test_fisher_ratio_edge_cases():
    x = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.1], [0.0, 3.0, 2.0], [0.0, 3.0, 2.3]])
    y = torch.tensor([0, 0, 1, 1])
    ratio = fisher_ratio(x, y)
    assert ratio[0] == 0.0                                    # constant: no information
    assert torch.isinf(ratio[1])                              # constant within, differs between
    with pytest.raises(ValueError, match="two identities"):
        fisher_ratio(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        fisher_ratio(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        fisher_ratio(torch.tensor([[float("nan")], [1.0]]), torch.tensor([0, 1]))


def test_selection_finds_exactly_the_identity_dimensions():
    x, y = identity_features(informative=4, noise=8)
    selected = select_neurons(x, y, 4)
    assert selected.dtype == torch.long and selected.shape == (4,)
    assert sorted(selected.tolist()) == [0, 1, 2, 3]
    ratio = fisher_ratio(x, y)
    assert ratio[selected].tolist() == sorted(ratio[selected].tolist(), reverse=True)  # best first
    # the informative ones also come first when more are kept
    assert set(select_neurons(x, y, 6)[:4].tolist()) == {0, 1, 2, 3}


def test_identity_dimensions_found_when_shuffled_among_noise():
    x, y = identity_features(informative=3, noise=9, seed=3)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    shuffled = x[:, perm]
    where = sorted(int((perm == i).nonzero()) for i in range(3))   # new positions of dims 0..2
    assert sorted(select_neurons(shuffled, y, 3).tolist()) == where


def test_constant_neuron_is_never_selected():
    x, y = identity_features(informative=2, noise=3)
    x = torch.cat([x[:, :2], torch.full((len(y), 1), 4.0), x[:, 2:]], dim=1)   # dim 2 always 4
    assert noise_neurons(x).tolist() == [False, False, True, False, False, False]
    kept = select_neurons(x, y, 5)
    assert 2 not in kept.tolist() and sorted(kept.tolist()) == [0, 1, 3, 4, 5]
    with pytest.raises(ValueError, match="only 5 of 6 neurons are not noise"):
        select_neurons(x, y, 6)
    # a near-constant one (tiny relative variance) is noise as well, whatever the scale
    tiny = x.clone()
    tiny[:, 2] += 1e-5 * torch.randn(len(y), generator=torch.Generator().manual_seed(0))
    assert noise_neurons(tiny)[2] and not noise_neurons(tiny, min_variance=0.0)[2]
    assert noise_neurons(1000.0 * tiny)[2]
    with pytest.raises(ValueError, match="1 <= k"):
        select_neurons(x, y, 0)


def fitted_loss(metric="cosine", student_size=12):
    x, y = identity_features(informative=4, noise=8)
    loss = LOSSES.build("neuron_select_distill", embedding_size=student_size, teacher_embedding_size=12,
                        num_neurons=4, metric=metric)
    loss.fit_selection(x, y.numpy())
    return loss, x, y


def test_loss_is_zero_when_projection_reproduces_the_selected_neurons():
    loss, x, y = fitted_loss()
    assert "teacher_embedding" in loss.reads and NeuronSelectDistillLoss.needs_teacher_statistics and loss.is_fitted
    assert sorted(loss.selected.tolist()) == [0, 1, 2, 3]
    assert loss.projection.weight.shape == (4, 12) and loss.projection.bias is None
    with torch.no_grad():     # student embedding = teacher embedding; P picks the selected rows
        loss.projection.weight.copy_(torch.eye(12)[loss.selected])
    batch = LossInputs(x[:16].clone(), y[:16], teacher_embedding=x[:16])
    assert loss(batch).item() == pytest.approx(0.0, abs=1e-6)
    # scaling the student does not matter (normalised), other neurons do
    assert loss(LossInputs(3.0 * x[:16], y[:16], teacher_embedding=x[:16])).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        loss.projection.weight.copy_(torch.eye(12)[[4, 5, 6, 7]])
    value = loss(batch).item()
    selected = x[:16, loss.selected]
    other = x[:16, 4:8]
    cos = torch.nn.functional.cosine_similarity(other, selected, dim=1)
    assert value > 0.05 and value == pytest.approx((1 - cos).mean().item(), rel=1e-5)


def test_l2_metric_is_twice_cosine_and_no_projection_when_sizes_match():
    cosine, x, y = fitted_loss("cosine", student_size=6)
    l2, _, _ = fitted_loss("l2", student_size=6)
    l2.projection.load_state_dict(cosine.projection.state_dict())
    student = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    batch = LossInputs(student, y[:8], teacher_embedding=x[:8])
    assert l2(batch).item() == pytest.approx(2 * cosine(batch).item(), rel=1e-5)
    same = LOSSES.build("neuron_select_distill", embedding_size=4, teacher_embedding_size=12, num_neurons=4)
    assert same.projection is None and not list(same.parameters())
    same.fit_selection(x, y)
    teacher_selected = x[:8, same.selected]
    assert same(LossInputs(2.0 * teacher_selected, y[:8], teacher_embedding=x[:8])).item() \
        == pytest.approx(0.0, abs=1e-6)


def test_gradient_flows_to_student_embedding_and_projection_not_teacher():
    loss, x, y = fitted_loss(student_size=8)
    student = torch.randn(16, 8, requires_grad=True, generator=torch.Generator().manual_seed(0))
    teacher = x[:16].clone().requires_grad_(True)
    value = loss(LossInputs(student, y[:16], teacher_embedding=teacher))
    value.backward()
    assert value.item() > 0
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert loss.projection.weight.grad.abs().sum() > 0
    assert teacher.grad is None


def test_forward_before_fitting_raises_clear_error():
    loss = LOSSES.build("neuron_select_distill", embedding_size=8, teacher_embedding_size=12, num_neurons=4)
    assert not loss.is_fitted and loss.selected.tolist() == [-1] * 4
    with pytest.raises(RuntimeError, match="fit_selection"):
        loss(LossInputs(torch.randn(2, 8), torch.tensor([0, 1]), teacher_embedding=torch.randn(2, 12)))
    with pytest.raises(ValueError, match="N x 12"):
        loss.fit_selection(torch.randn(20, 10), torch.arange(20) % 2)


def test_state_dict_round_trip_keeps_selection():
    loss, x, y = fitted_loss(student_size=8)
    buffer = io.BytesIO()
    torch.save(build_wrapper(loss).state_dict(), buffer)
    fresh = LOSSES.build("neuron_select_distill", embedding_size=8, teacher_embedding_size=12, num_neurons=4)
    wrapper = build_wrapper(fresh)
    buffer.seek(0)
    wrapper.load_state_dict(torch.load(buffer))
    assert fresh.is_fitted and torch.equal(fresh.selected, loss.selected)
    assert "terms.neuron_select_distill.selected" in wrapper.state_dict()
    batch = LossInputs(torch.randn(8, 8, generator=torch.Generator().manual_seed(4)), y[:8], teacher_embedding=x[:8])
    assert fresh(batch).item() == pytest.approx(loss(batch).item(), rel=1e-6)
    # loading an unfitted state marks the loss unfitted again
    fresh.load_state_dict(LOSSES.build("neuron_select_distill", embedding_size=8, teacher_embedding_size=12,
                                       num_neurons=4).state_dict())
    assert not fresh.is_fitted


def build_wrapper(term):
    from facekd.losses import WeightedLoss

    return WeightedLoss({"neuron_select_distill": term}, {"neuron_select_distill": 1.0})


def test_built_from_config_with_keep_ratio_and_bad_parameters_refused():
    context = dict(num_classes=5, embedding_size=8, teacher_embedding_size=12)
    built = build_losses([{"name": "neuron_select_distill", "keep_ratio": 0.25}], **context)
    term = built.terms["neuron_select_distill"]
    assert term.num_neurons == 3 and term.projection.weight.shape == (3, 8) and "teacher_embedding" in built.reads
    assert build_losses([{"name": "neuron_select_distill"}], **context).terms["neuron_select_distill"].num_neurons == 6
    for params, message in [({"num_neurons": 13}, "1..12"), ({"num_neurons": 2, "keep_ratio": 0.5}, "not both"),
                            ({"keep_ratio": 0.0}, "keep_ratio"), ({"metric": "manhattan"}, "manhattan")]:
        with pytest.raises(ConfigError, match=message):
            build_losses([{"name": "neuron_select_distill", **params}], **context)
    with pytest.raises(ConfigError, match="teacher"):
        build_losses([{"name": "neuron_select_distill"}], num_classes=5, embedding_size=8,
                     teacher_embedding_size=None)
