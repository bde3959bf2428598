"""``facekd leak-filter TRAIN... --reference lfw=DIR --out OUT``: drop training faces of test identities."""
from __future__ import annotations

import argparse

from facekd.commands import COMMANDS, Command


def _named_folder(text: str):
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name, folder


@COMMANDS.register("leak-filter")
class LeakFilterCommand(Command):
    """The teacher compares every training face with every test face (:mod:`facekd.data.leak_filter`)."""

    help = ("drop training faces whose teacher embedding matches a test face (LFW, CFP) closer than the "
            "threshold at a false-match rate of --far between different people (measured on the test "
            "faces); writes OUT/kept.txt, OUT/dropped.tsv, OUT/report.json (--links: OUT/faces/, links "
            "to the kept faces)")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("train", nargs="+", type=_named_folder, metavar="NAME=FOLDER",
                            help="aligned training faces (images anywhere below FOLDER)")
        parser.add_argument("--reference", action="append", type=_named_folder, required=True,
                            metavar="NAME=ROOT", help="aligned test faces as ROOT/<identity>/... (repeat: "
                                                      "lfw=..., cfp=...)")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--teacher", default="sface", help="teacher.kind (default sface)")
        parser.add_argument("--teacher-path", default=None, help="teacher.path (model file), if the kind needs one")
        parser.add_argument("--far", type=float, default=1e-6,
                            help="false-match rate per comparison between different people (default 1e-6)")
        parser.add_argument("--threshold", type=float, default=None,
                            help="use this cosine threshold instead of measuring one")
        parser.add_argument("--cache", default=None, help="embedding store folder (default OUT/embeddings)")
        parser.add_argument("--links", action="store_true", help="write OUT/faces/<NAME>/..., links to kept faces")
        parser.add_argument("--batch-size", type=int, default=32, help="faces per teacher call")

    def run(self, args: argparse.Namespace) -> int:
        import json
        import logging

        from facekd.config import TeacherConfig
        from facekd.data.leak_filter import filter_leaks
        from facekd.teachers import build_teacher

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        teacher = build_teacher(TeacherConfig(kind=args.teacher, path=args.teacher_path))
        report = filter_leaks(dict(args.train), dict(args.reference), args.out, teacher, far=args.far,
                              threshold=args.threshold, cache=args.cache, links=args.links,
                              batch_size=args.batch_size)
        measured = report["threshold_measured"]
        how = (f"measured at FAR {measured['far']:g} on {measured['pairs']:,} different-identity test pairs"
               if measured else "given")
        print(f"facekd leak-filter: threshold {report['threshold']:.4f} ({how}); kept={report['kept']} "
              f"dropped={report['dropped']}; " + json.dumps(report["train"]))
        return 0
