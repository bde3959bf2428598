"""Evaluate checkpoints and ONNX files on verification sets and collect the results JSON.

``facekd eval`` is a thin layer over :func:`evaluate_models`; ``facekd report`` renders the
JSON it writes (:mod:`facekd.evaluation.report`).  Results JSON (``schema`` =
:data:`RESULTS_SCHEMA`)::

    {
      "schema": "facekd.eval/1", "created": "...", "environment": {...},
      "protocol": {"nrof_folds": 10, "far_targets": [0.001, 0.01], "resolution_sizes": [...],
                   "resolution_side": "both", ...},
      "val_sets": [{"name": "lfw", "kind": "lfw", "path": "...", "num_pairs": 6000,
                    "num_same": 3000, "num_images": 7701}],
      "models": [{
        "label": "mobilefacenet-kd", "role": "distilled", "path": "...", "format": "torch",
        "arch": "mobilefacenet", "embedding_size": 512, "params": 1.2e6, "macs": 2.3e8,
        "latency_ms": 3.1, "latency_batch_size": 1,
        "results": {"lfw": {
            "plain": METRICS, "flip": METRICS,          # VerificationResult.to_dict()
            "resolution": {...} | null,                 # ResolutionCurve.to_dict()
            "hardest": {"false_accepts": [PAIR...], "false_rejects": [PAIR...]},
            "seconds": 12.3}}
      }]
    }

where ``PAIR = {"pair": i, "images": [key1, key2], "distance": d, "threshold": t,
"thumbnails": [base64 JPEG, base64 JPEG]}`` (clean images, flip embeddings' decisions).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from facekd.errors import CheckpointError, ConfigError, DataError
from facekd.evaluation.embed import (DegradeFn, Embedder, ImageEmbeddings, TorchEmbedder, extract_embeddings,
                                    measure_embedding_size)
from facekd.evaluation.imaging import encode_image
from facekd.evaluation.resolution import DEFAULT_SIZES, SIDES, resolution_curve
from facekd.evaluation.verification import (DEFAULT_FAR_TARGETS, VerificationResult, evaluate, l2_normalize,
                                           pair_embeddings)
from facekd.fileio import atomic_write_text
from facekd.preprocess import INPUT_SIZE
from facekd.registry import Registry

RESULTS_SCHEMA = "facekd.eval/1"
ROLES = ("teacher", "baseline", "distilled")
PAIR_KINDS = ("lfw", "bin", "agedb", "cfp_fp", "cfp_ff", "synthetic")

#: model file format -> loader(spec, options) -> LoadedModel
MODEL_FORMATS = Registry("model format")
#: file suffix -> format name in :data:`MODEL_FORMATS`
SUFFIX_FORMATS = {".pt": "torch", ".pth": "torch", ".ckpt": "torch", ".onnx": "onnx"}


# --------------------------------------------------------------------------- specs

def _parse_fields(text: str, what: str) -> Dict[str, str]:
    fields = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {text!r}: expected key=value items separated by commas")
        fields[key.strip()] = value.strip()
    return fields


@dataclass
class ModelSpec:
    """A model to evaluate: a facekd checkpoint (``.pt``/``.pth``), an ONNX file, or any teacher source.

    ``arch`` is needed only for a plain state dict without ``model_config`` (e.g. an
    insightface ``backbone.pth``); ``embedding_size``, if given, is checked against what the
    model actually produces.  ``kind`` (a :data:`facekd.teachers.TEACHERS` name: ``onnx``,
    ``dlib``, ``embeddings``) loads the file as that teacher source, framed its way
    (``input_size``, ``template``, ``channel_order``, ``mean``, ``std`` override the kind's
    defaults); ``kind=dlib`` needs no path (the packaged model).  ``resolution=false`` skips
    the model's resolution curve (e.g. for a slow teacher).
    """
    path: str = ""
    role: Optional[str] = None
    label: Optional[str] = None
    arch: Optional[str] = None
    embedding_size: Optional[int] = None
    input_size: Optional[int] = None
    kind: Optional[str] = None
    template: Optional[str] = None
    channel_order: Optional[str] = None
    mean: Optional[float] = None
    std: Optional[float] = None
    resolution: bool = True

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``PATH`` or ``path=PATH,role=teacher,label=IResNet-50,arch=iresnet50,embedding_size=512``
        (also ``kind=dlib,role=teacher`` and ``path=w600k_r50.onnx,kind=onnx,channel_order=BGR``)."""
        if not re.match(r"[a-z_]+=", text):
            return cls(path=text)
        fields = _parse_fields(text, "--model")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"--model {text!r}: unknown key(s) {unknown}; known: {sorted(known)}")
        for key, convert in (("embedding_size", int), ("input_size", int), ("mean", float), ("std", float)):
            if key in fields:
                try:
                    fields[key] = convert(fields[key])  # type: ignore[assignment]
                except ValueError:
                    raise ConfigError(f"--model {text!r}: {key} must be a number") from None
        if "resolution" in fields:
            flag = fields["resolution"].lower()
            if flag not in ("true", "false"):
                raise ConfigError(f"--model {text!r}: resolution must be true or false")
            fields["resolution"] = flag == "true"  # type: ignore[assignment]
        spec = cls(**fields)  # type: ignore[arg-type]
        if spec.role is not None and spec.role not in ROLES:
            raise ConfigError(f"--model {text!r}: role must be one of {ROLES}, got {spec.role!r}")
        return spec

    @property
    def display_label(self) -> str:
        """``label`` or a name derived from the path (``runs/kd/best.pt`` -> ``kd/best``)."""
        if self.label:
            return self.label
        if not self.path:
            return str(self.kind)
        path = Path(self.path)
        return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


