"""``facekd verify``: are two face images the same person, according to an exported model?"""
from __future__ import annotations

import argparse

from facekd.argtypes import cosine, positive_int
from facekd.commands import COMMANDS, Command


def read_aligned_face(path: str):
    """The image at ``path`` as an aligned face: square uint8 RGB, else :class:`DataError` naming it."""
    from facekd.data.image_io import read_image
    from facekd.errors import DataError

    image = read_image(path)
    height, width = image.shape[:2]
    if height != width:
        raise DataError(path, f"--aligned expects a square aligned face (112x112), got {width}x{height} px")
    return image


@COMMANDS.register("verify")
class VerifyCommand(Command):
    """Print the cosine similarity of two faces and the decision at the model's threshold."""

    help = "compare two face images with an exported ONNX model (similarity + same/different)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", help="ONNX model written by 'facekd export'")
        parser.add_argument("image1", help="first image (a photo, or an aligned face with --aligned)")
        parser.add_argument("image2", help="second image")
        parser.add_argument("--aligned", action="store_true",
                            help="the images are already aligned faces (112x112); skip MTCNN")
        parser.add_argument("--threshold", type=cosine,
                            help="cosine-similarity threshold (default: the one stored in the model)")
        parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                            help="add the mirror images' embeddings (default: as the model's threshold "
                                 "was fitted)")
        parser.add_argument("--threads", type=positive_int, default=None, help="onnxruntime threads")
        parser.add_argument("--int8", action="store_true",
                            help="run the INT8 model written next to MODEL by 'facekd export --int8' "
                                 "(MODEL_int8.onnx), with its own stored threshold")

    def run(self, args: argparse.Namespace) -> int:
        import numpy as np

        from facekd.export import FaceEmbedder

        embedder = FaceEmbedder(args.model, threads=args.threads, flip=args.flip, threshold=args.threshold,
                                precision="int8" if args.int8 else "fp32")
        paths = [args.image1, args.image2]
        if args.aligned:
            embeddings = np.concatenate([embedder.embed_aligned(read_aligned_face(path)) for path in paths])
        else:
            embeddings = embedder.embed_photos(paths)
        score, same = embedder.verify(embeddings[0], embeddings[1])
        print(f"model:      {embedder.path} ({embedder.precision})")
        print(f"similarity: {score:.4f} (cosine)")
        if same is None:
            print("threshold:  none stored in the model (pass --threshold, or fit one with "
                  "'facekd export ... --val KIND:PATH')")
            print("decision:   unknown")
        else:
            source = "--threshold" if args.threshold is not None else (
                embedder.metadata.threshold_source or "stored in the model")
            print(f"threshold:  {embedder.threshold:.4f} ({source})")
            print(f"decision:   {'same person' if same else 'different people'}")
        return 0

