"""Teacher sources (torch, ONNX, dlib, precomputed embeddings), their framing and the teacher cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.config import FramingConfig, TeacherConfig
from facekd.data import SyntheticFaces
from facekd.data.align import ARCFACE_DST, transform_points
from facekd.errors import ConfigError, DataError
from facekd.models import MODELS
from facekd.teachers import (DLIB_CHIP_150, TEACHERS, EmbeddingsTeacher, Framing, FrozenTeacher, OnnxTeacher,
                             TeacherEmbedder, TorchTeacher, build_teacher, save_embeddings)
from facekd.training import CACHE_STATS, TeacherCache
from facekd.training.teacher_cache import PartialBuild, cache_key

MODEL = {"name": "iresnet18", "embedding_size": 32, "input_size": 32, "params": {"width": [8, 16, 32, 64]}}


def tiny_torch_teacher(input_size: int = 32) -> TorchTeacher:
    from facekd.config import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(**{**MODEL, "input_size": input_size})
    backbone = MODELS.build(config.name, embedding_size=config.embedding_size, input_size=config.input_size,
                            **config.params)
    return TorchTeacher(FrozenTeacher(backbone, None, None, "tiny.pt", config))


def faces(n: int, seed: int = 0) -> np.ndarray:
    data = SyntheticFaces(4, 4, seed=seed)
    return np.stack([data.load(i) for i in range(n)])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=1)


# --------------------------------------------------------------------------- framing

def test_arcface_framing_is_the_students_crop():
    framing = Framing(112)
    batch = faces(3)
    assert framing.frame(batch) is batch
    expected = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    assert torch.allclose(framing.normalize(torch.from_numpy(batch)), expected, atol=1e-6)
    bgr = Framing(112, channel_order="BGR", mean=0.0, std=1.0).normalize(torch.from_numpy(batch))
    assert torch.equal(bgr[:, 0], torch.from_numpy(batch[..., 2]).float())


def test_dlib_framing_maps_the_arcface_landmarks_onto_dlibs_chip():
    framing = Framing(150, "dlib", mean=0.0, std=1.0)
    mapped = transform_points(framing.matrix(), ARCFACE_DST)
    residual = np.linalg.norm(mapped - DLIB_CHIP_150, axis=1)
    assert residual.max() < 3.0                                # the templates agree up to a similarity
    eyes = np.linalg.norm(mapped[1] - mapped[0]) / np.linalg.norm(ARCFACE_DST[1] - ARCFACE_DST[0])
    assert 1.5 < eyes < 1.6                                    # dlib's chip shows the face ~1.55x larger
    # a marked pixel at the left eye of the 112 px crop lands at the left eye of the chip
    face = np.zeros((1, 112, 112, 3), np.uint8)
    x, y = np.round(ARCFACE_DST[0]).astype(int)
    face[0, y - 1:y + 2, x - 1:x + 2] = 255
    chip = framing.frame(face)[0]
    assert chip.shape == (150, 150, 3)
    ys, xs = np.nonzero(chip[..., 0] > 60)
    centre = np.array([xs.mean(), ys.mean()])
    assert np.linalg.norm(centre - transform_points(framing.matrix(), np.array([[x, y]], np.float32))[0]) < 1.0
    # beyond the crop the edge is replicated, never black
    grey = np.full((1, 112, 112, 3), 200, np.uint8)
    assert framing.frame(grey).min() == 200


def test_framing_rejects_unknown_values():
    with pytest.raises(ConfigError, match="unknown template"):
        Framing(112, "retina")
    with pytest.raises(ConfigError, match="channel_order"):
        Framing(112, channel_order="RBG")
    with pytest.raises(ConfigError, match="unknown teacher kind|teacher.kind 'bogus' is unknown"):
        build_teacher(TeacherConfig(kind="bogus"))


# --------------------------------------------------------------------------- ONNX == torch

def test_onnx_export_as_teacher_gives_the_torch_teachers_cache(tmp_path):
    """An ONNX export of a facekd model, used as an ONNX teacher, fills the same cache (cos >= 0.9999)."""
    from facekd.export import export_onnx

    teacher = tiny_torch_teacher(32)
    dataset = SyntheticFaces(3, 4, seed=1)
    torch_cache = TeacherCache.load_or_build(teacher, dataset, tmp_path / "a", batch_size=5)
    for fmt in ("float", "uint8"):
        path = tmp_path / f"teacher_{fmt}.onnx"
        export_onnx(teacher.backbone, path, input_format=fmt)
        onnx_teacher = build_teacher(TeacherConfig(kind="onnx", path=str(path)))
        assert isinstance(onnx_teacher, OnnxTeacher) and onnx_teacher.framing.input_size == 32
        assert onnx_teacher.embedding_size == 32
        onnx_cache = TeacherCache.load_or_build(onnx_teacher, dataset, tmp_path / fmt, batch_size=5)
        assert onnx_cache.key != torch_cache.key
        assert cosine(onnx_cache.embeddings, torch_cache.embeddings).min() >= 0.9999


def test_onnx_teacher_refuses_a_model_that_is_not_a_face_embedder(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])])
    path = tmp_path / "not_a_face.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(DataError, match="not_a_face.onnx: not a face embedder"):
        build_teacher(TeacherConfig(kind="onnx", path=str(path)))
    with pytest.raises(DataError, match="missing.onnx"):
        build_teacher(TeacherConfig(kind="onnx", path=str(tmp_path / "missing.onnx")))


# --------------------------------------------------------------------------- precomputed embeddings

def test_embeddings_teacher_looks_up_by_path_and_names_a_missing_image(tmp_path):
    from facekd.data import FolderDataset
    from facekd.data.synthetic import write_synthetic_tree

    root = tmp_path / "faces"
    write_synthetic_tree(root, num_identities=3, images_per_identity=2, seed=0)
    dataset = FolderDataset(root)
    keys = [str(p.relative_to(root)) for p in dataset.paths]
    vectors = np.random.default_rng(0).normal(size=(len(keys), 8)).astype(np.float32)
    path = tmp_path / "vectors.npz"
    save_embeddings(path, keys[::-1], vectors[::-1], mirror_embeddings=-vectors[::-1])
    teacher = build_teacher(TeacherConfig(kind="embeddings", path=str(path)))
    cache = TeacherCache.load_or_build(teacher, dataset, tmp_path / "cache")
    assert torch.equal(cache.embeddings[:, 0], torch.from_numpy(vectors))
    assert torch.equal(cache.embeddings[:, 1], torch.from_numpy(-vectors))
    with pytest.raises(DataError, match="cannot embed new images"):
        teacher.embed(faces(1))

    save_embeddings(path, keys[1:], vectors[1:])                # the first image has no vector
    with pytest.raises(DataError, match=f"{dataset.paths[0].name}: has no precomputed embedding in .*vectors.npz"):
        TeacherCache.load_or_build(build_teacher(TeacherConfig(kind="embeddings", path=str(path))), dataset,
                                   tmp_path / "cache2")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz: not a readable .npz"):
        EmbeddingsTeacher(str(tmp_path / "broken.npz"))


# --------------------------------------------------------------------------- the cache

class FailingTeacher(TorchTeacher):
    """A teacher that dies after ``fail_after`` batches (a killed build) and counts its batches."""

    def __init__(self, teacher: TorchTeacher, fail_after: int = -1) -> None:
        super().__init__(teacher.frozen, framing=teacher.framing)
        self.fail_after, self.batches = fail_after, 0

    def embed(self, faces):
        if self.batches == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        return super().embed(faces)


def test_interrupted_cache_build_resumes_and_never_serves_a_partial_file(tmp_path):
    teacher = tiny_torch_teacher(32)
    dataset = SyntheticFaces(4, 4, seed=3)                      # 16 samples, 4 batches of 4
    reference = TeacherCache.load_or_build(teacher, dataset, tmp_path / "ref", batch_size=4).embeddings

    dying = FailingTeacher(teacher, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        TeacherCache.load_or_build(dying, dataset, tmp_path / "c", batch_size=4, partial_every_s=0)
    key = cache_key(dying, dataset)
    assert not TeacherCache.file_for(tmp_path / "c", key).exists()          # no final file
    partial = TeacherCache.partial_file_for(tmp_path / "c", key)
    assert PartialBuild(partial, key).load().shape == (8, 2, 32)            # two batches kept

    resumed = FailingTeacher(teacher)
    cache = TeacherCache.load_or_build(resumed, dataset, tmp_path / "c", batch_size=4, partial_every_s=0)
    assert resumed.batches == 2                                             # only the remaining half
    assert torch.allclose(cache.embeddings, reference, atol=1e-6)
    assert not partial.exists()
    assert TeacherCache.load_or_build(teacher, dataset, tmp_path / "c").from_disk


def test_a_teacher_whose_framing_changes_rebuilds_the_cache(tmp_path):
    teacher = tiny_torch_teacher(32)
    dataset = SyntheticFaces(3, 2, seed=0)
    CACHE_STATS.reset()
    first = TeacherCache.load_or_build(teacher, dataset, tmp_path)
    again = TeacherCache.load_or_build(tiny_torch_teacher(32), dataset, tmp_path)
    assert again.from_disk and (CACHE_STATS.misses, CACHE_STATS.hits) == (1, 1)
    for framing in (Framing(32, "dlib"), Framing(32, channel_order="BGR"), Framing(32, mean=0.0, std=255.0)):
        other = TorchTeacher(teacher.frozen, framing=framing)
        rebuilt = TeacherCache.load_or_build(other, dataset, tmp_path)
        assert not rebuilt.from_disk and rebuilt.key != first.key
        assert not torch.allclose(rebuilt.embeddings, first.embeddings)
    assert CACHE_STATS.misses == 4


def test_teacher_embedder_equals_the_teacher_on_normalised_batches():
    from facekd.preprocess import normalize_uint8

    teacher = tiny_torch_teacher(32)
    batch = faces(4)
    out = TeacherEmbedder(teacher, batch_size=3)(normalize_uint8(batch))
    assert out.shape == (4, 32)
    assert np.allclose(out, teacher.embed(torch.from_numpy(batch)).numpy(), atol=1e-5)   # batching order only


def test_registry_lists_every_source():
    assert {"torch", "onnx", "sface", "dlib", "embeddings", "ensemble"} <= set(TEACHERS)
    assert FramingConfig().template is None


# --------------------------------------------------------------------------- dlib on real faces

@pytest.fixture(scope="module")
def lfw_pairs(shared_data):
    """20 same and 20 different LFW View 1 DevTest pairs, aligned to 112 px by MTCNN."""
    from facekd.data.align import FaceAligner
    from facekd.data.image_io import read_image

    root = shared_data / "lfw-view1"
    lines = (root / "pairsDevTest.txt").read_text().split("\n")[1:]
    same = [line.split() for line in lines[:20]]
    diff = [line.split() for line in lines[500:520]]
    aligner = FaceAligner()
    path = lambda name, i: root / "images" / name / f"{name}_{int(i):04d}.jpg"  # noqa: E731
    pairs = [(path(a, i), path(a, j)) for a, i, j in same] + [(path(a, i), path(b, j)) for a, i, b, j in diff]
    aligned = {}
    for p in {p for pair in pairs for p in pair}:
        face = aligner.align(read_image(p))
        aligned[p] = face if face is not None else np.zeros((112, 112, 3), np.uint8)
    return pairs, aligned, np.array([True] * 20 + [False] * 20)


def test_dlib_worker_processes_give_the_in_process_descriptors(lfw_pairs):
    """threads=2 splits a large batch over two worker processes (dlib holds the GIL); same numbers."""
    pytest.importorskip("dlib")
    from facekd.teachers.dlib_teacher import MIN_CHIPS_PER_WORKER

    _, aligned, _ = lfw_pairs
    faces = np.stack(list(aligned.values())[:2 * MIN_CHIPS_PER_WORKER + 3])
    single = build_teacher(TeacherConfig(kind="dlib", backend="dlib-bin", threads=1))
    parallel = build_teacher(TeacherConfig(kind="dlib", backend="dlib-bin", threads=2))
    try:
        expected = single.embed(faces)
        got = parallel.embed(faces)
        assert parallel._pool is not None and single._pool is None
        assert torch.equal(got, expected) and got.shape == (len(faces), 128)
        assert torch.equal(parallel.embed(faces[:3]), expected[:3])     # small batches stay in-process
    finally:
        parallel.close()
    assert parallel._pool is None


def test_dlib_teacher_separates_real_lfw_pairs(lfw_pairs):
    pytest.importorskip("dlib")
    from facekd.teachers.dlib_teacher import default_model_path

    pairs, aligned, issame = lfw_pairs
    teacher = build_teacher(TeacherConfig(kind="dlib"))
    assert teacher.embedding_size == 128 and teacher.framing.input_size == 150
    assert teacher.source == default_model_path()
    keys = sorted(aligned)
    vectors = teacher.embed(np.stack([aligned[k] for k in keys]))
    assert vectors.shape == (len(keys), 128)
    row = {k: i for i, k in enumerate(keys)}
    distance = np.array([torch.dist(vectors[row[a]], vectors[row[b]]).item() for a, b in pairs])
    # dlib's own decision rule: same person below 0.6
    accuracy = np.mean((distance < 0.6) == issame)
    assert accuracy >= 0.85, (accuracy, distance)


# --------------------------------------------------------------------------- facekd eval with teachers

def keyed_pair_set(num_ids: int = 20, per_id: int = 4, seed: int = 0):
    """Pairs over keys ``id<k>/img<j>.jpg`` (10 folds of same + different pairs) and identity vectors."""
    from facekd.data import PairSet

    rng = np.random.default_rng(seed)
    images = [f"faces/id{k}/img{j}.jpg" for k in range(num_ids) for j in range(per_id)]
    identity = np.repeat(np.arange(num_ids), per_id)
    pairs, issame, folds = [], [], []
    for fold in range(10):
        for same in (True, False):
            for _ in range(6):
                a = int(rng.integers(len(images)))
                b = int(rng.choice(np.flatnonzero((identity == identity[a]) == same)))
                pairs.append([a, b]); issame.append(same); folds.append(fold)  # noqa: E702
    pair_set = PairSet("keyed", images, np.array(pairs), np.array(issame), np.array(folds),
                       lambda key: np.zeros((112, 112, 3), np.uint8))
    centres = rng.normal(size=(num_ids, 16))
    return pair_set, images, centres[identity]


def test_eval_takes_precomputed_embeddings_and_reports_cross_model_verification(tmp_path):
    from facekd.evaluation.runner import EvalOptions, ModelSpec, evaluate_models

    pair_set, images, clean = keyed_pair_set()
    rng = np.random.default_rng(1)
    relative = [k.split("/", 1)[1] for k in images]              # keys relative to a folder above
    files = {}
    for name, vectors in (("teacher", clean + 0.3 * rng.normal(size=clean.shape)),
                          ("student", clean + 0.3 * rng.normal(size=clean.shape)),   # the teacher's space
                          ("stranger", rng.normal(size=clean.shape))):               # another space
        files[name] = str(tmp_path / f"{name}.npz")
        save_embeddings(files[name], relative, vectors)
    specs = [ModelSpec.parse(f"path={files['teacher']},kind=embeddings,role=teacher,label=T"),
             ModelSpec.parse(f"path={files['student']},kind=embeddings,role=distilled,label=S"),
             ModelSpec(path=files["stranger"], kind="embeddings", label="R")]
    results = evaluate_models(specs, [pair_set], EvalOptions(latency_runs=0, hardest=0, progress=False),
                              log=lambda line: None)
    teacher, student, stranger = results["models"]
    assert teacher["format"] == "embeddings" and teacher["results"]["keyed"]["resolution"] is None
    assert teacher["results"]["keyed"]["flip"]["accuracy_mean"] > 0.95
    assert "cross" not in teacher["results"]["keyed"]
    cross = student["results"]["keyed"]["cross"]
    assert cross["teacher"] == "T" and cross["flip"]["accuracy_mean"] > 0.95
    assert stranger["results"]["keyed"]["flip"]["accuracy_mean"] < 0.7
    assert stranger["results"]["keyed"]["cross"]["flip"]["accuracy_mean"] < 0.7

    save_embeddings(files["teacher"], relative[1:], clean[1:])    # one image has no vector
    with pytest.raises(DataError, match="faces/id0/img0.jpg: has no precomputed embedding"):
        evaluate_models(specs[:1], [pair_set], EvalOptions(latency_runs=0, progress=False), log=lambda line: None)


def test_cross_model_centres_the_teacher_gallery_for_a_centred_student():
    """A student trained on t/|t| - mu is matched against the teacher's gallery centred by mu."""
    from facekd.evaluation.embed import ImageEmbeddings
    from facekd.evaluation.runner import EvalOptions, cross_model_results
    from facekd.evaluation.verification import evaluate, pair_embeddings

    pair_set, _, identity = keyed_pair_set()
    rng = np.random.default_rng(2)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)        # noqa: E731
    mu = np.zeros(16); mu[0] = 12.0                                      # one dominant direction, like dlib's
    teacher = unit(mu + identity + 0.3 * rng.normal(size=identity.shape))
    center = teacher.mean(0)
    student = unit(teacher - center + 0.05 * rng.normal(size=identity.shape))
    entries = [{"label": "T", "role": "teacher", "embedding_size": 16, "results": {"keyed": {}}},
               {"label": "S", "role": "distilled", "embedding_size": 16, "results": {"keyed": {}}}]
    embeddings = {(0, "keyed"): ImageEmbeddings(teacher, teacher), (1, "keyed"): ImageEmbeddings(student, student)}
    options = EvalOptions(latency_runs=0, progress=False)
    cross_model_results(entries, embeddings, [pair_set], options, {1: center})
    cross = entries[1]["results"]["keyed"]["cross"]
    expected = evaluate(pair_embeddings(pair_set.pairs, student, unit(teacher - center)), pair_set.issame,
                        options.nrof_folds, options.far_targets)
    assert cross["teacher_centred"] and cross["flip"]["accuracy_mean"] == expected.to_dict()["accuracy_mean"]
    assert cross["flip"]["accuracy_mean"] > 0.95
    cross_model_results(entries, embeddings, [pair_set], options)          # uncentred gallery: worse
    assert not entries[1]["results"]["keyed"]["cross"]["teacher_centred"]
    assert entries[1]["results"]["keyed"]["cross"]["flip"]["auc"] < cross["flip"]["auc"]