@dataclass
class ValSpec:
    """A verification set: a :data:`facekd.data.PAIR_SOURCES` kind and its path."""
    kind: str
    path: Optional[str] = None
    name: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, options: Optional[Dict[str, Any]] = None) -> "ValSpec":
        """``KIND:PATH`` (``synthetic`` needs no path), optionally followed by this set's own
        ``,key=value`` options for :func:`facekd.data.build_pair_set` (values parsed as YAML;
        they override ``options``), e.g. ``cfp_fp:data/cfp,root=aligned/cfp,align=none``.

        The name is a .bin file's stem; else the kind, suffixed with the list's stem when that
        is not the standard one (``lfw:View1/pairsDevTest.txt`` -> ``lfw_pairsDevTest``).
        """
        import yaml

        kind, _, rest = text.partition(":")
        path, *items = rest.split(",") if rest else [""]
        own = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--val {text!r}: expected KIND:PATH[,key=value...], got item {item!r}")
            own[key.strip()] = yaml.safe_load(value)
        kind = kind.strip()
        if kind not in PAIR_KINDS:
            raise ConfigError(f"--val {text!r}: kind must be one of {PAIR_KINDS}, got {kind!r}")
        if not path and kind != "synthetic":
            raise ConfigError(f"--val {text!r}: expected {kind}:PATH")
        stem = Path(path).stem if path else ""
        if kind == "bin":
            name = stem
        elif not path or Path(path).is_dir() or stem in ("pairs", kind):
            name = kind
        else:                                   # e.g. lfw:.../pairsDevTest.txt -> lfw_pairsDevTest
            name = f"{kind}_{stem}"
        return cls(kind=kind, path=path or None, name=name, options={**(options or {}), **own})


# --------------------------------------------------------------------------- loading models

@dataclass
class LoadedModel:
    """A model ready to embed, with what the report shows about it."""
    spec: ModelSpec
    format: str
    embedder: Embedder
    embedding_size: int
    input_size: int = INPUT_SIZE
    arch: Optional[str] = None
    params: Optional[int] = None
    macs: Optional[int] = None
    #: side of the batches the embedder takes (default ``input_size``; teachers take 112 px faces)
    embedder_input_size: Optional[int] = None
    #: a teacher of precomputed vectors: looked up by image key instead of embedding pixels
    keyed: Any = None
    framing: Optional[str] = None
    #: a student distilled with ``teacher.center``: the mean unit teacher embedding it was trained
    #: against, subtracted from the teacher's gallery embeddings in cross-model verification
    teacher_center: Optional[np.ndarray] = None

    def describe(self) -> Dict[str, Any]:
        """The JSON fields describing the model (without results)."""
        return {"label": self.spec.display_label, "role": self.spec.role, "path": self.spec.path,
                "format": self.format, "arch": self.arch, "embedding_size": self.embedding_size,
                "input_size": self.input_size, "params": self.params, "macs": self.macs,
                **({"framing": self.framing} if self.framing else {})}


