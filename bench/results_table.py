#!/usr/bin/env python3
"""Print the CPU-scale experiment's tables from ``facekd eval`` results JSON files.

    python3 bench/results_table.py runs/cpu_scale/results_*.json
    python3 bench/results_table.py --seed-means runs/cpu_scale/results_*.json

The files are merged (models appended in file order, as ``facekd report`` does) and, for
every verification set, the report's resolution table is printed as Markdown: flip accuracy
(mean ± std over the 10 folds) at every probe size, with each model's difference to the
baseline (the first model with role ``baseline``) in brackets.

``--seed-means`` adds, per set, a table with one row per method: models whose labels differ
only by a trailing ``seed N`` are averaged (mean ± std of their accuracies across seeds),
and differences are to the baseline's seed mean.
"""
import argparse
import re
import statistics
import sys
from typing import Any, Dict, List

from facekd.errors import DataError
from facekd.evaluation.report import inheritance_table, markdown_table, resolution_table
from facekd.evaluation.runner import load_results, merge_results

SEED_SUFFIX = re.compile(r"\s+seed\s+\d+$")


def seed_means(results: Dict[str, Any]) -> Dict[str, Any]:
    """``results`` with every group of ``<label> seed N`` models replaced by one averaged model.

    The averaged model's resolution curve holds, per probe size, the mean and the standard
    deviation (n-1; none for a single run) of the seeds' fold-mean accuracies.  Only sizes every
    seed was probed at are kept; sets a seed was not evaluated on are left out.  A model without
    a seed suffix (the teacher) is kept as it is.
    """
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for model in results["models"]:
        groups.setdefault(SEED_SUFFIX.sub("", model["label"]), []).append(model)
    models = []
    for label, members in groups.items():
        if len(members) == 1 and members[0]["label"] == label:     # not a seeded run (the teacher): as is
            models.append(members[0])
            continue
        averaged = {**members[0], "label": f"{label} ({len(members)} seed{'s' * (len(members) > 1)})",
                    "results": {}}
        for val_set in results["val_sets"]:
            curves = [m.get("results", {}).get(val_set["name"], {}).get("resolution") for m in members]
            if not all(curves):
                continue
            sizes = [s for s in curves[0]["sizes"] if all(s in c["sizes"] for c in curves)]
            per_size = [[c["accuracy_mean"][c["sizes"].index(s)] for c in curves] for s in sizes]
            averaged["results"][val_set["name"]] = {"resolution": {
                "sizes": sizes,
                "accuracy_mean": [statistics.fmean(values) for values in per_size],
                "accuracy_std": [statistics.stdev(values) if len(values) > 1 else None for values in per_size]}}
        models.append(averaged)
    return {**results, "models": models}


def print_tables(results: Dict[str, Any], caption: str) -> None:
    """Per verification set: the share of the teacher's lead each student inherits, then the
    Markdown resolution table."""
    for val_set in results["val_sets"]:
        header, rows = inheritance_table(results, val_set["name"])
        if rows:
            print(f"### {val_set['name']}: what the student inherits ({caption})\n")
            print(markdown_table(header, rows) + "\n")
        print(f"### {val_set['name']} ({val_set.get('num_pairs')} pairs): {caption}\n")
        print(markdown_table(*resolution_table(results, val_set["name"])) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results JSON files of facekd eval")
    parser.add_argument("--seed-means", action="store_true",
                        help="also print per-method means over models labelled '... seed N'")
    args = parser.parse_args(argv)
    try:
        results = merge_results([load_results(path) for path in args.results])
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_tables(results, "flip accuracy %, mean ± std over the 10 folds")
    if args.seed_means:
        print_tables(seed_means(results), "flip accuracy %, mean ± std across seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
