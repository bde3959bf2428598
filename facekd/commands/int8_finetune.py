"""``facekd int8-finetune``: quantisation-aware fine-tuning of a student whose INT8 export drifts.

When ``facekd export --int8`` fails its per-face check whatever the options, fine-tune the
checkpoint with INT8 rounding simulated (:mod:`facekd.export.int8_finetune`; no labels, only
aligned faces) and export the result::

    facekd int8-finetune student.pt --faces FACES_DIR --out student_q.pt
    facekd export student_q.pt --out s.onnx --int8 --calib FACES_DIR
"""
from __future__ import annotations

import argparse
import json

from facekd.argtypes import non_negative_int, positive_float, positive_int, seed
from facekd.commands import COMMANDS, Command


@COMMANDS.register("int8-finetune")
class Int8FinetuneCommand(Command):
    """Fine-tune a checkpoint so that its INT8 export stays close to the float model."""

    help = "quantisation-aware fine-tuning (no labels) of a student whose INT8 export fails its check"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from facekd.export.int8_options import DEFAULT_INT8

        parser.add_argument("checkpoint", help="facekd checkpoint (.pt): a training checkpoint or a shipped model")
        parser.add_argument("--faces", required=True,
                            help="a directory of aligned faces: the ranges are observed on them and the "
                                 "fine-tuning batches drawn from them (unlabelled; not a test set)")
        parser.add_argument("--out", required=True, help="the fine-tuned model to write (weights and model config)")
        parser.add_argument("--count", type=positive_int, default=2000, help="faces read from --faces (default 2000)")
        parser.add_argument("--check-faces", help="aligned faces the simulated drift is reported on "
                                                  "(default: the first 256 of --faces)")
        parser.add_argument("--steps", type=non_negative_int, default=300, help="Adam steps (default 300)")
        parser.add_argument("--lr", type=positive_float, default=1e-5, help="peak learning rate, cosine-decayed (default 1e-5)")
        parser.add_argument("--batch-size", type=positive_int, default=64, help="faces per step (default 64)")
        parser.add_argument("--keep-float", default="last",
                            help="weight layers the INT8 export keeps float: 'first' and/or 'last' (default last)")
        parser.add_argument("--reduce-range", action=argparse.BooleanOptionalAction,
                            default=DEFAULT_INT8.reduce_range,
                            help="simulate 7-bit weights, as 'facekd export --int8' makes them (default); "
                                 "--no-reduce-range for an export with --no-reduce-range")
        parser.add_argument("--seed", type=seed, default=0)
        parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from facekd.export import load_checkpoint_model
        from facekd.export.faces import load_faces
        from facekd.export.int8_finetune import finetune_for_int8
        from facekd.models import read_checkpoint
        from facekd.training.checkpoint import write_shipped_model

        if args.threads:
            torch.set_num_threads(args.threads)
        model, _ = load_checkpoint_model(args.checkpoint)
        faces = load_faces(args.faces, args.count)
        checks = load_faces(args.check_faces, 256) if args.check_faces else faces[:256]
        keep_float = tuple(name.strip() for name in args.keep_float.split(",") if name.strip())
        tuned, report = finetune_for_int8(model, faces, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                          eval_faces=checks, keep_float=keep_float, seed=args.seed,
                                          reduce_range=args.reduce_range)
        write_shipped_model(read_checkpoint(args.checkpoint), args.checkpoint, args.out,
                            state_dict=tuned.state_dict(),
                            int8_finetune={**report.to_dict(), "faces_dir": str(args.faces), "seed": args.seed})
        print(json.dumps({"out": args.out, **report.to_dict()}, indent=1))
        return 0
