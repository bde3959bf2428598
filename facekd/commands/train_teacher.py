"""``facekd train-teacher``: train a backbone with a margin head (ArcFace/CosFace)."""
from __future__ import annotations

import argparse

from facekd.commands import COMMANDS, Command


@COMMANDS.register("train-teacher")
class TrainTeacherCommand(Command):
    help = ("train a teacher backbone with an ArcFace/CosFace head (default: a small IResNet on "
            "synthetic faces, a few minutes on CPU)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from facekd.training.launch import add_training_arguments

        add_training_arguments(parser, "teacher_synthetic.yaml")

    def run(self, args: argparse.Namespace) -> int:
        from facekd.training.launch import run_command

        return run_command(args, "teacher")
