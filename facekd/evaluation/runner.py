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

The parts live in their own modules and are importable from here as before:
:mod:`~facekd.evaluation.specs` (``--model`` / ``--val`` specs), :mod:`~facekd.evaluation.model_loading`
(checkpoints, ONNX files and teachers as embedders; latency) and :mod:`~facekd.evaluation.results`
(the JSON: save, load, merge, environment).  This module runs the evaluation itself.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from facekd.embedding_math import l2_normalize
from facekd.errors import ConfigError
from facekd.evaluation.embed import DegradeFn, ImageEmbeddings, extract_embeddings
from facekd.evaluation.imaging import encode_image
from facekd.evaluation.model_loading import (MODEL_FORMATS, SUFFIX_FORMATS, LoadedModel, check_embedding_size,
                                             check_model_file, load_model, load_onnx_model, load_teacher_model,
                                             load_torch_model, measure_latency)
from facekd.evaluation.resolution import DEFAULT_SIZES, SIDES, resolution_curve
from facekd.evaluation.results import RESULTS_SCHEMA, environment, load_results, merge_results, save_results
from facekd.evaluation.specs import PAIR_KINDS, ROLES, ModelSpec, ValSpec
from facekd.evaluation.verification import DEFAULT_FAR_TARGETS, VerificationResult, evaluate, pair_embeddings

__all__ = ["EvalOptions", "build_pair_set", "build_pair_sets", "hardest_pairs", "image_embeddings",
           "evaluate_on_pair_set", "cross_model_results", "evaluate_models",
           # re-exported from the modules they live in
           "ModelSpec", "ValSpec", "ROLES", "PAIR_KINDS", "LoadedModel", "MODEL_FORMATS", "SUFFIX_FORMATS",
           "load_model", "load_torch_model", "load_onnx_model", "load_teacher_model", "check_model_file",
           "check_embedding_size", "measure_latency", "RESULTS_SCHEMA", "environment", "save_results",
           "load_results", "merge_results"]


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
    return ImageEmbeddings(l2_normalize(rows[:, 0], dtype=np.float64),
                          l2_normalize(rows[:, 0] + rows[:, 1], dtype=np.float64))


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
                gallery = l2_normalize(gallery - center, dtype=np.float64)
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
