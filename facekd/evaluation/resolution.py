"""Resolution robustness: the verification protocol with low-resolution probe faces.

For each probe size ``s`` (default 112, 56, 28, 14 px) the pair images are reduced to
``s x s`` and brought back to 112x112 (:func:`facekd.data.degrade_to_size`), then the
protocol of :mod:`facekd.evaluation.verification` runs unchanged.  Two settings:

* ``side="both"`` — both images of every pair are degraded;
* ``side="one"`` — only the *second* image of every pair (the probe) is degraded, the first
  (the gallery image) stays clean: the surveillance-style low-res-probe vs high-res-gallery case.

Every unique image is embedded once clean and once per size; the pairs are then composed
from the two per-image tables (:func:`compose_pairs`).  Size 112 is the clean image itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from facekd.evaluation.embed import DegradeFn, Embedder, ImageEmbeddings, PairSetLike, extract_embeddings
from facekd.evaluation.verification import (DEFAULT_FAR_TARGETS, VerificationResult, evaluate, far_key,
                                            pair_embeddings)
from facekd.preprocess import INPUT_SIZE

DEFAULT_SIZES = (112, 56, 28, 14)
SIDES = ("both", "one")


def compose_pairs(pairs: np.ndarray, clean: np.ndarray, degraded: np.ndarray, side: str) -> np.ndarray:
    """Interleaved ``[2N, D]`` pair embeddings for a degradation ``side``.

    ``side="both"``: both rows of a pair come from ``degraded``; ``side="one"``: row ``2i``
    (first image) from ``clean``, row ``2i + 1`` (second image, the probe) from ``degraded``.
    """
    if side == "both":
        return pair_embeddings(pairs, degraded)
    if side == "one":
        return pair_embeddings(pairs, clean, degraded)
    raise ValueError(f"degrade side must be one of {SIDES}, got {side!r}")


@dataclass
class ResolutionCurve:
    """Verification results per probe size, for plain and flip embeddings."""
    side: str
    sizes: List[int]
    plain: List[VerificationResult] = field(default_factory=list)
    flip: List[VerificationResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: per-size lists of accuracy, TAR@FAR, AUC and EER (flip unless ``plain_``)."""
        fars = list(self.flip[0].tar_at_far) if self.flip else []
        return {
            "side": self.side,
            "sizes": [int(s) for s in self.sizes],
            "accuracy_mean": [r.accuracy_mean for r in self.flip],
            "accuracy_std": [r.accuracy_std for r in self.flip],
            "plain_accuracy_mean": [r.accuracy_mean for r in self.plain],
            "plain_accuracy_std": [r.accuracy_std for r in self.plain],
            "tar_at_far": {far_key(f): [r.tar_at_far[f].tar for r in self.flip] for f in fars},   # None: not reached
            "auc": [r.auc for r in self.flip],
            "eer": [r.eer for r in self.flip],
        }


def resolution_curve(embedder: Embedder, pair_set: PairSetLike, sizes: Sequence[int] = DEFAULT_SIZES,
                     side: str = "both", batch_size: int = 64, clean: Optional[ImageEmbeddings] = None,
                     nrof_folds: int = 10, far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
                     progress: bool = True, degrade_fn: Optional[DegradeFn] = None,
                     num_workers: int = 0) -> ResolutionCurve:
    """Verification accuracy of ``embedder`` on ``pair_set`` with probes degraded to each size.

    Args:
        embedder, pair_set, batch_size, progress, degrade_fn, num_workers:
            as in :func:`facekd.evaluation.embed.extract_embeddings`.
        sizes: probe sizes in pixels; a size >= 112 means the clean image.
        side: ``"both"`` or ``"one"`` (see the module docstring).
        clean: the clean embeddings if already extracted (saves one pass).
        nrof_folds, far_targets: as in :func:`facekd.evaluation.verification.evaluate`.
    """
    if side not in SIDES:
        raise ValueError(f"degrade side must be one of {SIDES}, got {side!r}")
    if clean is None:
        clean = extract_embeddings(embedder, pair_set, batch_size, progress=progress, num_workers=num_workers)
    curve = ResolutionCurve(side=side, sizes=[int(s) for s in sizes])
    for size in curve.sizes:
        degraded = clean if size >= INPUT_SIZE else extract_embeddings(
            embedder, pair_set, batch_size, degrade_size=size, progress=progress,
            degrade_fn=degrade_fn, num_workers=num_workers)
        for kind, results in (("plain", curve.plain), ("flip", curve.flip)):
            pairs = compose_pairs(pair_set.pairs, getattr(clean, kind), getattr(degraded, kind), side)
            results.append(evaluate(pairs, pair_set.issame, nrof_folds, far_targets))
    return curve
