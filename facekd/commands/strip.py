"""``facekd strip``: a training checkpoint -> the weights and model config only (to ship)."""
from __future__ import annotations

import argparse
import json

from facekd.commands import COMMANDS, Command


@COMMANDS.register("strip")
class StripCommand(Command):
    """Keep what ``facekd eval`` and ``facekd export`` read; drop optimiser, sampler and RNG state."""

    help = "write a training checkpoint's weights and model config only (a model to ship)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("checkpoint", help="a facekd training checkpoint (best.pt / last.pt)")
        parser.add_argument("--out", required=True, help="the .pt file to write")

    def run(self, args: argparse.Namespace) -> int:
        import os

        from facekd.training.checkpoint import strip_checkpoint

        provenance = strip_checkpoint(args.checkpoint, args.out)
        print(json.dumps({"out": args.out, "bytes": os.path.getsize(args.out), **provenance}, indent=1, default=str))
        return 0
