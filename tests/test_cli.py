"""The facekd command line."""
from __future__ import annotations

import subprocess
import sys

from facekd.cli import build_parser
from facekd.commands import COMMANDS


def test_every_command_module_registers_and_parses_help():
    parser = build_parser()
    assert "align" in COMMANDS or len(list(COMMANDS)) >= 1
    for name in COMMANDS:
        sub = parser._subparsers._group_actions[0].choices[name]
        assert sub.format_help().startswith("usage: facekd " + name)


def test_console_entry_point_lists_commands():
    out = subprocess.run([sys.executable, "-m", "facekd", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout
