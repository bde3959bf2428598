#!/usr/bin/env python
"""LFW verification: ``python eval/eval_lfw.py LFW_PAIRS_TXT --model CKPT [--model ...] [facekd eval options]``.

LFW_PAIRS_TXT is View 2's ``pairs.txt`` (6,000 pairs in 10 folds), next to the image tree.
"""
import sys

from _cli import run_eval

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        sys.exit(run_eval(__doc__, ["--val", f"lfw:{args[0]}"], args[1:]))
    sys.exit(run_eval(__doc__, [], args))
