#!/usr/bin/env python3
"""Print the learning curves of training runs: verification accuracy after every epoch.

    python3 bench/learning_curves.py runs/cpu_scale_dlib_patient/student_plain \\
        runs/cpu_scale_dlib_patient/student_neuron [--set lfw_devtrain] [--every 1]

Reads each run's ``metrics.jsonl`` (the ``val`` records the trainer writes after every
``val.every_epochs``) and prints one Markdown table: a row per epoch, a column per run, the
accuracy in % on the chosen set (default: the first set of the first run), plus each run's
best epoch.  A run still training shows the epochs it has finished.
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


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (output_dir of facekd train-*)")
    parser.add_argument("--set", dest="val_set", help="verification set name (default: the first logged)")
    parser.add_argument("--every", type=positive_int, default=1, help="show every N-th epoch (and the last)")
    args = parser.parse_args(argv)
    try:
        header, rows = curves_table(args.runs, args.val_set, max(1, args.every))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
