#!/usr/bin/env python3
"""Write a verification pair list from an identity-folder tree of aligned faces.

    python3 bench/make_pair_list.py runs/cpu_scale/aligned/celeba --pairs 1000 --out seen_pairs.txt
    facekd eval --model ... --val agedb:seen_pairs.txt,root=runs/cpu_scale/aligned/celeba,align=none

Each line is ``img1 img2 issame`` with paths relative to the tree (the ``agedb`` pair-list kind of
``facekd eval``): ``--pairs`` same-identity pairs and as many different-identity pairs, seeded, the
two kinds alternating so that each of the 10 consecutive folds is balanced.  What it is for: the
verification accuracy of a student on faces it was trained on (its training tree), on faces it saw
only through the teacher (``data.unlabelled``), beside a test list of faces it never saw
(docs/RESULTS.md, "Seen and unseen faces").
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from facekd.argtypes import OneLineParser, positive_int, seed
from facekd.data.folders import images_under

Pair = Tuple[str, str, bool]


def identity_images(root: Path) -> Dict[str, List[str]]:
    """``{identity folder: [image paths relative to root, sorted]}`` of the tree's identities: the folders
    and images :class:`facekd.data.folders.FolderDataset` trains on (a linked identity folder included)."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = [str(f.relative_to(root)) for f in images_under(folder)]
        spaced = [image for image in images if any(c.isspace() or c == "," for c in image)]
        if spaced:
            raise ValueError(f"{root / spaced[0]}: a pair list cannot hold a path with spaces or commas")
        if images:
            out[folder.name] = images
    return out


def sample_pairs(identities: Dict[str, Sequence[str]], pairs: int, seed: int = 0) -> List[Pair]:
    """``pairs`` same-identity and ``pairs`` different-identity pairs, alternating, without repeats."""
    rng = np.random.default_rng(seed)
    names = sorted(identities)
    multi = [n for n in names if len(identities[n]) >= 2]
    if not multi or len(names) < 2:
        raise ValueError("need an identity with two images and at least two identities")
    same, diff = set(), set()
    for _ in range(100 * pairs):
        if len(same) < pairs:
            images = identities[multi[rng.integers(len(multi))]]
            a, b = sorted(rng.choice(len(images), 2, replace=False))
            same.add((images[a], images[b], True))
        if len(diff) < pairs:
            first, second = rng.choice(len(names), 2, replace=False)
            one, other = identities[names[first]], identities[names[second]]
            diff.add((one[rng.integers(len(one))], other[rng.integers(len(other))], False))
        if len(same) == len(diff) == pairs:
            break
    else:
        raise ValueError(f"the tree holds fewer than {pairs} distinct pairs of a kind")
    same_list, diff_list = sorted(same), sorted(diff)
    rng.shuffle(same_list)
    rng.shuffle(diff_list)
    return [pair for both in zip(same_list, diff_list) for pair in both]


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="identity-folder tree of aligned faces")
    parser.add_argument("--pairs", type=positive_int, default=1000, help="same pairs (and as many different ones)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    pairs = sample_pairs(identity_images(args.root), args.pairs, args.seed)
    args.out.write_text("".join(f"{a} {b} {int(same)}\n" for a, b, same in pairs))
    print(f"{args.out}: {len(pairs)} pairs ({args.pairs} same, {args.pairs} different) from {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
