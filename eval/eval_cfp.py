#!/usr/bin/env python
"""CFP frontal-profile and frontal-frontal verification:
``python eval/eval_cfp.py CFP_ROOT --model CKPT [facekd eval options]``.

CFP_ROOT holds ``Data/Images`` and ``Protocol/`` (Split/FP and Split/FF, 10 folds each).
"""
import sys

from _cli import run_eval

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        sys.exit(run_eval(__doc__, ["--val", f"cfp_fp:{args[0]}", "--val", f"cfp_ff:{args[0]}"], args[1:]))
    sys.exit(run_eval(__doc__, [], args))
