"""The face-verification protocol of insightface's ``eval/verification.py``.

Given embeddings of the two images of each pair and whether the pair is the same
person, :func:`evaluate` computes:

* **accuracy** — squared L2 distance between the L2-normalised embeddings; 10-fold
  ``KFold`` without shuffling (folds are contiguous runs of pairs, which for LFW's
  ``pairs.txt`` are exactly its 10 official sets); on each fold the threshold in
  ``np.arange(0, 4, 0.01)`` with the best accuracy on the other 9 folds is applied to
  the held-out fold (``np.argmax``: the smallest of tied thresholds).  Reported as mean
  and (population) standard deviation over the folds, like insightface.
* **TAR @ FAR** — insightface's ``calculate_val``: on the training folds, the FAR of every
  threshold in ``np.arange(0, 4, 0.001)`` is computed and the threshold reaching the
  target FAR is interpolated (insightface uses ``scipy.interpolate.interp1d(far, thr,
  kind='slinear')``; we use ``np.interp`` on the same points, keeping for every distinct
  FAR value the largest threshold that yields it, because ``interp1d``'s result on
  repeated x values is undefined).  If no training threshold reaches the target FAR the
  threshold is 0 (nothing accepted), as in insightface.  The threshold is applied to the
  held-out fold; TAR and FAR are averaged over folds.  The TAR counts only where the FAR
  actually reached on the held-out folds is close to the target: ``far_mean <=
  FAR_TOLERANCE_FACTOR * target + mean over folds of 1 / (different pairs in the fold)``,
  i.e. 1.5x the target plus one false accept per fold (the finest FAR step a fold can
  show).  Otherwise (e.g. a degenerate model whose distances are all ~0, where the
  interpolated threshold accepts every pair) the TAR@FAR is *not reached*: ``tar`` is None,
  the report shows "not reached" and the JSON has ``"reached": false, "tar_mean": null``.
* **ROC, AUC, EER** — from ``sklearn.metrics.roc_curve`` over all pairs with the score
  ``-distance``; the EER is interpolated where the false-reject rate ``1 - TPR`` crosses
  the FPR.

A pair is predicted "same" when ``distance < threshold`` (strict), as in insightface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from facekd.embedding_math import l2_normalize

#: thresholds searched for the accuracy (insightface: ``np.arange(0, 4, 0.01)``)
ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
#: thresholds searched for TAR@FAR (insightface's ``calculate_val``: ``np.arange(0, 4, 0.001)``)
FAR_THRESHOLDS = np.arange(0, 4, 0.001)
#: FAR targets reported by default
DEFAULT_FAR_TARGETS = (1e-3, 1e-2)
#: a TAR@FAR is reached when the held-out FAR is at most this times the target (plus one
#: false accept per fold, see :func:`far_limit`)
FAR_TOLERANCE_FACTOR = 1.5


def far_limit(far_target: float, num_different: Sequence[int]) -> float:
    """The largest held-out FAR that still counts as reaching ``far_target``.

    ``FAR_TOLERANCE_FACTOR * far_target`` plus the mean over folds of ``1 / n`` for a fold's
    ``n`` different-person pairs: one false accept per fold is the FAR's resolution, so a
    target below it (1e-3 on LFW's 300 different pairs per fold) can be reached only that
    coarsely.  Folds without different pairs add nothing.
    """
    steps = [1.0 / n for n in num_different if n > 0]
    return FAR_TOLERANCE_FACTOR * float(far_target) + (float(np.mean(steps)) if steps else 0.0)


@dataclass
class TarAtFar:
    """TAR at one target FAR, averaged over the held-out folds.

    ``tar_mean`` is the measured value (insightface's number); use :attr:`tar`, which is
    None unless the held-out FAR ``far_mean`` is within ``far_limit`` (:func:`far_limit`).
    """
    far_target: float
    tar_mean: float
    tar_std: float
    far_mean: float             # the FAR actually reached on the held-out folds
    threshold_mean: float
    far_limit: float = float("inf")

    @property
    def reached(self) -> bool:
        """True when the held-out FAR is within the tolerance of the target."""
        return bool(self.far_mean <= self.far_limit)

    @property
    def tar(self) -> Optional[float]:
        """The TAR at this FAR, or None when the FAR was not reached."""
        return self.tar_mean if self.reached else None

    def to_dict(self) -> dict:
        """JSON-ready; ``tar_mean``/``tar_std`` are null when not reached (``tar_measured`` keeps
        the number measured at the FAR that was reached)."""
        reached = self.reached
        return {"far_target": self.far_target, "reached": reached,
                "tar_mean": self.tar_mean if reached else None, "tar_std": self.tar_std if reached else None,
                "far_mean": self.far_mean, "far_limit": self.far_limit, "tar_measured": self.tar_mean,
                "threshold_mean": self.threshold_mean}


@dataclass
class VerificationResult:
    """Everything :func:`evaluate` measures on one set of pair embeddings.

    Per-pair arrays (``distances``, ``issame``, ``fold``, ``pair_threshold``) are in the
    order of the pairs given to :func:`evaluate`.
    """
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: np.ndarray          # [nrof_folds]
    threshold_mean: float                # mean of the per-fold best thresholds
    fold_thresholds: np.ndarray          # [nrof_folds] best threshold chosen on the other folds
    tar_at_far: Dict[float, TarAtFar]    # keyed by target FAR
    auc: float
    eer: float
    fpr: np.ndarray                      # ROC (sklearn roc_curve on -distance)
    tpr: np.ndarray
    distances: np.ndarray                # [N] squared L2 between normalised embeddings
    issame: np.ndarray                   # [N] bool
    fold: np.ndarray                     # [N] index of the fold the pair was tested in
    nrof_folds: int = 10

    @property
    def pair_threshold(self) -> np.ndarray:
        """[N] the threshold applied to each pair (its test fold's threshold)."""
        return self.fold_thresholds[self.fold]

    @property
    def predicted_same(self) -> np.ndarray:
        """[N] bool: the protocol's decision for each pair (``distance < threshold``)."""
        return self.distances < self.pair_threshold

    def decide(self, distances: np.ndarray) -> np.ndarray:
        """[N] bool: this result's per-fold thresholds applied to other ``distances`` of the same
        pairs (another model's, e.g. an INT8 export judged at its fp32 model's thresholds)."""
        distances = np.asarray(distances)
        if distances.shape != self.distances.shape:
            raise ValueError(f"{distances.size} distances for {self.distances.size} pairs")
        return distances < self.pair_threshold

    def accuracy_of(self, predicted_same: np.ndarray) -> float:
        """Mean over this result's folds of the accuracy of ``predicted_same`` ([N] bool), the
        protocol's averaging; ``accuracy_of(predicted_same)`` equals ``accuracy_mean``."""
        correct = np.asarray(predicted_same) == self.issame
        return float(np.mean([correct[self.fold == k].mean() for k in range(self.nrof_folds)]))

    def at_these_thresholds(self, distances: np.ndarray) -> Tuple[float, int]:
        """Other ``distances`` of the same pairs judged at this result's thresholds: their
        accuracy (:meth:`accuracy_of`) and how many decisions differ from this result's own."""
        predicted = self.decide(distances)
        return self.accuracy_of(predicted), int(np.sum(predicted != self.predicted_same))

    def hardest_errors(self, k: int = 4) -> Tuple[np.ndarray, np.ndarray]:
        """Indices of the ``k`` worst false accepts and false rejects.

        False accepts (different people accepted) are sorted by increasing distance,
        false rejects (same person rejected) by decreasing distance: the most confident
        mistakes first.
        """
        predicted = self.predicted_same
        false_accepts = np.flatnonzero(predicted & ~self.issame)
        false_rejects = np.flatnonzero(~predicted & self.issame)
        false_accepts = false_accepts[np.argsort(self.distances[false_accepts], kind="stable")]
        false_rejects = false_rejects[np.argsort(-self.distances[false_rejects], kind="stable")]
        return false_accepts[:k], false_rejects[:k]

    def to_dict(self, include_pairs: bool = False) -> dict:
        """JSON-ready summary (floats and lists); per-pair arrays only if ``include_pairs``."""
        out = {
            "accuracy_mean": float(self.accuracy_mean),
            "accuracy_std": float(self.accuracy_std),
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "threshold_mean": float(self.threshold_mean),
            "fold_thresholds": [float(t) for t in self.fold_thresholds],
            "tar_at_far": {far_key(t.far_target): t.to_dict() for t in self.tar_at_far.values()},
            "auc": float(self.auc),
            "eer": float(self.eer),
            "roc": {"fpr": _rounded(self.fpr), "tpr": _rounded(self.tpr)},
            "num_pairs": int(len(self.issame)),
            "num_same": int(np.sum(self.issame)),
            "nrof_folds": int(self.nrof_folds),
        }
        if include_pairs:
            out["distances"] = _rounded(self.distances)
            out["issame"] = [bool(s) for s in self.issame]
        return out


def far_key(far: float) -> str:
    """The JSON key of a FAR target: ``1e-3 -> "0.001"``."""
    return format(float(far), "g")


def _rounded(values: Iterable[float], digits: int = 6) -> List[float]:
    return [round(float(v), digits) for v in values]


# --------------------------------------------------------------------------- inputs

def pair_embeddings(pairs: np.ndarray, first: np.ndarray, second: Optional[np.ndarray] = None) -> np.ndarray:
    """Interleave per-image embeddings into insightface's pair layout.

    Args:
        pairs: ``int[N, 2]`` indices into the image rows (``PairSet.pairs``).
        first: ``[num_images, D]`` embeddings used for the first image of every pair.
        second: embeddings used for the second image (default: ``first``).  Passing
            clean embeddings as ``first`` and degraded ones as ``second`` gives the
            "one side degraded" probe protocol.

    Returns:
        ``[2N, D]``: row ``2i`` is pair ``i``'s first image, row ``2i + 1`` its second.
    """
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be int[N, 2], got shape {pairs.shape}")
    second = first if second is None else second
    if np.shape(first) != np.shape(second):
        raise ValueError(f"first and second embeddings differ in shape: "
                         f"{np.shape(first)} vs {np.shape(second)}")
    out = np.empty((2 * len(pairs), np.shape(first)[1]), dtype=np.result_type(first, second))
    out[0::2] = first[pairs[:, 0]]
    out[1::2] = second[pairs[:, 1]]
    return out


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance between L2-normalised rows ``2i`` and ``2i + 1``."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) % 2:
        raise ValueError(f"expected [2N, D] pair embeddings, got shape {embeddings.shape}")
    normed = l2_normalize(embeddings, dtype=np.float64)
    return np.sum(np.square(normed[0::2] - normed[1::2]), axis=1)


def kfold_splits(n: int, nrof_folds: int) -> List[np.ndarray]:
    """Test-index sets of ``sklearn.model_selection.KFold(nrof_folds, shuffle=False)``."""
    from sklearn.model_selection import KFold

    if nrof_folds < 2:
        raise ValueError(f"nrof_folds must be >= 2, got {nrof_folds}")
    if n < nrof_folds:
        raise ValueError(f"{n} pairs cannot be split into {nrof_folds} folds")
    return [test for _, test in KFold(n_splits=nrof_folds, shuffle=False).split(np.arange(n))]


# --------------------------------------------------------------------------- counting

class _SortedDistances:
    """Counts of accepted pairs (``distance < threshold``) for many thresholds at once."""

    def __init__(self, distances: np.ndarray, issame: np.ndarray) -> None:
        self.same = np.sort(distances[issame])
        self.diff = np.sort(distances[~issame])

    def counts(self, thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(true accepts, false accepts) for each threshold."""
        return (np.searchsorted(self.same, thresholds, side="left"),
                np.searchsorted(self.diff, thresholds, side="left"))

    def accuracy(self, thresholds: np.ndarray) -> np.ndarray:
        tp, fp = self.counts(thresholds)
        tn = len(self.diff) - fp
        return (tp + tn).astype(np.float64) / (len(self.same) + len(self.diff))

    def tar_far(self, thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """insightface's ``calculate_val_far`` (0 when a class is empty instead of dividing by 0)."""
        tp, fp = self.counts(thresholds)
        tar = tp / len(self.same) if len(self.same) else np.zeros(len(thresholds))
        far = fp / len(self.diff) if len(self.diff) else np.zeros(len(thresholds))
        return tar, far


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """The threshold reaching ``far_target`` by linear interpolation of ``far(threshold)``.

    ``far`` is non-decreasing in the threshold; for each distinct FAR value the largest
    threshold giving it is used as the interpolation point.  Returns 0.0 when no threshold
    reaches the target (insightface's rule).
    """
    if np.max(far) < far_target:
        return 0.0
    # last index of each run of equal FAR values
    last = np.flatnonzero(np.append(np.diff(far) != 0, True))
    return float(np.interp(far_target, far[last], thresholds[last]))


# --------------------------------------------------------------------------- the protocol

def evaluate(embeddings: np.ndarray, issame: Sequence[bool], nrof_folds: int = 10,
             far_targets: Sequence[float] = DEFAULT_FAR_TARGETS) -> VerificationResult:
    """Run insightface's verification protocol.

    Args:
        embeddings: ``[2N, D]`` raw or normalised embeddings, rows ``2i`` and ``2i + 1``
            being pair ``i`` (see :func:`pair_embeddings`).  They are L2-normalised here.
        issame: ``bool[N]``, whether pair ``i`` shows the same person.
        nrof_folds: number of contiguous folds (``KFold`` without shuffle).
        far_targets: FARs at which the TAR is reported.

    Returns:
        A :class:`VerificationResult`.
    """
    distances = pair_distances(embeddings)
    issame = np.asarray(issame, dtype=bool)
    if issame.shape != distances.shape:
        raise ValueError(f"{len(distances)} pairs of embeddings but {issame.size} issame labels")
    if not np.all(np.isfinite(distances)):
        raise ValueError("embeddings contain NaN or infinite values")

    folds = kfold_splits(len(distances), nrof_folds)
    fold_of_pair = np.empty(len(distances), dtype=np.int64)
    fold_acc = np.zeros(nrof_folds)
    fold_thr = np.zeros(nrof_folds)
    tar = {float(f): np.zeros((3, nrof_folds)) for f in far_targets}   # tar, far, threshold
    num_different = [int(np.sum(~issame[test])) for test in folds]
    for k, test in enumerate(folds):
        fold_of_pair[test] = k
        train = np.setdiff1d(np.arange(len(distances)), test, assume_unique=True)
        train_counts = _SortedDistances(distances[train], issame[train])
        test_counts = _SortedDistances(distances[test], issame[test])

        best = int(np.argmax(train_counts.accuracy(ACCURACY_THRESHOLDS)))
        fold_thr[k] = ACCURACY_THRESHOLDS[best]
        fold_acc[k] = test_counts.accuracy(fold_thr[k:k + 1])[0]

        _, far_train = train_counts.tar_far(FAR_THRESHOLDS)
        for target, table in tar.items():
            threshold = threshold_at_far(far_train, FAR_THRESHOLDS, target)
            tar_test, far_test = test_counts.tar_far(np.array([threshold]))
            table[:, k] = tar_test[0], far_test[0], threshold

    fpr, tpr, auc, eer = roc_metrics(distances, issame)
    return VerificationResult(
        accuracy_mean=float(np.mean(fold_acc)), accuracy_std=float(np.std(fold_acc)),
        fold_accuracies=fold_acc, threshold_mean=float(np.mean(fold_thr)), fold_thresholds=fold_thr,
        tar_at_far={target: TarAtFar(target, float(np.mean(t[0])), float(np.std(t[0])),
                                     float(np.mean(t[1])), float(np.mean(t[2])),
                                     far_limit(target, num_different))
                    for target, t in tar.items()},
        auc=auc, eer=eer, fpr=fpr, tpr=tpr, distances=distances, issame=issame,
        fold=fold_of_pair, nrof_folds=nrof_folds)


def roc_metrics(distances: np.ndarray, issame: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float, float]:
    """ROC curve, AUC and EER of the score ``-distance`` (NaN AUC/EER if one class is empty)."""
    from sklearn.metrics import auc as area, roc_curve

    if issame.all() or not issame.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan"), float("nan")
    fpr, tpr, _ = roc_curve(issame, -distances)
    return fpr, tpr, float(area(fpr, tpr)), equal_error_rate(fpr, tpr)


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where the ROC's FPR equals its false-reject rate ``1 - TPR`` (interpolated)."""
    gap = fpr - (1.0 - tpr)           # increases from -1 (reject all) to +1 (accept all)
    i = int(np.argmax(gap >= 0))
    if i == 0:
        return float(fpr[0])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
