"""The verification protocol, embedding extraction, resolution robustness and model loading."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.errors import CheckpointError, ConfigError, DataError
from facekd.evaluation.embed import TorchEmbedder, extract_embeddings
from facekd.evaluation.resolution import compose_pairs, resolution_curve
from facekd.evaluation.verification import evaluate, pair_embeddings

from evaluation_fakes import FakePairSet, TinyNet, darken, save_checkpoint, structured_embeddings, tiny_arch  # noqa: F401


# --------------------------------------------------------------------------- fixtures

# --------------------------------------------------------------------------- reference

def reference_protocol(embeddings, issame, nrof_folds=10, far_targets=(1e-3, 1e-2)):
    """Straightforward re-implementation of insightface's verification.py (loops, no sorting)."""
    normed = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    n = len(issame)
    dist = np.array([np.sum((normed[2 * i] - normed[2 * i + 1]) ** 2) for i in range(n)])
    sizes = [n // nrof_folds + (1 if k < n % nrof_folds else 0) for k in range(nrof_folds)]
    bounds = np.cumsum([0] + sizes)

    def accuracy(threshold, d, same):
        predict = d < threshold
        tp = np.sum(predict & same)
        tn = np.sum(~predict & ~same)
        return (tp + tn) / d.size

    def tar_far(threshold, d, same):
        predict = d < threshold
        return np.sum(predict & same) / np.sum(same), np.sum(predict & ~same) / np.sum(~same)

    accs, thrs, tars = [], [], {f: [] for f in far_targets}
    for k in range(nrof_folds):
        test = np.arange(bounds[k], bounds[k + 1])
        train = np.array([i for i in range(n) if not bounds[k] <= i < bounds[k + 1]])
        best_acc, best_thr = -1.0, None
        for t in range(400):
            acc = accuracy(t * 0.01, dist[train], issame[train])
            if acc > best_acc:
                best_acc, best_thr = acc, t * 0.01
        thrs.append(best_thr)
        accs.append(accuracy(best_thr, dist[test], issame[test]))
        far_train = [tar_far(t * 0.001, dist[train], issame[train])[1] for t in range(4000)]
        for target in far_targets:
            # keep the last threshold of each FAR plateau, then interpolate linearly
            xs = [far_train[i] for i in range(4000) if i == 3999 or far_train[i + 1] != far_train[i]]
            ys = [i * 0.001 for i in range(4000) if i == 3999 or far_train[i + 1] != far_train[i]]
            threshold = 0.0
            if max(xs) >= target:
                j = next(j for j in range(len(xs)) if xs[j] >= target)
                threshold = ys[0] if j == 0 else ys[j - 1] + (target - xs[j - 1]) * (ys[j] - ys[j - 1]) / (xs[j] - xs[j - 1])
            tars[target].append(tar_far(threshold, dist[test], issame[test])[0])
    return dist, np.array(accs), np.array(thrs), {f: np.mean(v) for f, v in tars.items()}


# --------------------------------------------------------------------------- protocol

@pytest.mark.parametrize("noise,num_pairs", [(0.9, 240), (1.3, 203)])
def test_protocol_matches_reference(noise, num_pairs):
    embeddings, issame = structured_embeddings(num_pairs=num_pairs, noise=noise)
    result = evaluate(embeddings, issame)
    dist, accs, thrs, tars = reference_protocol(embeddings, issame)
    np.testing.assert_allclose(result.distances, dist, rtol=1e-12)
    np.testing.assert_allclose(result.fold_accuracies, accs)
    np.testing.assert_allclose(result.fold_thresholds, thrs)
    assert result.accuracy_mean == pytest.approx(np.mean(accs))
    assert result.accuracy_std == pytest.approx(np.std(accs))
    assert result.threshold_mean == pytest.approx(np.mean(thrs))
    for far, tar in tars.items():
        assert result.tar_at_far[far].tar_mean == pytest.approx(tar)
    assert 0.6 < result.accuracy_mean < 0.99   # the structure makes a non-trivial problem


def test_auc_and_eer_match_brute_force():
    embeddings, issame = structured_embeddings(noise=1.1, seed=3)
    result = evaluate(embeddings, issame)
    score = -result.distances
    pos, neg = score[issame], score[~issame]
    auc = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert result.auc == pytest.approx(auc)
    # EER: the point where FAR equals FRR, found on a dense threshold grid
    grid = np.linspace(0, 4, 40001)
    far = np.array([np.mean(result.distances[~issame] <= t) for t in grid])
    frr = np.array([np.mean(result.distances[issame] > t) for t in grid])
    i = np.argmin(np.abs(far - frr))
    assert result.eer == pytest.approx((far[i] + frr[i]) / 2, abs=1.0 / min(issame.sum(), (~issame).sum()))


def test_perfect_embeddings_give_full_accuracy():
    rng = np.random.default_rng(2)
    num_pairs = 200
    issame = np.arange(num_pairs) % 3 == 0
    rows = []
    for same in issame:   # same person: identical direction (any norm); different: random directions
        a = rng.normal(size=32)
        rows += [3.0 * a, a if same else rng.normal(size=32)]
    result = evaluate(np.array(rows), issame)
    assert result.accuracy_mean == 1.0 and result.accuracy_std == 0.0
    assert result.auc == 1.0 and result.eer == 0.0
    assert all(t.tar_mean == 1.0 and t.far_mean < 0.05 for t in result.tar_at_far.values())
    assert result.hardest_errors(3)[0].size == 0 and result.hardest_errors(3)[1].size == 0


def test_tar_at_far_sanity():
    rng = np.random.default_rng(7)
    n = 20000
    issame = np.arange(n) % 2 == 0
    # the distances are set through 1-d embeddings on a circle: d = 2 - 2 cos(angle)
    angle = np.where(issame, np.abs(rng.normal(0, 0.5, n)), np.abs(rng.normal(1.6, 0.5, n)))
    rows = np.stack([np.ones(n), np.zeros(n), np.cos(angle), np.sin(angle)], axis=1).reshape(2 * n, 2)
    result = evaluate(rows, issame, far_targets=(1e-3, 1e-2, 1e-1))
    tars = [result.tar_at_far[f] for f in (1e-3, 1e-2, 1e-1)]
    assert tars[0].tar_mean < tars[1].tar_mean < tars[2].tar_mean <= 1.0
    for t in tars:
        assert t.far_mean == pytest.approx(t.far_target, rel=0.5)   # held-out FAR near the target
    # the TAR at the threshold where the empirical FAR is 1e-2
    threshold = np.quantile(result.distances[~issame], 1e-2)
    assert tars[1].tar_mean == pytest.approx(np.mean(result.distances[issame] < threshold), abs=0.02)


def test_hardest_errors_are_the_most_confident_mistakes():
    embeddings, issame = structured_embeddings(noise=1.2, seed=5)
    result = evaluate(embeddings, issame)
    false_accepts, false_rejects = result.hardest_errors(100)
    wrong = result.predicted_same != result.issame
    assert len(false_accepts) + len(false_rejects) == wrong.sum() > 0
    assert np.all(np.diff(result.distances[false_accepts]) >= 0)
    assert np.all(np.diff(result.distances[false_rejects]) <= 0)
    assert np.isclose(1 - wrong.mean(), result.accuracy_mean, atol=0.02)


def test_decisions_at_another_models_thresholds():
    embeddings, issame = structured_embeddings(noise=1.2, seed=5)
    result = evaluate(embeddings, issame)
    # its own distances at its own thresholds: the protocol's decisions and accuracy
    assert np.array_equal(result.decide(result.distances), result.predicted_same)
    assert result.accuracy_of(result.predicted_same) == pytest.approx(result.accuracy_mean, abs=1e-12)
    # other distances of the same pairs: judged pair by pair at this result's fold thresholds
    shifted = result.distances + 0.05
    expected = np.array([d < result.fold_thresholds[f] for d, f in zip(shifted, result.fold)])
    assert np.array_equal(result.decide(shifted), expected)
    per_fold = [np.mean(expected[result.fold == k] == issame[result.fold == k]) for k in range(10)]
    assert result.accuracy_of(expected) == pytest.approx(np.mean(per_fold))
    with pytest.raises(ValueError, match="distances for"):
        result.decide(shifted[:-1])
    accuracy, changed = result.at_these_thresholds(shifted)
    assert accuracy == pytest.approx(np.mean(per_fold))
    assert changed == int(np.sum(expected != result.predicted_same)) > 0
    assert result.at_these_thresholds(result.distances) == (pytest.approx(result.accuracy_mean), 0)


def test_bad_protocol_input():
    embeddings, issame = structured_embeddings(num_pairs=20)
    with pytest.raises(ValueError, match="issame"):
        evaluate(embeddings, issame[:-1])
    with pytest.raises(ValueError, match="folds"):
        evaluate(embeddings[:10], issame[:5])
    embeddings[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(embeddings, issame)


# --------------------------------------------------------------------------- embeddings

def test_extract_embeddings_plain_and_flip():
    torch.manual_seed(0)
    pair_set, model = FakePairSet(num_images=11), TinyNet()
    embedder = TorchEmbedder(model, batch_size=4)
    plain, flip = extract_embeddings(embedder, pair_set, batch_size=3, progress=False)
    x = torch.stack([torch.from_numpy(pair_set.load(i)) for i in range(11)]).permute(0, 3, 1, 2).float()
    x = (x / 255 - 0.5) / 0.5
    with torch.no_grad():
        raw, mirrored = model(x).numpy(), model(torch.flip(x, dims=[3])).numpy()
    normalise = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(plain, normalise(raw), atol=1e-5)
    np.testing.assert_allclose(flip, normalise(raw + mirrored), atol=1e-5)
    threaded = extract_embeddings(embedder, pair_set, batch_size=5, progress=False, num_workers=2)
    np.testing.assert_allclose(threaded.flip, flip, atol=1e-6)


def test_missing_image_is_named():
    pair_set = FakePairSet(missing={7})
    with pytest.raises(DataError, match="img/007.jpg"):
        extract_embeddings(TorchEmbedder(TinyNet()), pair_set, progress=False)


def test_pair_embeddings_layout():
    first, second = np.arange(12.0).reshape(6, 2), -np.arange(12.0).reshape(6, 2)
    pairs = np.array([[0, 1], [5, 2]])
    np.testing.assert_array_equal(pair_embeddings(pairs, first), [[0, 1], [2, 3], [10, 11], [4, 5]])
    np.testing.assert_array_equal(pair_embeddings(pairs, first, second), [[0, 1], [-2, -3], [10, 11], [-4, -5]])


def test_resolution_composition_one_side_vs_both():
    torch.manual_seed(1)
    pair_set = FakePairSet(num_images=16, num_pairs=30)
    embedder = TorchEmbedder(TinyNet())
    clean = extract_embeddings(embedder, pair_set, progress=False)
    low = extract_embeddings(embedder, pair_set, degrade_size=14, degrade_fn=darken, progress=False)
    assert not np.allclose(clean.flip, low.flip)
    both = compose_pairs(pair_set.pairs, clean.flip, low.flip, "both")
    one = compose_pairs(pair_set.pairs, clean.flip, low.flip, "one")
    np.testing.assert_array_equal(both[0::2], low.flip[pair_set.pairs[:, 0]])
    np.testing.assert_array_equal(both[1::2], low.flip[pair_set.pairs[:, 1]])
    np.testing.assert_array_equal(one[0::2], clean.flip[pair_set.pairs[:, 0]])   # gallery stays clean
    np.testing.assert_array_equal(one[1::2], low.flip[pair_set.pairs[:, 1]])     # probe degraded
    with pytest.raises(ValueError, match="side"):
        compose_pairs(pair_set.pairs, clean.flip, low.flip, "left")

    curves = {side: resolution_curve(embedder, pair_set, sizes=(112, 14), side=side, clean=clean,
                                     degrade_fn=darken, progress=False) for side in ("both", "one")}
    for side, curve in curves.items():
        expected = evaluate(compose_pairs(pair_set.pairs, clean.flip, low.flip, side), pair_set.issame)
        assert curve.flip[1].accuracy_mean == expected.accuracy_mean
        np.testing.assert_array_equal(curve.flip[1].distances, expected.distances)
    # at full size nothing is degraded, so both settings agree with the clean protocol
    clean_result = evaluate(pair_embeddings(pair_set.pairs, clean.flip), pair_set.issame)
    for curve in curves.values():
        np.testing.assert_array_equal(curve.flip[0].distances, clean_result.distances)
    data = curves["one"].to_dict()
    assert data["sizes"] == [112, 14] and data["side"] == "one" and len(data["accuracy_mean"]) == 2


# --------------------------------------------------------------------------- model loading

def test_load_checkpoint_and_embedding_size_checks(tmp_path, tiny_arch):
    from facekd.evaluation.runner import ModelSpec, load_model

    path = tmp_path / "student.pt"
    model = save_checkpoint(path, tiny_arch)
    loaded = load_model(ModelSpec(str(path), role="distilled"))
    assert loaded.embedding_size == 8 and loaded.arch == tiny_arch
    assert loaded.params == sum(p.numel() for p in model.parameters()) and loaded.macs > 0
    x = torch.randn(2, 3, 112, 112)
    np.testing.assert_allclose(loaded.embedder(x), model.eval()(x).detach().numpy(), atol=1e-6)

    with pytest.raises(CheckpointError, match="student.pt.*8-d.*says 512"):
        load_model(ModelSpec(str(path), embedding_size=512))
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, tiny_arch, embedding_size=8, declared=16)   # config disagrees with weights
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model(ModelSpec(str(bad)))
    with pytest.raises(DataError, match="nothere.pt"):
        load_model(ModelSpec(str(tmp_path / "nothere.pt")))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="corrupt.pt"):
        load_model(ModelSpec(str(corrupt)))
    plain = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="backbone.pth.*arch"):
        load_model(ModelSpec(str(plain)))
    assert load_model(ModelSpec(str(plain), arch=tiny_arch, embedding_size=8)).embedding_size == 8


