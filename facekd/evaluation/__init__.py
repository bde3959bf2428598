"""Verification evaluation: embedding extraction, insightface's 10-fold protocol,
resolution robustness, and the HTML/Markdown report.

Modules:

* :mod:`~facekd.evaluation.verification` — :func:`evaluate` -> :class:`VerificationResult`;
* :mod:`~facekd.evaluation.embed` — :class:`TorchEmbedder`, :func:`extract_embeddings`;
* :mod:`~facekd.evaluation.resolution` — :func:`resolution_curve`;
* :mod:`~facekd.evaluation.runner` — :func:`evaluate_models` (re-exports the three below);
* :mod:`~facekd.evaluation.specs` — ``--model`` / ``--val`` specs;
* :mod:`~facekd.evaluation.model_loading` — checkpoints, ONNX files and teachers as embedders;
* :mod:`~facekd.evaluation.results` — the results JSON (save, load, merge);
* :mod:`~facekd.evaluation.report` — :func:`write_report` from the results JSON;
* :mod:`~facekd.evaluation.render_check` — headless-Chromium check of the page.
"""
from facekd.evaluation.embed import ImageEmbeddings, TorchEmbedder, extract_embeddings
from facekd.evaluation.resolution import DEFAULT_SIZES, ResolutionCurve, compose_pairs, resolution_curve
from facekd.evaluation.verification import VerificationResult, evaluate, pair_embeddings

__all__ = ["evaluate", "VerificationResult", "pair_embeddings", "TorchEmbedder", "extract_embeddings",
           "ImageEmbeddings", "resolution_curve", "ResolutionCurve", "compose_pairs", "DEFAULT_SIZES"]
