"""``facekd align SRC DST``: detect and align every face photo of a folder tree (MTCNN)."""
from __future__ import annotations

import argparse

from facekd.argtypes import fraction, input_size, non_negative_float, number, positive_int
from facekd.commands import COMMANDS, Command


def _pads(text: str) -> tuple:
    try:
        pads = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions like 0.25 or 0.25,0; got {text!r}") from None
    if min(pads) < 0:
        raise argparse.ArgumentTypeError(f"pads must be >= 0, got {text!r}")
    return pads


@COMMANDS.register("align")
class AlignCommand(Command):
    help = ("detect faces with MTCNN (or read landmark files) and write 112x112 arcface-aligned crops, "
            "mirroring SRC into DST (resumable; images without a face are listed in DST/align_log.txt)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("src", metavar="SRC", help="folder of photos, e.g. <identity>/<image>.jpg")
        parser.add_argument("dst", metavar="DST", help="output folder (same relative paths)")
        parser.add_argument("--workers", type=positive_int, default=1, help="parallel workers (default 1)")
        parser.add_argument("--backend", choices=("process", "thread"), default="process",
                            help="how workers run (default: processes, one torch thread each)")
        parser.add_argument("--size", type=input_size, default=112, help="output side in pixels (default 112)")
        parser.add_argument("--margin", type=non_negative_float, default=0.0,
                            help="extra context in output pixels on each side (shrinks the template; default 0)")
        parser.add_argument("--min-face-size", type=positive_int, default=20, help="smallest face MTCNN looks for (px)")
        parser.add_argument("--min-score", type=fraction, default=0.9, help="lowest accepted detection score")
        parser.add_argument("--pad", type=_pads, default=(0.25,), metavar="P[,P...]",
                            help="border added before detection, as a fraction of the photo's longer side; "
                                 "several (e.g. 0.25,0) are tried in turn until one finds a face, and faces "
                                 "found by a later one are counted as retried (default 0.25)")
        parser.add_argument("--pad-mode", choices=("constant", "replicate"), default="constant",
                            help="fill the border black (default) or repeat the photo's edge pixels")
        parser.add_argument("--landmarks", metavar="FORMAT", default=None,
                            help="align from landmark files instead of MTCNN (e.g. intraface49: "
                                 "All-Age-Faces' 49 key points); needs --landmarks-dir")
        parser.add_argument("--landmarks-dir", metavar="DIR", default=None,
                            help="landmark files mirroring SRC (DIR/a/b.txt for SRC/a/b.jpg)")
        parser.add_argument("--no-face", choices=("skip", "center"), default="skip",
                            help="images without a detected face: skip them (default) or write a centre crop")
        parser.add_argument("--center-fraction", type=number(float, gt=0, le=1), default=0.53,
                            help="side of the centre crop as a fraction of the shorter image side")
        parser.add_argument("--ext", default=".jpg", help="output image format (.jpg or .png)")
        parser.add_argument("--quality", type=number(int, ge=0, le=100), default=95, help="JPEG quality")
        parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
        parser.add_argument("--device", default="cpu", help="torch device for MTCNN (default cpu)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        import logging

        from facekd.data.align_tree import align_tree

        from facekd.data.landmark_files import LANDMARK_FORMATS
        from facekd.errors import ConfigError

        if args.landmarks and (args.landmarks not in LANDMARK_FORMATS or not args.landmarks_dir):
            raise ConfigError(f"--landmarks {args.landmarks!r} needs a known format "
                              f"({', '.join(LANDMARK_FORMATS)}) and --landmarks-dir")
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        report = align_tree(args.src, args.dst, workers=args.workers, size=args.size, margin=args.margin,
                            min_face_size=args.min_face_size, min_score=args.min_score, no_face=args.no_face,
                            center_fraction=args.center_fraction, ext=args.ext, quality=args.quality,
                            overwrite=args.overwrite, backend=args.backend, progress=not args.no_progress,
                            device=args.device, pad=args.pad, pad_mode=args.pad_mode,
                            landmarks=args.landmarks, landmarks_dir=args.landmarks_dir)
        print(f"facekd align: {report.summary()}; log: {report.log_path}")
        return 0
