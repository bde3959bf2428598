"""The ``facekd`` command line: ``facekd <command> [options]``."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from facekd.commands import COMMANDS, discover
from facekd.errors import FaceKDError


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command."""
    discover()
    parser = argparse.ArgumentParser(
        prog="facekd", description="Face-recognition distillation: teacher -> MobileFaceNet student.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        command = COMMANDS.get(name)()
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``facekd`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._command.run(args) or 0)
    except FaceKDError as error:
        print(f"facekd {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
