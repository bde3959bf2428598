#!/usr/bin/env python3
"""Print the CPU-scale experiment's table from ``facekd eval`` results JSON files.

    python3 bench/results_table.py runs/cpu_scale/results_*.json

One row per model: role, parameters, MACs, then flip-embedding accuracy (mean ± std over
the 10 folds) on every verification set at every probe size of its resolution curve, and
the difference to the baseline (the model with role ``baseline``) at each of those sizes.
"""
import argparse
import json
import sys
from pathlib import Path


def load_models(paths):
    """Models of every results file, in file order (later files add models, never replace)."""
    models = []
    for path in paths:
        models.extend(json.loads(Path(path).read_text())["models"])
    return models


def accuracies(model):
    """``{(set, size): (mean, std)}`` from a model's resolution curves (flip embeddings)."""
    out = {}
    for name, result in model["results"].items():
        curve = result.get("resolution") or {}
        for size, mean, std in zip(curve.get("sizes", []), curve.get("accuracy_mean", []), curve.get("accuracy_std", [])):
            out[(name, size)] = (mean, std)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results JSON files of facekd eval")
    args = parser.parse_args(argv)
    models = load_models(args.results)
    table = {m["label"]: accuracies(m) for m in models}
    columns = sorted({key for acc in table.values() for key in acc}, key=lambda k: (k[0], -k[1]))
    baseline = next((table[m["label"]] for m in models if m.get("role") == "baseline"), None)
    head = ["model", "role", "params", "MACs"] + [f"{name} {size}px" for name, size in columns]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for m in models:
        acc = table[m["label"]]
        cells = [m["label"], m.get("role") or "-", f"{m['params'] / 1e6:.2f} M", f"{m['macs'] / 1e6:.0f} M"]
        for key in columns:
            if key not in acc:
                cells.append("-")
                continue
            mean, std = acc[key]
            delta = "" if baseline is None or key not in baseline or acc is baseline else \
                f" ({100 * (mean - baseline[key][0]):+.1f})"
            cells.append(f"{100 * mean:.2f} ± {100 * std:.2f}{delta}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
