"""``facekd config``: print a config resolved (``_base_`` chain, ``--set``, derived name and
run directory, every default filled in) as the YAML a run saves beside its checkpoints."""
from __future__ import annotations

import argparse

from facekd.commands import COMMANDS, Command


@COMMANDS.register("config")
class ConfigCommand(Command):
    """Load a config as a training command would (every value checked) and print it; loading
    the printed YAML gives an equal config."""

    help = "print a config resolved (bases, --set, derived name/output_dir, defaults) as YAML"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", nargs="?", default=None,
                            help="experiment YAML, or a name under configs/ (default: none, the dataclass defaults)")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config key, e.g. --set train.epochs=2 (repeatable)")

    def run(self, args: argparse.Namespace) -> int:
        from facekd.config import load_config, to_yaml

        print(to_yaml(load_config(args.config, args.overrides)), end="")
        return 0
