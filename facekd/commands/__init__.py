"""``facekd`` subcommands: one module per command, discovered automatically.

Each module in this package registers a :class:`Command` subclass::

    @COMMANDS.register("align")
    class AlignCommand(Command):
        help = "align faces with MTCNN"
        def add_arguments(self, parser): ...
        def run(self, args) -> int: ...

Heavy imports (torch, cv2, onnxruntime) belong inside ``run`` so that
``facekd --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil

from facekd.registry import Registry

COMMANDS = Registry("command")


class Command:
    """Base class of a ``facekd`` subcommand."""

    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this command's options to its sub-parser."""

    def run(self, args: argparse.Namespace) -> int:
        """Execute the command; return the process exit code."""
        raise NotImplementedError


def discover() -> None:
    """Import every command module in this package so that it registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
