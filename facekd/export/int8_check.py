"""How far an INT8 model is from its fp32 original: :func:`check_int8`.

Quantising (:func:`facekd.export.quantize.quantize_int8`) writes the INT8 model; checking it
is this module's job:

* the *drift*: per-face cosine similarity between fp32 and int8 embeddings on faces that
  were not used for calibration, and the maximum absolute difference (:func:`measure_drift`);
* given verification pair sets, the verification accuracy of fp32 and int8 (plain and
  flip embeddings) and what INT8 changes at fp32's thresholds (:func:`compare_verification`).

:func:`check_int8` adds both to the :class:`~facekd.export.quantize.QuantizationReport` and
records them in the INT8 model's ``facekd.int8_*`` metadata.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np

from facekd.embedding_math import row_cosine
from facekd.export.metadata import update_metadata
from facekd.export.quantize import Drift, QuantizationReport, at_fp32_thresholds
from facekd.export.runtime import OnnxEmbedder, resize_faces
from facekd.export.threshold import threshold_from_result, verification_results


def check_int8(report: QuantizationReport, eval_faces: Optional[np.ndarray] = None, pair_sets: Sequence[Any] = (),
               threads: Optional[int] = None) -> QuantizationReport:
    """Measure the INT8 model of ``report`` against its fp32 model and record the results.

    Args:
        report: what :func:`~facekd.export.quantize.quantize_int8` returned (its ``fp32_path``
            and ``int8_path`` are compared).
        eval_faces: held-out aligned faces for the drift measurement (skipped when ``None`` or empty).
        pair_sets: verification pair sets on which fp32 and int8 accuracy are compared.
        threads: onnxruntime intra-op threads.

    Returns ``report`` with ``drift`` and ``verification`` filled; the INT8 model's metadata
    gets ``int8_min_cosine`` and the accuracy change on the first pair set.
    """
    fp32 = OnnxEmbedder(report.fp32_path, threads=threads, resize=True)
    int8 = OnnxEmbedder(report.int8_path, threads=threads, resize=True)
    if eval_faces is not None and len(eval_faces):
        report.drift = measure_drift(fp32, int8, eval_faces)
    for pair_set in pair_sets:
        report.verification[pair_set.name] = compare_verification(fp32, int8, pair_set)
    changes: Dict[str, Any] = {}
    if report.drift is not None:
        changes["int8_min_cosine"] = report.drift.min_cosine
    if report.verification:
        name, metrics = next(iter(report.verification.items()))
        changes["int8_accuracy_change"] = round(100 * -metrics["flip_drop"], 4)
        changes["int8_accuracy_source"] = (f"{name} (flip): fp32 {100 * metrics['fp32_flip_accuracy']:.2f}% -> "
                                           f"int8 {100 * metrics['int8_flip_accuracy']:.2f}%; "
                                           + at_fp32_thresholds(metrics))
    if changes:
        update_metadata(report.int8_path, **changes)
    return report


def measure_drift(fp32: OnnxEmbedder, int8: OnnxEmbedder, faces: np.ndarray, batch_size: int = 64) -> Drift:
    """Cosine similarity and max absolute difference of fp32 vs int8 embeddings of ``faces``."""
    faces = resize_faces(np.asarray(faces), fp32.input_size)
    a = np.concatenate([fp32.embed_uint8(faces[i:i + batch_size]) for i in range(0, len(faces), batch_size)])
    b = np.concatenate([int8.embed_uint8(faces[i:i + batch_size]) for i in range(0, len(faces), batch_size)])
    cosine = row_cosine(a, b)
    return Drift(len(faces), float(cosine.mean()), float(cosine.min()), float(np.abs(a - b).max()))


def compare_verification(fp32: OnnxEmbedder, int8: OnnxEmbedder, pair_set: Any,
                         batch_size: int = 64) -> Dict[str, float]:
    """fp32 and int8 verification accuracy on ``pair_set``, the drop (fp32 - int8) and each
    model's own fitted cosine threshold (``fp32_threshold`` / ``int8_threshold``, flip embeddings).

    Each model's accuracy uses thresholds fitted on its own distances, so a tiny drift can move a
    fold's threshold and with it many pairs.  What int8 changes at fixed thresholds is reported
    too (flip embeddings): ``int8_flip_accuracy_at_fp32_thresholds`` and ``decisions_changed``,
    the number of pairs whose same / different decision differs from fp32's at fp32's thresholds.
    """
    metrics: Dict[str, float] = {}
    flips = {}
    for precision, embedder in (("fp32", fp32), ("int8", int8)):
        plain, flips[precision] = verification_results(embedder, pair_set, batch_size)
        metrics[f"{precision}_accuracy"] = plain.accuracy_mean
        metrics[f"{precision}_flip_accuracy"] = flips[precision].accuracy_mean
        metrics[f"{precision}_threshold"] = threshold_from_result(flips[precision], pair_set).threshold
    metrics["drop"] = metrics["fp32_accuracy"] - metrics["int8_accuracy"]
    metrics["flip_drop"] = metrics["fp32_flip_accuracy"] - metrics["int8_flip_accuracy"]
    metrics["int8_flip_accuracy_at_fp32_thresholds"], metrics["decisions_changed"] = \
        flips["fp32"].at_these_thresholds(flips["int8"].distances)
    metrics["pairs"] = int(len(flips["fp32"].issame))
    return metrics