def test_checkpoint_at_another_input_size_sees_resized_faces(tmp_path):
    """A 56 px student evaluated on 112 px pair faces gets them area-downsampled to 56 px."""
    from facekd.evaluation.runner import ModelSpec, load_model
    from facekd.models import MODELS

    torch.manual_seed(0)
    model = MODELS.build("mobilefacenet", embedding_size=16, input_size=56).eval()
    path = tmp_path / "student56.pt"
    torch.save({"model_config": {"name": "mobilefacenet", "embedding_size": 16, "input_size": 56},
                "state_dict": model.state_dict()}, path)
    loaded = load_model(ModelSpec(str(path)))
    assert loaded.input_size == 56 and loaded.embedding_size == 16
    x = torch.randn(3, 3, 112, 112)
    expected = model(torch.nn.functional.avg_pool2d(x, 2)).detach().numpy()   # area 112 -> 56
    np.testing.assert_allclose(loaded.embedder(x), expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch's legacy (TorchScript) exporter
def test_load_onnx_model(tmp_path):
    pytest.importorskip("onnxruntime")
    runtime = pytest.importorskip("facekd.export.runtime")
    if not hasattr(runtime, "OnnxEmbedder"):
        pytest.skip("facekd.export.runtime.OnnxEmbedder not available yet")
    from facekd.evaluation.runner import ModelSpec, load_model

    torch.manual_seed(0)
    model, path = TinyNet(8).eval(), tmp_path / "tiny.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["input"],
                      output_names=["embedding"], dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
                      dynamo=False)
    loaded = load_model(ModelSpec(str(path)))
    assert loaded.format == "onnx" and loaded.embedding_size == 8
    x = torch.randn(3, 3, 112, 112)
    np.testing.assert_allclose(loaded.embedder(x), model(x).detach().numpy(), atol=1e-4)
    with pytest.raises(CheckpointError, match="tiny.onnx"):
        load_model(ModelSpec(str(path), embedding_size=512))