def test_eval_runs_a_framed_onnx_teacher_and_skips_its_resolution_curve_on_request(tmp_path):
    from facekd.evaluation.runner import EvalOptions, ModelSpec, evaluate_models
    from facekd.export import export_onnx

    teacher = tiny_torch_teacher(32)
    path = tmp_path / "embedder.onnx"
    export_onnx(teacher.backbone, path)
    spec = ModelSpec.parse(f"path={path},kind=onnx,template=dlib,channel_order=BGR,resolution=false,role=teacher")
    assert (spec.template, spec.channel_order, spec.resolution) == ("dlib", "BGR", False)
    results = evaluate_models([spec], [_synthetic_pairs()], EvalOptions(latency_runs=2, hardest=0, progress=False,
                                                                        resolution_sizes=[28]),
                              log=lambda line: None)
    model = results["models"][0]
    assert model["format"] == "onnx" and model["input_size"] == 32 and model["embedding_size"] == 32
    assert "framing:dlib" in model["framing"] and "order=BGR" in model["framing"]
    assert model["results"]["synthetic"]["resolution"] is None and model["latency_ms"] > 0


def _synthetic_pairs():
    from facekd.data import build_pair_set

    return build_pair_set("synthetic", "synthetic", None, num_pairs=40)


def test_val_spec_takes_per_set_options():
    from facekd.evaluation.runner import ValSpec

    spec = ValSpec.parse("cfp_fp:data/cfp,root=aligned/cfp,align=none", {"align": "mtcnn", "cache": True})
    assert (spec.kind, spec.path, spec.name) == ("cfp_fp", "data/cfp", "cfp_fp_cfp")
    assert spec.options == {"align": "none", "cache": True, "root": "aligned/cfp"}
    with pytest.raises(ConfigError, match="expected KIND:PATH"):
        ValSpec.parse("lfw:pairs.txt,oops")