def check_embedding_size(path: str, actual: int, declared: Dict[str, Optional[int]]) -> None:
    """Raise :class:`CheckpointError` naming ``path`` if a declared size disagrees with ``actual``."""
    for source, size in declared.items():
        if size is not None and int(size) != int(actual):
            raise CheckpointError(f"{path}: the model produces {actual}-d embeddings but {source} "
                                  f"says {size}")


def load_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
               amp: str = "none") -> LoadedModel:
    """Load ``spec.path`` with the loader its ``kind`` or suffix selects (:data:`SUFFIX_FORMATS`)."""
    if spec.kind not in (None, "torch"):
        loader = load_teacher_model
    else:
        check_model_file(spec)
        suffix = Path(spec.path).suffix.lower()
        if suffix not in SUFFIX_FORMATS:
            raise DataError(spec.path, f"unknown model file type {suffix!r}; expected one of "
                                       f"{sorted(SUFFIX_FORMATS)} (or name a teacher kind=...)")
        loader = MODEL_FORMATS.get(SUFFIX_FORMATS[suffix])
    loaded = loader(spec, device=device, batch_size=batch_size, amp=amp)
    check_embedding_size(spec.path, loaded.embedding_size,
                         {"the --model spec / --embedding-size": spec.embedding_size})
    return loaded


def check_model_file(spec: ModelSpec) -> None:
    """:class:`DataError` unless ``spec.path`` exists (a ``kind=dlib`` spec may name none)."""
    if spec.kind == "dlib" and not spec.path:
        return
    if not spec.path or not os.path.isfile(spec.path):
        raise DataError(spec.path or "<no path>", "model file not found")


def load_teacher_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
                       amp: str = "none") -> LoadedModel:
    """Any :mod:`facekd.teachers` source (``spec.kind``), run on 112 px faces framed its way."""
    from facekd.config import FramingConfig, TeacherConfig
    from facekd.teachers import TeacherEmbedder, build_teacher

    check_model_file(spec)
    framing = FramingConfig(spec.input_size, spec.template, spec.channel_order, spec.mean, spec.std)
    teacher = build_teacher(TeacherConfig(kind=spec.kind, path=spec.path or None, framing=framing), device, amp)
    keyed = teacher if teacher.kind == "embeddings" else None
    return LoadedModel(spec, teacher.kind, TeacherEmbedder(teacher, batch_size or 0), teacher.embedding_size,
                       teacher.framing.input_size, teacher.kind, embedder_input_size=INPUT_SIZE, keyed=keyed,
                       framing=teacher.framing.describe())


def _checkpoint_model_config(checkpoint: Any, spec: ModelSpec) -> Dict[str, Any]:
    config = checkpoint.get("model_config") if isinstance(checkpoint, dict) else None
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    if config is None:
        if not spec.arch:
            raise CheckpointError(f"{spec.path}: the checkpoint has no 'model_config'; name the "
                                  f"architecture with --model path=...,arch=NAME")
        config = {"name": spec.arch, "embedding_size": spec.embedding_size or 512,
                  "input_size": spec.input_size or INPUT_SIZE}
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"{spec.path}: 'model_config' must be a dict with a 'name', got {config!r}")
    return dict(config)


@MODEL_FORMATS.register("torch")
def load_torch_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
                     amp: str = "none") -> LoadedModel:
    """A facekd checkpoint (``model_config`` + ``state_dict``) or a plain state dict with ``arch``."""
    from facekd.config import ModelConfig
    from facekd.models import build_model, count_macs, count_parameters, load_pretrained, read_checkpoint
    from facekd.preprocess import InputResize

    checkpoint = read_checkpoint(spec.path)
    config = _checkpoint_model_config(checkpoint, spec)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in config.items() if k in known})
    try:
        model = build_model(model_cfg)
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{spec.path}: cannot build the model it describes ({error})") from None
    load_pretrained(model, spec.path, strict=True)
    model.eval()
    params, macs = count_parameters(model), count_macs(model, model_cfg.input_size)
    # pair sets hold 112x112 faces; a model trained at another size sees them resized
    embedder = TorchEmbedder(InputResize(model, model_cfg.input_size), device=device, batch_size=batch_size, amp=amp)
    actual = measure_embedding_size(embedder, model_cfg.input_size)
    check_embedding_size(spec.path, actual, {"its model_config": model_cfg.embedding_size})
    center = checkpoint.get("teacher_center") if isinstance(checkpoint, dict) else None
    return LoadedModel(spec, "torch", embedder, actual, int(model_cfg.input_size), model_cfg.name,
                       params, macs, teacher_center=None if center is None else np.asarray(center, np.float32))


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _onnx_parameter_count(path: str) -> int:
    """Elements of the graph's initializers (the weights)."""
    from facekd.export.runtime import load_onnx_proto

    proto = load_onnx_proto(path, load_weights=False)   # shapes only
    return int(sum(int(np.prod(t.dims)) for t in proto.graph.initializer))


