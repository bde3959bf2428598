"""``facekd train-student``: distil a frozen teacher into a student (``train_face_student.py``)."""
from __future__ import annotations

import argparse

from facekd.commands import COMMANDS, Command


@COMMANDS.register("train-student")
class TrainStudentCommand(Command):
    help = ("distil a teacher into a student (ArcFace, triplet distillation, HR->LR feature "
            "distillation, Hinton KD; default: synthetic faces, training the teacher first if needed)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from facekd.training.launch import add_training_arguments

        add_training_arguments(parser, "student_synthetic.yaml")

    def run(self, args: argparse.Namespace) -> int:
        from facekd.training.launch import run_command

        return run_command(args, "student")
