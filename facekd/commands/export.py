"""``facekd export``: checkpoint -> ONNX (checked), optionally INT8 (QDQ) with its accuracy report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facekd.commands import COMMANDS, Command


@COMMANDS.register("export")
class ExportCommand(Command):
    """Export a trained backbone to ONNX, check it against PyTorch, optionally quantise to INT8."""

    help = "export a checkpoint to ONNX (BN folded, dynamic batch, checked vs PyTorch), optionally INT8"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("checkpoint", help="facekd checkpoint (.pt) or a plain state dict with --arch")
        parser.add_argument("--out", required=True, help="the .onnx file to write")
        parser.add_argument("--input-format", choices=("uint8", "float"), default="uint8",
                            help="uint8: raw NHWC RGB pixels, normalisation in the graph (default); "
                                 "float: normalised NCHW float32")
        parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
        parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                            help="torch.onnx exporter (default: torchscript)")
        parser.add_argument("--arch", help="architecture of a checkpoint without model_config")
        parser.add_argument("--embedding-size", type=int, help="with --arch (default 512)")
        parser.add_argument("--input-size", type=int, help="with --arch (default 112)")
        parser.add_argument("--threshold", type=float,
                            help="cosine-similarity threshold to record (default: from the checkpoint's "
                                 "verification, 1 - d/2 of its squared-L2 threshold d)")
        parser.add_argument("--faces", default="synthetic",
                            help="aligned faces for the checks: 'synthetic' (default) or a directory")
        parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
        group = parser.add_argument_group("INT8")
        group.add_argument("--int8", action="store_true", help="also write a static QDQ INT8 model")
        group.add_argument("--int8-out", help="INT8 file (default: <out>_int8.onnx)")
        group.add_argument("--calib", default="synthetic",
                           help="calibration faces: 'synthetic' or a directory of aligned faces "
                                "(other image sizes are aligned with MTCNN)")
        group.add_argument("--calib-count", type=int, default=256, help="calibration faces (default 256)")
        group.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax")
        group.add_argument("--keep-float", default="",
                           help="layers left in float: 'first', 'last' and/or node names, comma separated")
        group.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales")
        group.add_argument("--val", action="append", default=[], metavar="KIND:PATH",
                           help="verification set for fp32-vs-int8 accuracy (lfw:PATH, bin:PATH, "
                                "synthetic, ...); repeatable")
        group.add_argument("--int8-min-cosine", type=float, default=0.99,
                           help="per-face cosine the INT8 model must reach vs PyTorch (default 0.99)")
        parser.add_argument("--report", help="write the check/quantisation report as JSON here")

    def run(self, args: argparse.Namespace) -> int:
        import dataclasses

        from facekd.export import check_export, export_onnx, load_checkpoint_model, load_faces

        model, info = load_checkpoint_model(args.checkpoint, args.arch, args.embedding_size, args.input_size)
        metadata = info.metadata(model)
        if args.threshold is not None:
            metadata = dataclasses.replace(metadata, threshold=args.threshold, threshold_source="--threshold")
        meta = export_onnx(model, args.out, input_format=args.input_format, opset=args.opset,
                           metadata=metadata, exporter=args.exporter)
        print(f"wrote {args.out}: {meta.model_name}, {meta.input_format} input {meta.input_size}x"
              f"{meta.input_size}, {meta.embedding_size}-d, config digest {meta.config_digest}, "
              f"threshold {'none' if meta.threshold is None else f'{meta.threshold:.4f} (cosine)'}")
        faces = load_faces(args.faces, 64, seed=0)
        check = check_export(args.out, model, faces, threads=args.threads)
        print(check)
        report = {"onnx": args.out, "metadata": meta.to_props(), "check": check.to_dict()}
        if args.int8:
            report.update(self._int8(args, model, faces))
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(report, indent=2, default=str))
            print(f"report: {args.report}")
        return 0

    def _int8(self, args: argparse.Namespace, model, faces) -> dict:
        """Quantise, check the INT8 model at batch 1/7/64 and compare fp32 vs int8."""
        from facekd.evaluation.runner import ValSpec, build_pair_sets
        from facekd.export import check_export, load_faces, quantize_int8

        out = args.int8_out or str(Path(args.out).with_name(Path(args.out).stem + "_int8.onnx"))
        calibration = load_faces(args.calib, args.calib_count, seed=1)
        pair_sets = [pair_set for pair_set, _ in build_pair_sets([ValSpec.parse(v) for v in args.val])]
        quant = quantize_int8(args.out, out, calibration, eval_faces=faces, pair_sets=pair_sets,
                              keep_float=[k for k in args.keep_float.split(",") if k.strip()],
                              per_channel=not args.no_per_channel, calibrate_method=args.calib_method,
                              threads=args.threads)
        print(quant)
        check = check_export(out, model, faces, min_cosine=args.int8_min_cosine, threads=args.threads)
        print(check)
        return {"int8": quant.to_dict(), "int8_check": check.to_dict()}