def test_report_shows_cross_model_rows(tmp_path):
    from facekd.evaluation.report import cross_model_table, render_markdown
    from facekd.evaluation.runner import EvalOptions, ModelSpec, evaluate_models

    pair_set, images, clean = keyed_pair_set(seed=2)
    for name in ("t", "s"):
        save_embeddings(tmp_path / f"{name}.npz", images, clean + 0.2 * np.random.default_rng(len(name)).normal(
            size=clean.shape))
    specs = [ModelSpec(path=str(tmp_path / "t.npz"), kind="embeddings", role="teacher", label="T"),
             ModelSpec(path=str(tmp_path / "s.npz"), kind="embeddings", role="distilled", label="S")]
    results = evaluate_models(specs, [pair_set], EvalOptions(latency_runs=0, hardest=0, progress=False),
                              log=lambda line: None)
    header, rows = cross_model_table(results, "keyed")
    assert [row[0] for row in rows] == ["S"] and header[3] == "Accuracy % (probe vs teacher)"
    expected = results["models"][1]["results"]["keyed"]["cross"]["flip"]["accuracy_mean"]
    assert rows[0][3].startswith(f"{100 * expected:.2f}")
    assert "Cross-model verification" in render_markdown(results)


# --------------------------------------------------------------------------- ensembles

