#!/usr/bin/env python3
"""Compare two face photos with an exported model: ``facekd verify MODEL.onnx IMG1 IMG2``.

Prints the cosine similarity and the same/different decision at the model's stored threshold.
"""
import sys

from facekd.cli import main

if __name__ == "__main__":
    sys.exit(main(["verify", *sys.argv[1:]]))
