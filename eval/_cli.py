"""Shared by the entry scripts: run ``facekd`` from a checkout without installing it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facekd.cli import main  # noqa: E402


def run_eval(usage: str, val_args: List[str], argv: List[str]) -> int:
    """``facekd eval`` with ``val_args`` (``--val KIND:PATH`` ...) before the user's options."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return main(["eval", "--help"])
    return main(["eval", *val_args, *argv])