def test_ensemble_target_is_the_weighted_concatenation_of_its_members_unit_embeddings(tmp_path):
    """Two members with their own framing (32 px torch, 16 px ONNX export): the ensemble's target
    equals [w1 e1/|e1|, w2 e2/|e2|], and its cache key changes with a member's weight."""
    from facekd.export import export_onnx
    from facekd.teachers import EnsembleTeacher

    first = tiny_torch_teacher(32)
    path = tmp_path / "second.onnx"
    export_onnx(tiny_torch_teacher(16).backbone, path)
    config = TeacherConfig(kind="ensemble", members=[TeacherConfig(kind="onnx", path=str(path))],
                           member_weights=[0.5])
    second = build_teacher(config).members[0]
    assert second.framing.input_size == 16
    ensemble = EnsembleTeacher([first, second], [1.0, 0.5])
    batch = faces(5)
    expected = torch.cat([torch.nn.functional.normalize(first.embed(batch), dim=1),
                          0.5 * torch.nn.functional.normalize(second.embed(batch), dim=1)], dim=1)
    assert ensemble.embedding_size == 64
    assert torch.equal(ensemble.embed(batch), expected)
    assert ensemble.fingerprint() != EnsembleTeacher([first, second], [1.0, 1.0]).fingerprint()


def test_ensemble_config_is_checked(tmp_path):
    from facekd.config import load_config

    with pytest.raises(ConfigError, match="names no teacher"):
        build_teacher(TeacherConfig(kind="ensemble"))
    with pytest.raises(ConfigError, match="cannot be a member"):
        build_teacher(TeacherConfig(kind="ensemble", members=[TeacherConfig(kind="ensemble")]))
    config = tmp_path / "ensemble.yaml"
    config.write_text("teacher: {kind: ensemble, members: [{kind: sface}, {kind: dlib, backend: torch}], "
                      "member_weights: [1.0, 0.5]}\n")
    loaded = load_config(config).teacher
    assert [m.kind for m in loaded.members] == ["sface", "dlib"] and loaded.members[1].backend == "torch"
    with pytest.raises(ConfigError, match="teacher.members.0.kindd"):
        config.write_text("teacher: {kind: ensemble, members: [{kindd: sface}]}\n")
        load_config(config)
