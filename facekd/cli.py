"""The ``facekd`` command line: ``facekd <command> [options]``.

Every command takes ``--trust-pickles`` (load checkpoints and ``.bin`` sets with full
unpickling: only for files you trust, see :mod:`facekd.fileio`).  Bad input — a facekd
error (:class:`~facekd.errors.FaceKDError`) or an operating-system error on a named file —
prints one line ``facekd <command>: error: <path>: <problem>`` to stderr and exits with 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional

from facekd.argtypes import EXIT_BAD_INPUT, OneLineParser
from facekd.commands import COMMANDS, discover
from facekd.errors import FaceKDError
from facekd.fileio import TRUST_PICKLES_ENV


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per registered command."""
    discover()
    parser = OneLineParser(
        prog="facekd", description="Face-recognition distillation: teacher -> MobileFaceNet student.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        command = COMMANDS.get(name)()
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.add_argument("--trust-pickles", action="store_true",
                         help=f"load checkpoints and .bin files with full unpickling (can run code: only "
                              f"for files you trust; same as {TRUST_PICKLES_ENV}=1)")
        sub.set_defaults(_command=command)
    return parser


def error_message(error: BaseException) -> Optional[str]:
    """The one-line message for an error caused by bad input, or None for a bug (re-raised)."""
    if isinstance(error, FaceKDError):
        return _unwrap_worker_error(str(error))
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, MemoryError):
        return f"out of memory ({error or 'an input is too large'})"
    return None


def _unwrap_worker_error(message: str) -> str:
    """The original message of an error a DataLoader worker re-raised (``Caught DataError in
    DataLoader worker process 0. Original Traceback ...``): the traceback's last line."""
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return re.sub(r"^[\w.]*(Error|Exception): ", "", last.strip())


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``facekd`` console script."""
    args = build_parser().parse_args(argv)
    previous = os.environ.get(TRUST_PICKLES_ENV)
    if args.trust_pickles:
        os.environ[TRUST_PICKLES_ENV] = "1"     # also seen by DataLoader workers and subprocesses
    try:
        return int(args._command.run(args) or 0)
    except (FaceKDError, OSError, MemoryError) as error:
        message = error_message(error)
        if message is None:
            raise
        print(f"facekd {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if args.trust_pickles:                  # in-process callers (tests) get their environment back
            if previous is None:
                os.environ.pop(TRUST_PICKLES_ENV, None)
            else:
                os.environ[TRUST_PICKLES_ENV] = previous


if __name__ == "__main__":
    sys.exit(main())