@MODEL_FORMATS.register("onnx")
def load_onnx_model(spec: ModelSpec, device: str = "cpu", batch_size: Optional[int] = None,
                    amp: str = "none") -> LoadedModel:
    """An ONNX file run by :class:`facekd.export.runtime.OnnxEmbedder` (``amp`` does not apply).

    The embedding size is measured with one forward pass and checked against what the
    file declares (facekd metadata, else the graph's output shape).
    """
    from facekd.export.runtime import OnnxEmbedder

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    embedder = OnnxEmbedder(spec.path, providers=providers, batch_size=batch_size)
    actual = measure_embedding_size(embedder, embedder.input_size)
    check_embedding_size(spec.path, actual, {"its metadata / output shape": embedder.embedding_size})
    meta = embedder.metadata
    params = meta.params if meta.params is not None else _onnx_parameter_count(spec.path)
    arch = meta.model_name if meta.model_name != "unknown" else None
    return LoadedModel(spec, "onnx", embedder, actual, int(embedder.input_size), arch, params, meta.macs)


def measure_latency(embedder: Embedder, input_size: int = INPUT_SIZE, batch_size: int = 1,
                    warmup: int = 3, runs: int = 20) -> float:
    """Median wall time per image in milliseconds over ``runs`` calls on a zero batch."""
    import torch

    batch = torch.zeros(batch_size, 3, input_size, input_size)
    for _ in range(warmup):
        embedder(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        embedder(batch)   # returns numpy: any device work has finished
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000.0 / batch_size


# --------------------------------------------------------------------------- evaluation

@dataclass
class EvalOptions:
    """How :func:`evaluate_models` runs (the ``facekd eval`` options)."""
    batch_size: int = 64
    device: str = "cpu"
    amp: str = "none"
    nrof_folds: int = 10
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS
    resolution_sizes: Sequence[int] = DEFAULT_SIZES    # empty: no resolution curve
    resolution_side: str = "both"
    hardest: int = 4                                   # false accepts / rejects kept per set
    latency_runs: int = 20                             # 0: do not measure latency
    latency_batch_size: int = 1
    embedding_size: Optional[int] = None               # declared size every model must produce
    num_workers: int = 0
    progress: bool = True
    degrade_fn: Optional[DegradeFn] = None             # default: facekd.data.degrade_to_size

    def __post_init__(self) -> None:
        if self.resolution_side not in SIDES:
            raise ConfigError(f"resolution side must be one of {SIDES}, got {self.resolution_side!r}")


def build_pair_set(name: str, kind: str, path: Optional[str], **options: Any) -> Any:
    """:func:`facekd.data.build_pair_set` (imported lazily)."""
    from facekd.data import build_pair_set as build

    return build(name, kind, path, **options)


def build_pair_sets(val_sets: Sequence[Union[ValSpec, Any]]) -> List[Tuple[Any, Dict[str, Any]]]:
    """``(pair_set, description)`` for each entry.

    A :class:`ValSpec` is built with ``facekd.data.build_pair_set`` under a unique name
    (``lfw``, ``lfw-2``, ...); anything else is taken as a ready pair set.
    """
    seen: Dict[str, int] = {}
    out = []
    for entry in val_sets:
        if isinstance(entry, ValSpec):
            name = entry.name or entry.kind
            seen[name] = seen.get(name, 0) + 1
            name = name if seen[name] == 1 else f"{name}-{seen[name]}"
            pair_set, kind, path = build_pair_set(name, entry.kind, entry.path, **entry.options), entry.kind, entry.path
        else:
            pair_set, kind, path = entry, getattr(entry, "kind", None), getattr(entry, "path", None)
        out.append((pair_set, {"name": pair_set.name, "kind": kind, "path": path,
                               "num_pairs": int(len(pair_set.issame)), "num_same": int(np.sum(pair_set.issame)),
                               "num_images": int(len(pair_set.images))}))
    return out


def hardest_pairs(result: VerificationResult, pair_set: Any, k: int) -> Dict[str, List[Dict[str, Any]]]:
    """The ``k`` most confident false accepts and false rejects, with JPEG thumbnails."""
    def describe(i: int) -> Dict[str, Any]:
        a, b = (int(j) for j in pair_set.pairs[i])
        return {"pair": int(i), "images": [str(pair_set.images[a]), str(pair_set.images[b])],
                "distance": float(result.distances[i]), "threshold": float(result.pair_threshold[i]),
                "thumbnails": [encode_image(pair_set.load(a)), encode_image(pair_set.load(b))]}

    false_accepts, false_rejects = result.hardest_errors(k)
    return {"false_accepts": [describe(i) for i in false_accepts],
            "false_rejects": [describe(i) for i in false_rejects]}


def image_embeddings(model: LoadedModel, pair_set: Any, options: EvalOptions) -> ImageEmbeddings:
    """Clean (plain, flip) embeddings of every image of ``pair_set``: embedded, or looked up by key."""
    if model.keyed is None:
        return extract_embeddings(model.embedder, pair_set, options.batch_size, progress=options.progress,
                                  num_workers=options.num_workers)
    rows = model.keyed.lookup(pair_set.images).numpy()
    return ImageEmbeddings(l2_normalize(rows[:, 0]), l2_normalize(rows[:, 0] + rows[:, 1]))


def evaluate_on_pair_set(model: LoadedModel, pair_set: Any, options: EvalOptions,
                         clean: Optional[ImageEmbeddings] = None) -> Dict[str, Any]:
    """Plain and flip verification, resolution curve and hardest pairs of one model on one set.

    ``clean`` are the model's embeddings of the set when already computed.  A model of
    precomputed embeddings has no resolution curve (it cannot embed degraded probes).
    """
    start = time.perf_counter()
    clean = clean if clean is not None else image_embeddings(model, pair_set, options)
    results = {kind: evaluate(pair_embeddings(pair_set.pairs, getattr(clean, kind)), pair_set.issame,
                              options.nrof_folds, options.far_targets)
               for kind in ("plain", "flip")}
    curve = None
    if options.resolution_sizes and model.keyed is None and model.spec.resolution:
        curve = resolution_curve(model.embedder, pair_set, options.resolution_sizes, options.resolution_side,
                                 options.batch_size, clean=clean, nrof_folds=options.nrof_folds,
                                 far_targets=options.far_targets, progress=options.progress,
                                 degrade_fn=options.degrade_fn, num_workers=options.num_workers).to_dict()
    return {"plain": results["plain"].to_dict(), "flip": results["flip"].to_dict(), "resolution": curve,
            "hardest": hardest_pairs(results["flip"], pair_set, options.hardest),
            "seconds": round(time.perf_counter() - start, 3)}


def cross_model_results(entries: Sequence[Dict[str, Any]], embeddings: Dict[Tuple[int, str], ImageEmbeddings],
                        pair_sets: Sequence[Any], options: EvalOptions,
                        centres: Optional[Dict[int, np.ndarray]] = None) -> None:
    """Add ``results[set]["cross"]`` to every model that shares the teacher's embedding size.

    Cross-model verification: the first image of each pair is embedded by the model, the
    second by the first ``role=teacher`` model (flip embeddings) — what a phone model
    matching a gallery enrolled with the server's teacher needs.  It is meaningful when the
    student was distilled into the teacher's embedding space (``feature_distill`` without a
    projection).  ``centres[i]``, for a student distilled with ``teacher.center``, is the mean
    unit teacher embedding of its training faces: the teacher's gallery embeddings are centred
    by it (``t - mu``, renormalised) before they are compared with that student's probes.
    """
    teachers = [i for i, entry in enumerate(entries) if entry.get("role") == "teacher"]
    if not teachers:
        return
    t = teachers[0]
    for i, entry in enumerate(entries):
        if i == t or entry["embedding_size"] != entries[t]["embedding_size"]:
            continue
        center = (centres or {}).get(i)
        for pair_set in pair_sets:
            gallery = embeddings[t, pair_set.name].flip
            if center is not None:
                gallery = l2_normalize(gallery - center)
            result = evaluate(pair_embeddings(pair_set.pairs, embeddings[i, pair_set.name].flip, gallery),
                              pair_set.issame, options.nrof_folds, options.far_targets)
            entry["results"][pair_set.name]["cross"] = {"teacher": entries[t]["label"], "flip": result.to_dict(),
                                                        "teacher_centred": center is not None}


def evaluate_models(models: Sequence[ModelSpec], val_sets: Sequence[Union[ValSpec, Any]],
                    options: Optional[EvalOptions] = None,
                    log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Evaluate every model on every verification set; returns the results JSON as a dict.

    ``val_sets`` holds :class:`ValSpec` (built with ``facekd.data.build_pair_set``) or
    ready pair-set objects.  Every pair set is built and every model loaded and checked
    (embedding size) before any embedding work, so bad input fails fast.  With a
    ``role=teacher`` model, models of its embedding size also get cross-model results
    (:func:`cross_model_results`).
    """
    options = options or EvalOptions()
    for spec in models:
        check_model_file(spec)
    built = build_pair_sets(val_sets)
    if options.embedding_size is not None:
        models = [spec if spec.embedding_size is not None else dataclasses.replace(spec, embedding_size=options.embedding_size)
                  for spec in models]
    loaded = [load_model(spec, options.device, options.batch_size, options.amp) for spec in models]
    pair_sets = [pair_set for pair_set, _ in built]

    output: Dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(options.device),
        "protocol": {"nrof_folds": options.nrof_folds, "far_targets": [float(f) for f in options.far_targets],
                     "accuracy_thresholds": "np.arange(0, 4, 0.01)", "distance": "squared L2, normalised",
                     "flip": "sum of image and mirror embeddings, then L2-normalised",
                     "resolution_sizes": [int(s) for s in options.resolution_sizes],
                     "resolution_side": options.resolution_side},
        "val_sets": [description for _, description in built],
        "models": [],
    }
    embeddings: Dict[Tuple[int, str], ImageEmbeddings] = {}
    for index, model in enumerate(loaded):
        entry = model.describe()
        entry["latency_ms"] = None
        if options.latency_runs > 0 and model.keyed is None:
            entry["latency_ms"] = round(measure_latency(model.embedder, model.embedder_input_size or model.input_size,
                                                        options.latency_batch_size, runs=options.latency_runs), 4)
        entry["latency_batch_size"] = options.latency_batch_size
        entry["results"] = {}
        for pair_set in pair_sets:
            embeddings[index, pair_set.name] = clean = image_embeddings(model, pair_set, options)
            entry["results"][pair_set.name] = result = evaluate_on_pair_set(model, pair_set, options, clean)
            flip = result["flip"]
            log(f"{entry['label']} on {pair_set.name}: accuracy {100 * flip['accuracy_mean']:.2f} "
                f"± {100 * flip['accuracy_std']:.2f}%  AUC {flip['auc']:.4f}  EER {100 * flip['eer']:.2f}%")
        output["models"].append(entry)
    centres = {i: model.teacher_center for i, model in enumerate(loaded) if model.teacher_center is not None}
    cross_model_results(output["models"], embeddings, pair_sets, options, centres)
    return output


def environment(device: str) -> Dict[str, Any]:
    """Versions and hardware the numbers were measured on (latency depends on them)."""
    import torch

    from facekd import __version__

    info = {"facekd": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# --------------------------------------------------------------------------- JSON I/O

def save_results(results: Dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write the results JSON atomically (temp file + rename)."""
    return atomic_write_text(path, json.dumps(results, indent=1, allow_nan=True))


def load_results(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a results JSON written by :func:`save_results`; errors name the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(path, "results file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"not a readable results JSON ({error})") from None
    if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise DataError(path, f"not a facekd results file (schema {found!r}, expected {RESULTS_SCHEMA!r})")
    for key in ("models", "val_sets"):
        if not isinstance(data.get(key), list):
            raise DataError(path, f"results file has no {key!r} list")
    return data


def merge_results(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Combine several results files: models appended, val sets united by name."""
    if not results:
        raise ValueError("no results to merge")
    merged = dict(results[0])
    merged["models"] = [m for r in results for m in r["models"]]
    by_name: Dict[str, Any] = {}
    for r in results:
        for val_set in r["val_sets"]:
            by_name.setdefault(val_set["name"], val_set)
    merged["val_sets"] = list(by_name.values())
    return merged
