#!/usr/bin/env python3
"""How much of an INT8 model's verification-accuracy change a pair list can resolve.

    python3 bench/int8_accuracy_noise.py s112.onnx s112_int8.onnx \
        --val lfw:../shared/data/lfw-view1/pairsDevTest.txt,root=ALIGNED_LFW,align=none --draws 200

Both models embed the list's faces (flip embeddings, as ``facekd export --int8 --val`` compares them).
It prints, for INT8 against fp32:

* the accuracy change with each model's own per-fold thresholds (what ``facekd export`` reports);
* the accuracy at fp32's thresholds and the number of pairs whose decision changes there;
* the **noise floor**: ``--draws`` copies of the fp32 embeddings, each face turned away from its fp32
  embedding by exactly the angle INT8 turns it (the per-face cosine of INT8 vs fp32), in a random
  direction.  Their own-threshold accuracy changes say how far a drift of INT8's size moves the
  accuracy when it carries no systematic error: a change inside that spread cannot be told from noise
  on this list.
"""
import argparse
import json
import sys
from typing import Dict

import numpy as np

from facekd.argtypes import OneLineParser, positive_int, seed
from facekd.embedding_math import l2_normalize, row_cosine
from facekd.evaluation import evaluate, extract_embeddings, pair_embeddings
from facekd.evaluation.runner import ValSpec, build_pair_sets
from facekd.export.runtime import OnnxEmbedder


def turned(embeddings: np.ndarray, cosines: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit ``embeddings`` ``[N, D]`` each turned by ``arccos(cosines[i])`` in a random direction
    orthogonal to it: the result has exactly cosine ``cosines[i]`` to row ``i``."""
    unit = l2_normalize(embeddings, dtype=np.float64)
    direction = rng.standard_normal(unit.shape)
    direction -= np.sum(direction * unit, axis=1, keepdims=True) * unit
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    cosines = np.clip(cosines, -1.0, 1.0)[:, None]
    return cosines * unit + np.sqrt(1.0 - cosines ** 2) * direction


def noise_report(fp32: np.ndarray, int8: np.ndarray, issame: np.ndarray, pairs: np.ndarray,
                 draws: int, seed: int = 0) -> Dict[str, float]:
    """The numbers this script prints, from the flip embeddings of every face of the list."""
    reference = evaluate(pair_embeddings(pairs, fp32), issame)
    quantised = evaluate(pair_embeddings(pairs, int8), issame)
    at_fp32_accuracy, decisions_changed = reference.at_these_thresholds(quantised.distances)
    cosines = row_cosine(fp32, int8, dtype=np.float64)
    rng = np.random.default_rng(seed)
    changes = np.array([evaluate(pair_embeddings(pairs, turned(fp32, cosines, rng)), issame).accuracy_mean
                        for _ in range(draws)]) - reference.accuracy_mean
    return {
        "pairs": int(len(issame)), "faces": int(len(fp32)),
        "cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min()),
        "fp32_accuracy": reference.accuracy_mean, "int8_accuracy": quantised.accuracy_mean,
        "change_pt": 100 * (quantised.accuracy_mean - reference.accuracy_mean),
        "int8_accuracy_at_fp32_thresholds": at_fp32_accuracy, "decisions_changed": decisions_changed,
        "noise_draws": int(draws),
        "noise_change_mean_pt": float(100 * changes.mean()), "noise_change_std_pt": float(100 * changes.std()),
        "noise_change_p5_pt": float(100 * np.percentile(changes, 5)),
        "noise_change_p95_pt": float(100 * np.percentile(changes, 95)),
        "noise_within_0.3pt": float(np.mean(np.abs(changes) <= 0.003 + 1e-9)),
        "noise_at_or_below_int8": float(np.mean(changes <= quantised.accuracy_mean - reference.accuracy_mean + 1e-9)),
    }


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fp32", help="the fp32 ONNX export")
    parser.add_argument("int8", help="its INT8 model")
    parser.add_argument("--val", required=True, action="append", metavar="KIND:PATH",
                        help="pair list(s), as for facekd eval")
    parser.add_argument("--draws", type=positive_int, default=200, help="random perturbations for the noise floor")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    models = [OnnxEmbedder(path, threads=args.threads, resize=True) for path in (args.fp32, args.int8)]
    results = {}
    for pair_set, _ in build_pair_sets([ValSpec.parse(v) for v in args.val]):
        fp32, int8 = (extract_embeddings(m, pair_set, progress=False).flip for m in models)
        r = noise_report(fp32, int8, np.asarray(pair_set.issame, bool), pair_set.pairs, args.draws, args.seed)
        results[pair_set.name] = r
        print(f"{pair_set.name} ({r['pairs']} pairs, flip; INT8 vs fp32 per-face cosine mean {r['cosine_mean']:.5f}, "
              f"min {r['cosine_min']:.5f})\n"
              f"  own thresholds: fp32 {100 * r['fp32_accuracy']:.2f}% -> INT8 {100 * r['int8_accuracy']:.2f}% "
              f"({r['change_pt']:+.2f} pt)\n"
              f"  fp32's thresholds: INT8 {100 * r['int8_accuracy_at_fp32_thresholds']:.2f}%, "
              f"{r['decisions_changed']} of {r['pairs']} decisions changed\n"
              f"  noise floor ({r['noise_draws']} random turns of INT8's per-face "
              f"angle): change {r['noise_change_mean_pt']:+.2f} +- {r['noise_change_std_pt']:.2f} pt "
              f"(5-95 %: {r['noise_change_p5_pt']:+.2f} .. {r['noise_change_p95_pt']:+.2f}); "
              f"{100 * r['noise_within_0.3pt']:.0f} % of draws within 0.3 pt, "
              f"{100 * r['noise_at_or_below_int8']:.0f} % at or below INT8's change")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
