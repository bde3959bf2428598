#!/usr/bin/env python3
"""Print the learning curves of training runs: verification accuracy after every epoch.

    python3 bench/learning_curves.py runs/cpu_scale_dlib_patient/student_plain \\
        runs/cpu_scale_dlib_patient/student_neuron [--set lfw_devtrain] [--every 1]

Reads each run's ``metrics.jsonl`` (the ``val`` records the trainer writes after every
``val.every_epochs``) and prints one Markdown table: a row per epoch, a column per run, the
accuracy in % on the chosen set (default: the first set of the first run), plus each run's
best epoch.  A run still training shows the epochs it has finished.

``--png FILE`` also plots every run against image-steps (issue 34, item 5): one panel with the
training-target cosine (``1 - feature_distill``, the training log's smoothed by ``--smooth`` records)
and one per verification set.  Image-steps are optimiser steps x the faces of one step, read from the
run's ``config.yaml`` (P x K + ``train.unlabelled_per_batch``) x ``--world-size`` (the ranks of a
torchrun run, whose config holds one rank's batch).  With ``--chain`` the runs are consecutive cycles
of one model (each warm-started from the previous one's end with ``init_from``): each run's image-steps
are counted from where the previous run's last record left off.

    python3 bench/learning_curves.py runs/long_sface/student_regress --world-size 2 --png docs/long_sface.png
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

from facekd.argtypes import OneLineParser, positive_int
from facekd.evaluation.report import markdown_table
from facekd.training.metrics import read_metrics


def curve(run_dir: Path, val_set: Optional[str]) -> Dict[int, float]:
    """``{epoch: accuracy}`` (epochs counted from 1) of ``val_set`` in the run's ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (not a training run?)")
    points: Dict[int, float] = {}
    for record in read_metrics(path, "val"):
        names = [k[:-len("/accuracy")] for k in record if k.endswith("/accuracy")]
        name = val_set or (names[0] if names else None)
        if name is not None and f"{name}/accuracy" in record:
            points[int(record["epoch"])] = float(record[f"{name}/accuracy"])
    return points


def curves_table(runs: List[Path], val_set: Optional[str] = None, every: int = 1):
    """Header and rows: epoch, then each run's accuracy %; a last row with each run's best (epoch)."""
    curves = [curve(run, val_set) for run in runs]
    epochs = sorted({e for c in curves for e in c})
    shown = [e for e in epochs if e % every == 0 or e == epochs[-1]]
    header = ["epoch"] + [run.name for run in runs]
    rows = [[str(e)] + [f"{100 * c[e]:.2f}" if e in c else "–" for c in curves] for e in shown]
    best = []
    for c in curves:
        top = max(c, key=c.get) if c else None
        best.append(f"{100 * c[top]:.2f} (epoch {top})" if top is not None else "–")
    rows.append(["best"] + best)
    return header, rows


def faces_per_step(run_dir: Path, world_size: int = 1) -> int:
    """The faces one optimiser step sees: (P x K + unlabelled per batch) of the run's config.yaml x ranks."""
    from facekd.config import load_config

    train = load_config(run_dir / "config.yaml").train
    return world_size * (train.identities_per_batch * train.images_per_identity + train.unlabelled_per_batch)


def image_step_series(runs: List[Path], world_size: int = 1, chain: bool = False,
                      start: float = 0.0) -> Dict[str, tuple]:
    """Per run: ``(train, val)``, the training-target cosine as ``[(M image-steps, 1 - feature_distill)]``
    and ``{val set: [(M image-steps, accuracy %)]}``; with ``chain``, each run's image-steps are counted
    on from the end (its last record) of the previous run in ``runs``, the first run's from ``start``
    (M image-steps its initial weights had already seen)."""
    series = {}
    for run in runs:
        faces = faces_per_step(run, world_size)
        records = read_metrics(run / "metrics.jsonl")
        offset = start if chain else 0.0
        train = [(offset + r["step"] * faces / 1e6, 1 - r["feature_distill"]) for r in records
                 if r.get("kind") == "train" and "feature_distill" in r]
        val: Dict[str, List] = {}
        for record in (r for r in records if r.get("kind") == "val"):
            for key, value in record.items():
                if key.endswith("/accuracy"):
                    val.setdefault(key[:-len("/accuracy")], []).append((offset + record["step"] * faces / 1e6,
                                                                         100 * value))
        series[run.name] = (train, val)
        start = offset + max((r["step"] for r in records), default=0) * faces / 1e6
    return series


def plot_curves(runs: List[Path], png: Path, world_size: int = 1, smooth: int = 10, chain: bool = False,
                start: float = 0.0) -> None:
    """Write ``png``: per run, the training-target cosine and each val set's accuracy against image-steps
    (:func:`image_step_series`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = image_step_series(runs, world_size, chain, start)
    sets = sorted({name for _, val in series.values() for name in val})
    figure, axes = plt.subplots(1, 1 + len(sets), figsize=(5 * (1 + len(sets)), 4), squeeze=False)
    for name, (train, val) in series.items():
        if train:
            x, y = np.array(train).T
            width = max(1, min(smooth, len(y)))
            axes[0][0].plot(x[width - 1:], np.convolve(y, np.ones(width) / width, mode="valid"), label=name)
        for i, set_name in enumerate(sets, start=1):
            if set_name in val:
                x, y = np.array(val[set_name]).T
                axes[0][i].plot(x, y, marker="o", label=name)
    axes[0][0].set(title="training-target cosine (1 - feature_distill)", xlabel="image-steps (M)", ylabel="cosine")
    for i, set_name in enumerate(sets, start=1):
        axes[0][i].set(title=f"{set_name} accuracy", xlabel="image-steps (M)", ylabel="%")
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(png, dpi=100)


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (output_dir of facekd train-*)")
    parser.add_argument("--set", dest="val_set", help="verification set name (default: the first logged)")
    parser.add_argument("--every", type=positive_int, default=1, help="show every N-th epoch (and the last)")
    parser.add_argument("--png", type=Path, help="also plot the curves against image-steps into this PNG")
    parser.add_argument("--world-size", type=positive_int, default=1, help="ranks of a torchrun run (default 1)")
    parser.add_argument("--smooth", type=positive_int, default=10, help="train records averaged in the cosine curve")
    parser.add_argument("--chain", action="store_true",
                        help="the runs are consecutive cycles (init_from): count image-steps on across them")
    parser.add_argument("--start", type=float, default=0.0,
                        help="with --chain: M image-steps the first run's initial weights had seen (default 0)")
    args = parser.parse_args(argv)
    try:
        header, rows = curves_table(args.runs, args.val_set, max(1, args.every))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(header, rows))
    if args.png:
        plot_curves(args.runs, args.png, args.world_size, args.smooth, args.chain, args.start)
        print(f"curves: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
