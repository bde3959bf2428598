#!/usr/bin/env python3
"""Export a trained student to ONNX (checked against PyTorch), optionally INT8: ``facekd export``.

    python3 export/export_student.py runs/student/best.pt --out student.onnx
    python3 export/export_student.py runs/student/best.pt --out student.onnx --int8 \
        --calib runs/aligned/celeba --val lfw:data/lfw/pairs.txt --report export_report.json

Every option of ``facekd export --help`` applies.
"""
import sys

from facekd.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
