"""TAR@FAR is reported only where the FAR reached on the held-out folds is near its target.

A degenerate model (all embeddings nearly equal) accepts every pair at any threshold above 0:
insightface's protocol then reports TAR@FAR=1e-3 of 100 % at a reached FAR of 100 %.
"""
from __future__ import annotations

import numpy as np
import pytest

from facekd.evaluation.report import render_html, render_markdown, summary_table, tar_cell
from facekd.evaluation.verification import FAR_TOLERANCE_FACTOR, TarAtFar, evaluate, far_limit


def degenerate_embeddings(num_pairs=600, seed=0):
    rng = np.random.default_rng(seed)
    return np.ones((2 * num_pairs, 16)) + 1e-7 * rng.normal(size=(2 * num_pairs, 16)), np.arange(num_pairs) % 2 == 0


def separable_embeddings(num_pairs=20000, seed=7):
    """1-d angles on a circle: d = 2 - 2 cos(angle); same pairs close, different pairs far."""
    rng = np.random.default_rng(seed)
    issame = np.arange(num_pairs) % 2 == 0
    angle = np.where(issame, np.abs(rng.normal(0, 0.5, num_pairs)), np.abs(rng.normal(1.6, 0.5, num_pairs)))
    rows = np.stack([np.ones(num_pairs), np.zeros(num_pairs), np.cos(angle), np.sin(angle)], axis=1)
    return rows.reshape(2 * num_pairs, 2), issame


def results_json(metrics):
    """A minimal ``facekd eval`` results dict with one model on one set."""
    return {"protocol": {"far_targets": [1e-3, 1e-2]}, "val_sets": [{"name": "s", "num_pairs": 600}],
            "models": [{"label": "flat", "role": "distilled", "results": {"s": {"flip": metrics, "plain": metrics}}}]}


def test_far_limit_is_one_and_a_half_targets_plus_one_false_accept_per_fold():
    assert FAR_TOLERANCE_FACTOR == 1.5
    assert far_limit(1e-3, [300] * 10) == pytest.approx(1.5e-3 + 1 / 300)      # LFW: 300 different pairs per fold
    assert far_limit(1e-2, [100, 50]) == pytest.approx(1.5e-2 + (1 / 100 + 1 / 50) / 2)
    assert far_limit(1e-2, [0, 0]) == pytest.approx(1.5e-2)                     # no different pairs: no step


def test_degenerate_model_is_not_reached():
    embeddings, issame = degenerate_embeddings()
    result = evaluate(embeddings, issame)
    for target in (1e-3, 1e-2):
        t = result.tar_at_far[target]
        assert t.tar_mean == 1.0 and t.far_mean == 1.0            # insightface's numbers: every pair accepted
        assert t.far_limit == pytest.approx(1.5 * target + 1 / 30)  # 60 pairs per fold, 30 of them different
        assert not t.reached and t.tar is None
        entry = result.to_dict()["tar_at_far"][format(target, "g")]
        assert entry["reached"] is False and entry["tar_mean"] is None and entry["tar_std"] is None
        assert entry["far_mean"] == 1.0 and entry["tar_measured"] == 1.0
        assert entry["far_limit"] == pytest.approx(t.far_limit)


def test_good_model_is_reached_with_the_measured_tar():
    embeddings, issame = separable_embeddings()
    result = evaluate(embeddings, issame, far_targets=(1e-3, 1e-2, 1e-1))
    for target, t in result.tar_at_far.items():
        assert t.reached and t.far_mean <= t.far_limit and t.tar == t.tar_mean
        entry = result.to_dict()["tar_at_far"][format(target, "g")]
        assert entry["reached"] is True and entry["tar_mean"] == t.tar_mean
    assert 0 < result.tar_at_far[1e-3].tar < result.tar_at_far[1e-2].tar < result.tar_at_far[1e-1].tar < 1


def test_reached_is_decided_by_the_limit():
    assert TarAtFar(1e-3, 0.9, 0.0, far_mean=0.004, threshold_mean=1.0, far_limit=0.0048).tar == 0.9
    assert TarAtFar(1e-3, 0.9, 0.0, far_mean=0.005, threshold_mean=1.0, far_limit=0.0048).tar is None
    assert TarAtFar(1e-3, 0.9, 0.0, far_mean=0.5, threshold_mean=1.0).reached     # no limit given: as before


def test_report_and_markdown_mark_unreached_tar():
    embeddings, issame = degenerate_embeddings()
    results = results_json(evaluate(embeddings, issame).to_dict())
    header, rows = summary_table(results, "s")
    cells = dict(zip(header, rows[0]))
    assert cells["TAR@FAR=0.001 %"] == cells["TAR@FAR=0.01 %"] == "not reached (FAR 100.00 %)"
    markdown = render_markdown(results)
    page = render_html(results, plots={})
    for text in (markdown, page):
        assert "not reached (FAR 100.00 %)" in text and "1.5x the target plus one false accept per fold" in text
    assert "<td>100.00</td>" not in page       # the misleading 100 % TAR is nowhere in the table


def test_results_without_the_reached_field_still_show_the_tar():
    assert tar_cell({"far_target": 0.01, "tar_mean": 0.987, "far_mean": 0.011}) == "98.70"
    assert tar_cell(None) == "–"


def test_resolution_curve_json_keeps_unreached_tar_out():
    from facekd.evaluation.resolution import ResolutionCurve

    embeddings, issame = degenerate_embeddings()
    flat = evaluate(embeddings, issame)
    good = evaluate(*separable_embeddings())
    curve = ResolutionCurve(side="both", sizes=[112, 28], flip=[good, flat], plain=[good, flat]).to_dict()
    assert curve["tar_at_far"]["0.01"] == [good.tar_at_far[1e-2].tar, None]
    assert curve["tar_at_far"]["0.01"][0] is not None
