"""``facekd export``: checkpoint -> ONNX (checked), optionally INT8 with its accuracy report.

With ``--val KIND:PATH`` the verification threshold is fitted on that pair set (the first
one given) and stored in the model's metadata -- for the INT8 model its own threshold --
so that ``facekd verify`` can decide without a threshold from training.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from facekd.argtypes import cosine, input_size, positive_int
from facekd.commands import COMMANDS, Command


@COMMANDS.register("export")
class ExportCommand(Command):
    """Export a trained backbone to ONNX, check it against PyTorch, optionally quantise to INT8."""

    help = "export a checkpoint to ONNX (BN folded, dynamic batch, checked vs PyTorch), optionally INT8"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from facekd.export.prelu import DEFAULT_PRELU_REWRITE, INT8_PRELU_REWRITE, PRELU_REWRITES
        from facekd.export.check import MIN_INT8_COSINE
        from facekd.export.int8_options import CALIBRATION_METHODS, DEFAULT_INT8

        parser.add_argument("checkpoint", help="facekd checkpoint (.pt) or a plain state dict with --arch")
        parser.add_argument("--out", required=True, help="the .onnx file to write")
        parser.add_argument("--input-format", choices=("uint8", "float"), default="uint8",
                            help="uint8: raw NHWC RGB pixels, normalisation in the graph (default); "
                                 "float: normalised NCHW float32")
        parser.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (>= 17; default 17)")
        parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                            help="torch.onnx exporter (default: torchscript)")
        exact = [name for name in PRELU_REWRITES if PRELU_REWRITES.get(name).exact]
        parser.add_argument("--prelu", choices=(*exact, "none"), default=DEFAULT_PRELU_REWRITE,
                            help="rewrite PReLU into ops onnxruntime runs fast and quantises "
                                 f"(exact; default {DEFAULT_PRELU_REWRITE}; 'none' keeps PRelu nodes)")
        parser.add_argument("--int8-prelu", choices=(*exact, "none"), default=INT8_PRELU_REWRITE,
                            help=f"the PReLU rewrite of the INT8 model (default {INT8_PRELU_REWRITE}: "
                                 "faster in int8 than the fp32 default, bench/README.md)")
        parser.add_argument("--arch", help="architecture of a checkpoint without model_config")
        parser.add_argument("--embedding-size", type=positive_int, help="with --arch (default 512)")
        parser.add_argument("--input-size", type=input_size, help="with --arch (default 112)")
        parser.add_argument("--threshold", type=cosine,
                            help="cosine-similarity threshold to record (default: fitted on the first "
                                 "--val set, else the checkpoint's verification threshold, 1 - d/2 of its "
                                 "squared-L2 threshold d)")
        parser.add_argument("--val", action="append", default=[], metavar="KIND:PATH",
                            help="verification set (lfw:PATH, bin:PATH, synthetic, ...; repeatable): the "
                                 "first fits the stored threshold; all compare fp32 vs int8 accuracy")
        parser.add_argument("--faces", default="synthetic",
                            help="aligned faces for the checks: 'synthetic' (default) or a directory")
        parser.add_argument("--threads", type=positive_int, default=2, help="onnxruntime threads (default 2)")
        group = parser.add_argument_group("INT8")
        group.add_argument("--int8", action="store_true", help="also write a static INT8 model")
        group.add_argument("--int8-out", help="INT8 file (default: <out stem>_int8.onnx, what "
                                              "'facekd verify --int8' and FaceEmbedder(precision='int8') load)")
        group.add_argument("--calib", default="synthetic",
                           help="calibration faces: a directory of aligned faces (other image sizes are "
                                "aligned with MTCNN; real faces are recommended) or 'synthetic' (default)")
        group.add_argument("--calib-count", type=positive_int, default=256, help="calibration faces (default 256)")
        group.add_argument("--calib-method", choices=CALIBRATION_METHODS, default=DEFAULT_INT8.calibrate_method,
                           help=f"activation ranges (default {DEFAULT_INT8.calibrate_method})")
        group.add_argument("--keep-float", default=",".join(DEFAULT_INT8.keep_float),
                           help="layers left in float: 'first', 'last' and/or node names, comma separated "
                                f"(default: {','.join(DEFAULT_INT8.keep_float) or 'none'}; '' quantises every layer)")
        group.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales")
        group.add_argument("--quant-format", choices=("qdq", "qoperator"), default="qdq",
                           help="QDQ (default) or QOperator (QLinearConv nodes written directly)")
        group.add_argument("--weight-type", choices=("s8", "u8"), default="s8",
                           help="int8 (U8S8, default) or uint8 (U8U8) weights")
        group.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=DEFAULT_INT8.reduce_range,
                           help="7-bit weights (default: on; they never saturate, while 8-bit ones "
                                "(--no-reduce-range) saturate onnxruntime's kernels on x86 CPUs without VNNI or AMX)")
        group.add_argument("--int8-min-cosine", type=cosine, default=MIN_INT8_COSINE,
                           help=f"per-face cosine the INT8 model must reach vs PyTorch (default {MIN_INT8_COSINE})")
        parser.add_argument("--report", help="write the check/quantisation report as JSON here")

    def run(self, args: argparse.Namespace) -> int:
        from facekd.export import check_export, export_onnx, load_checkpoint_model, load_faces

        model, info = load_checkpoint_model(args.checkpoint, args.arch, args.embedding_size, args.input_size)
        metadata = info.metadata(model)
        if args.threshold is not None:
            metadata = dataclasses.replace(metadata, threshold=args.threshold, threshold_source="--threshold",
                                           threshold_flip=None)
        meta = export_onnx(model, args.out, input_format=args.input_format, opset=args.opset,
                           metadata=metadata, exporter=args.exporter,
                           prelu=None if args.prelu == "none" else args.prelu)
        print(f"wrote {args.out}: {meta.model_name}, {meta.input_format} input {meta.input_size}x"
              f"{meta.input_size}, {meta.embedding_size}-d, config digest {meta.config_digest}, "
              f"PReLU rewrite {meta.prelu_rewrite}, "
              f"threshold {'none' if meta.threshold is None else f'{meta.threshold:.4f} (cosine)'}")
        faces = load_faces(args.faces, 64, seed=0)
        check = check_export(args.out, model, faces, threads=args.threads)
        print(check)
        report = {"onnx": args.out, "metadata": meta.to_props(), "check": check.to_dict()}
        pair_sets = self._pair_sets(args.val)
        thresholds = {}
        if args.int8:
            int8_report, thresholds = self._int8(args, model, metadata, faces, pair_sets)
            report.update(int8_report)
        elif pair_sets and args.threshold is None:
            from facekd.export import OnnxEmbedder
            from facekd.export.threshold import fit_threshold

            thresholds = {args.out: fit_threshold(OnnxEmbedder(args.out, threads=args.threads, resize=True),
                                                  pair_sets[0])}
        report["thresholds"] = self._store(thresholds)
        if args.report:
            Path(args.report).parent.mkdir(parents=True, exist_ok=True)
            Path(args.report).write_text(json.dumps(report, indent=2, default=str))
            print(f"report: {args.report}")
        return 0

    @staticmethod
    def _pair_sets(specs):
        from facekd.evaluation.runner import ValSpec, build_pair_sets

        return [pair_set for pair_set, _ in build_pair_sets([ValSpec.parse(v) for v in specs])]

    @staticmethod
    def _store(thresholds) -> dict:
        """Write each fitted threshold into its model's metadata; JSON-ready summary."""
        from facekd.export.threshold import store_threshold

        out = {}
        for path, fit in thresholds.items():
            store_threshold(path, fit)
            print(f"threshold of {path}: {fit.threshold:.4f} (cosine), {fit.source}; "
                  f"accuracy there {100 * fit.accuracy:.2f}%")
            out[path] = dataclasses.asdict(fit)
        return out

    def _int8(self, args: argparse.Namespace, model, metadata, faces, pair_sets):
        """Quantise, compare fp32 vs int8 (drift, accuracy; fitting thresholds), check the INT8 model at batch 1/7/64.

        The INT8 model gets its own PReLU rewrite (``--int8-prelu``): where it differs from the fp32
        file's, the model is exported once more with its ``PRelu`` nodes, which ``quantize_int8`` rewrites.
        """
        import tempfile

        from facekd.export import ExportCheckError, check_export, check_int8, export_onnx, load_faces, quantize_int8
        from facekd.export.cpu_features import describe_int8_capability
        from facekd.export.protos import int8_sibling
        from facekd.export.int8_options import Int8Options
        from facekd.export.quantize import int8_source
        from facekd.export.threshold import ThresholdFit, fit_source

        out = args.int8_out or int8_sibling(args.out)
        calibration = load_faces(args.calib, args.calib_count, seed=1)
        options = Int8Options(keep_float=tuple(k.strip() for k in args.keep_float.split(",") if k.strip()),
                              per_channel=not args.no_per_channel, calibrate_method=args.calib_method,
                              quant_format=args.quant_format, weight_type=args.weight_type,
                              reduce_range=args.reduce_range)
        int8_prelu = None if args.int8_prelu == "none" else args.int8_prelu
        with tempfile.TemporaryDirectory(prefix="facekd-int8-") as tmp:
            source = int8_source(args.out, args.prelu, args.int8_prelu, os.path.join(tmp, "prelu.onnx"),
                                 lambda path: export_onnx(model, path, input_format=args.input_format,
                                                          opset=args.opset, metadata=metadata,
                                                          exporter=args.exporter, prelu=None))
            quant = quantize_int8(source, out, calibration, options, prelu=int8_prelu, rewrite_faces=faces,
                                  threads=args.threads, calibration_source=args.calib)
            check_int8(quant, faces, pair_sets, threads=args.threads)
        quant.fp32_path = args.out
        print(quant)
        print(describe_int8_capability())
        check = check_export(out, model, faces, min_cosine=args.int8_min_cosine, threads=args.threads,
                             raise_on_failure=False)
        print(check)
        if not check.ok:
            Path(out).unlink(missing_ok=True)
            raise ExportCheckError(
                f"{out}: the INT8 model failed its check (per-face cosine to PyTorch min "
                f"{check.min_cosine:.4f}, required {args.int8_min_cosine}) and was not "
                f"kept; {args.out} (fp32) passed.  Try: {'; or '.join(int8_remedies(options, args))}")
        thresholds = {}
        if pair_sets and args.threshold is None:
            first = pair_sets[0]
            metrics = quant.verification[first.name]
            for precision, path in (("fp32", args.out), ("int8", out)):
                thresholds[path] = ThresholdFit(metrics[f"{precision}_threshold"], fit_source(first),
                                                metrics[f"{precision}_flip_accuracy"], first.name)
        return {"int8": quant.to_dict(), "int8_check": check.to_dict()}, thresholds


def int8_remedies(options, args: argparse.Namespace) -> list:
    """The ``facekd export`` options to try after a failed INT8 check of a model quantised with
    ``options`` (an :class:`~facekd.export.int8_options.Int8Options`), best first (bench/README.md,
    "INT8 options"): 7-bit weights where this CPU saturates 8-bit ones, percentile ranges, then the
    first layer in float, then real calibration faces, then quantisation-aware fine-tuning."""
    remedies = []
    if options.saturates_on():
        remedies.append("--reduce-range (this CPU has no VNNI or AMX: 8-bit weights saturate its int8 kernels)")
    if options.calibrate_method != "percentile":
        remedies.append("--calib-method percentile")
    if "first" not in options.keep_float:
        remedies.append(f"--keep-float {','.join((*options.keep_float, 'first'))}")
    if args.calib == "synthetic":
        remedies.append("--calib DIR (a few hundred real aligned faces)")
    elif args.calib_count < 512:
        remedies.append(f"--calib-count {2 * args.calib_count}")
    remedies.append(f"quantisation-aware fine-tuning: facekd int8-finetune {args.checkpoint} --faces DIR --out q.pt, "
                    "then export q.pt (it helps models with uneven activation ranges; bench/README.md)")
    return remedies
