"""``facekd export-teacher``: a teacher network -> ONNX that ``teacher.kind: onnx`` serves (checked)."""
from __future__ import annotations

import argparse
import json

from facekd.argtypes import non_negative_int, positive_int
from facekd.commands import COMMANDS, Command


@COMMANDS.register("export-teacher")
class ExportTeacherCommand(Command):
    """Export a teacher (today: dlib's face ResNet) to ONNX and compare it with the torch module."""

    help = "export a teacher network (dlib's ResNet) to ONNX for teacher.kind=onnx, checked vs torch"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--kind", default="dlib", help="teacher kind to export (default: dlib)")
        parser.add_argument("--path", help="the teacher's model file (dlib: the .dat; default: packaged)")
        parser.add_argument("--out", required=True, help="the .onnx file to write")
        parser.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (>= 17; default 17)")
        parser.add_argument("--check-faces", type=non_negative_int, default=8,
                            help="synthetic faces to compare ONNX with torch on (0: no check; default 8)")

    def run(self, args: argparse.Namespace) -> int:
        import numpy as np

        from facekd.export.teacher_export import TEACHER_EXPORTS, compare_with_torch, export_teacher

        meta = export_teacher(args.kind, args.out, args.path, args.opset)
        _, framing, _ = TEACHER_EXPORTS.get(args.kind)(args.path)
        report = {"out": str(args.out), "input": f"uint8 [batch, {meta.input_size}, {meta.input_size}, 3] RGB",
                  "teacher_config": {"kind": "onnx", "path": str(args.out),
                                     "framing": {"template": framing.template,
                                                 "channel_order": framing.channel_order}},
                  "params": meta.params}
        if args.check_faces > 0:
            from facekd.data.synthetic import SyntheticFaces

            faces = SyntheticFaces(num_identities=args.check_faces, images_per_identity=1, seed=0)
            chips = framing.frame(np.stack([faces.load(i) for i in range(len(faces))]))
            cosine = compare_with_torch(args.kind, args.out, chips, args.path)
            report["min_cosine_vs_torch"] = round(float(cosine.min()), 6)
        print(json.dumps(report, indent=2))
        return 0
