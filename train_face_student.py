#!/usr/bin/env python3
"""Train a distilled face-recognition student: the same as ``facekd train-student``.

With no arguments it runs the built-in synthetic example (configs/student_synthetic.yaml):
if the small synthetic teacher (runs/teacher_synthetic/best.pt) is missing it is trained
first, then the student is distilled from it; both leave a checkpoint, metrics.jsonl and
verification.json in their run directory, and the verification result is printed.

    python3 train_face_student.py
    python3 train_face_student.py --config configs/student_mbf.yaml --set train.epochs=2
    torchrun --nproc_per_node 4 train_face_student.py --config configs/student_mbf.yaml
    python3 train_face_student.py --resume            # continue runs/student_synthetic/last.pt
"""
import sys

from facekd.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-student", *sys.argv[1:]]))
