#!/usr/bin/env python3
"""Seconds per optimiser step of finished training runs, and each run's cost relative to a baseline.

    python3 bench/step_cost.py runs/cpu_scale/student_plain runs/cpu_scale/student_all ...

Reads each run's ``metrics.jsonl`` (``train`` records carry a wall-clock ``time`` every
``train.log_every_steps`` steps) and takes the median of time/steps between consecutive
records, so the epoch-end verification and checkpoint writes do not count.  The first run
given is the baseline of the ratio column.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path


def seconds_per_step(metrics_file: Path) -> float:
    """Median wall seconds per optimiser step between consecutive ``train`` records."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    rates = [(b["time"] - a["time"]) / (b["step"] - a["step"])
             for a, b in zip(train, train[1:]) if b["step"] > a["step"] and b["epoch"] == a["epoch"]]
    if not rates:
        raise SystemExit(f"{metrics_file}: fewer than two train records in one epoch")
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (first = baseline)")
    args = parser.parse_args(argv)
    costs = {run: seconds_per_step(run / "metrics.jsonl") for run in args.runs}
    base = costs[args.runs[0]]
    print(f"{'run':<40} {'s/step':>8} {'x baseline':>11}")
    for run, cost in costs.items():
        print(f"{run.name:<40} {cost:8.3f} {cost / base:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
