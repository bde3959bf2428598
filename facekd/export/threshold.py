"""Verification threshold of an exported model: fitted on a pair set, stored in its metadata.

A checkpoint trained without validation exports without a threshold, and ``facekd
verify`` can then only print the similarity.  :func:`fit_threshold` runs the evaluation
protocol (:func:`facekd.evaluation.extract_embeddings` + :func:`facekd.evaluation.evaluate`,
flip-summed embeddings as facekd's validation) on an exported model and returns the mean
of the per-fold best thresholds on the cosine scale; :func:`store_threshold` writes it into
the ONNX file's ``facekd.threshold*`` metadata.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

from facekd.export.metadata import ExportMetadata, cosine_from_sqeuclidean, update_metadata
from facekd.fileio import PathLike


@dataclass
class ThresholdFit:
    """A threshold fitted on one pair set."""
    threshold: float          # cosine similarity: same iff cos >= threshold
    source: str               # e.g. "fitted on lfw_pairsDevTest (1000 pairs, flip)"
    accuracy: float           # the protocol's accuracy (flip embeddings) on that set
    pair_set: str


def verification_results(embedder: Any, pair_set: Any, batch_size: int = 64) -> Tuple[Any, Any]:
    """``(plain, flip)`` :class:`facekd.evaluation.VerificationResult` of ``embedder`` on ``pair_set``."""
    from facekd.evaluation import evaluate, extract_embeddings, pair_embeddings

    embeddings = extract_embeddings(embedder, pair_set, batch_size=batch_size, progress=False)
    return (evaluate(pair_embeddings(pair_set.pairs, embeddings.plain), pair_set.issame),
            evaluate(pair_embeddings(pair_set.pairs, embeddings.flip), pair_set.issame))


def fit_source(pair_set: Any) -> str:
    """The ``facekd.threshold_source`` text of a threshold fitted on ``pair_set``."""
    return f"fitted on {pair_set.name} ({len(pair_set.issame)} pairs, flip)"


def threshold_from_result(result: Any, pair_set: Any) -> ThresholdFit:
    """The :class:`ThresholdFit` of a flip-embedding :class:`VerificationResult` on ``pair_set``."""
    return ThresholdFit(threshold=cosine_from_sqeuclidean(result.threshold_mean), source=fit_source(pair_set),
                        accuracy=float(result.accuracy_mean), pair_set=pair_set.name)


def fit_threshold(embedder: Any, pair_set: Any, batch_size: int = 64) -> ThresholdFit:
    """Fit the cosine threshold of ``embedder`` (e.g. an :class:`OnnxEmbedder`) on ``pair_set``."""
    return threshold_from_result(verification_results(embedder, pair_set, batch_size)[1], pair_set)


def store_threshold(onnx_path: PathLike, fit: ThresholdFit) -> ExportMetadata:
    """Write ``fit`` into the ``facekd.threshold*`` metadata of ``onnx_path`` (in place).

    The threshold is recorded as fitted on flip-summed embeddings (``facekd.threshold_flip``),
    so :class:`facekd.export.FaceEmbedder` uses flip by default.  Returns the new metadata.
    """
    return update_metadata(onnx_path, threshold=fit.threshold, threshold_source=fit.source, threshold_flip=True)
