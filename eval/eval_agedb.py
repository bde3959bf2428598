#!/usr/bin/env python
"""AgeDB-30 verification: ``python eval/eval_agedb.py AGEDB --model CKPT [facekd eval options]``.

AGEDB is insightface's ``agedb_30.bin`` or an AgeDB-30 directory in its documented layout.
"""
import sys

from _cli import run_eval

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        kind = "bin" if args[0].endswith(".bin") else "agedb"
        sys.exit(run_eval(__doc__, ["--val", f"{kind}:{args[0]}"], args[1:]))
    sys.exit(run_eval(__doc__, [], args))