def test_onnx_model_of_another_side_takes_112_px_faces_resized(tmp_path):
    """A 56 px student's ONNX gives, on the 112 px faces of a pair set, what its checkpoint gives:
    the faces resized by facekd.preprocess.resize_batch first (the checkpoint's InputResize)."""
    pytest.importorskip("onnxruntime")
    from facekd.evaluation.runner import ModelSpec, load_model
    from facekd.preprocess import InputResize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.AvgPool2d(7),   # 56 -> 14 -> 2
                                torch.nn.Flatten(), torch.nn.Linear(16, 8)).eval()
    path = tmp_path / "tiny56.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 56, 56),), str(path), input_names=["input"],
                      output_names=["embedding"], dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
                      dynamo=False)
    loaded = load_model(ModelSpec(str(path)))
    assert loaded.input_size == 56
    x = torch.randn(3, 3, 112, 112)
    expected = InputResize(model, 56)(x).detach().numpy()
    np.testing.assert_allclose(loaded.embedder(x), expected, atol=1e-4)


def test_specs_parse():
    from facekd.evaluation.runner import ModelSpec, ValSpec

    assert ModelSpec.parse("runs/kd/best.pt") == ModelSpec("runs/kd/best.pt")
    spec = ModelSpec.parse("path=t.pt,role=teacher,label=IResNet-50,arch=iresnet50,embedding_size=512")
    assert (spec.path, spec.role, spec.label, spec.embedding_size) == ("t.pt", "teacher", "IResNet-50", 512)
    assert ModelSpec("runs/kd/best.pt").display_label == "kd/best"
    with pytest.raises(ConfigError, match="role"):
        ModelSpec.parse("path=t.pt,role=boss")
    with pytest.raises(ConfigError, match="colour"):
        ModelSpec.parse("path=t.pt,colour=red")
    assert ValSpec.parse("bin:/data/agedb_30.bin").name == "agedb_30"
    assert ValSpec.parse("synthetic").path is None
    assert ValSpec.parse("lfw:/data/lfw/pairs.txt").name == "lfw"
    assert ValSpec.parse("lfw:/data/view1/pairsDevTest.txt").name == "lfw_pairsDevTest"
    with pytest.raises(ConfigError, match="kind"):
        ValSpec.parse("megaface:/x")
    with pytest.raises(ConfigError, match="PATH"):
        ValSpec.parse("lfw")


def test_unreadable_val_set_is_named(tmp_path):
    """A bad .bin or a pairs list naming a missing image fails with the file's name (facekd.data)."""
    data = pytest.importorskip("facekd.data")
    if not hasattr(data, "build_pair_set"):
        pytest.skip("facekd.data.build_pair_set not available yet")
    from facekd.evaluation.runner import ValSpec, build_pair_sets

    bad_bin = tmp_path / "broken.bin"
    bad_bin.write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="broken.bin"):
        build_pair_sets([ValSpec.parse(f"bin:{bad_bin}")])
    (tmp_path / "lfw" / "Someone").mkdir(parents=True)
    pairs = tmp_path / "lfw" / "pairs.txt"
    pairs.write_text("1\t1\nSomeone\t1\t2\nSomeone\t1\tOther\t1\n")
    with pytest.raises(DataError, match="Someone"):
        pair_sets = build_pair_sets([ValSpec.parse(f"lfw:{pairs}")])
        extract_embeddings(TorchEmbedder(TinyNet()), pair_sets[0][0], progress=False)
