"""``facekd eval``: verification accuracy of checkpoints / ONNX files on pair sets -> results JSON."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

from facekd.argtypes import non_negative_int, number, number_list, positive_int
from facekd.config import MAX_INPUT_SIZE
from facekd.commands import COMMANDS, Command
from facekd.errors import ConfigError

VAL_KINDS = ("lfw", "bin", "agedb", "cfp_fp", "cfp_ff", "synthetic")


def parse_options(assignments: List[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings -> dict, values parsed as YAML scalars (``true``, ``3``, ``a.txt``)."""
    import yaml

    options = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--val-option {item!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


@COMMANDS.register("eval")
class EvalCommand(Command):
    help = ("verification accuracy (insightface 10-fold protocol, flip, TAR@FAR, ROC, resolution "
            "robustness) of checkpoints or ONNX files on LFW / .bin / AgeDB-30 / CFP / synthetic pairs")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", action="append", required=True, metavar="SPEC",
                            help="a checkpoint (.pt/.pth) or ONNX file; or path=FILE,role=teacher|baseline|"
                                 "distilled,label=NAME,arch=NAME,embedding_size=N; any teacher source with "
                                 "kind=onnx|dlib|embeddings (kind=dlib needs no path) and its framing "
                                 "input_size=,template=arcface|dlib,channel_order=RGB|BGR,mean=,std=; "
                                 "resolution=false skips its resolution curve (repeatable). A role=teacher "
                                 "model adds cross-model results for models of its embedding size")
        parser.add_argument("--val", action="append", required=True, metavar="KIND:PATH",
                            help=f"a verification set, KIND one of {', '.join(VAL_KINDS)} "
                                 "(e.g. lfw:data/lfw/pairs.txt, bin:agedb_30.bin, synthetic), optionally with "
                                 "its own ,key=value options (cfp_fp:data/cfp,root=aligned/cfp,align=none) "
                                 "(repeatable)")
        parser.add_argument("--val-option", action="append", default=[], metavar="KEY=VALUE",
                            help="extra argument for facekd.data.build_pair_set, given to every set")
        parser.add_argument("--out", default="results.json", help="results JSON (default: %(default)s)")
        parser.add_argument("--report", metavar="DIR", help="also write the HTML/Markdown report into DIR")
        parser.add_argument("--batch-size", type=positive_int, default=64)
        parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
        parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
        parser.add_argument("--folds", type=number(int, ge=2), default=10, help="cross-validation folds (default 10)")
        parser.add_argument("--far", type=number_list(float, gt=0, lt=1), default="1e-3,1e-2", help="FAR targets for TAR@FAR (default %(default)s)")
        parser.add_argument("--sizes", type=number_list(int, ge=1, le=MAX_INPUT_SIZE, none_ok=True),
                            default="112,56,28,14",
                            help="probe sizes of the resolution curve; 'none' skips it (default %(default)s)")
        parser.add_argument("--degrade-side", choices=("both", "one"), default="both",
                            help="degrade both images of a pair or only the second (probe) one")
        parser.add_argument("--hardest", type=non_negative_int, default=4, help="false accepts/rejects kept per set")
        parser.add_argument("--embedding-size", type=positive_int, help="fail unless every model produces this size")
        parser.add_argument("--latency-runs", type=non_negative_int, default=20, help="0 skips the latency measurement")
        parser.add_argument("--latency-batch-size", type=positive_int, default=1)
        parser.add_argument("--workers", type=non_negative_int, default=2, help="image-decoding threads")
        parser.add_argument("--threads", type=positive_int, default=None,
                            help="compute threads (torch, OpenCV, onnxruntime); default $FACEKD_THREADS, "
                                 "else the available cores / --jobs")
        parser.add_argument("--jobs", type=positive_int, default=None,
                            help="evaluations running at once on this machine, to share its cores "
                                 "(default $FACEKD_JOBS, else 1)")
        parser.add_argument("--no-cache", action="store_true",
                            help="do not keep the prepared pair images in memory between the passes "
                                 "(clean + one per probe size, per model); caching uses ~37 KB per image")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from facekd.evaluation.embed import apply_thread_budget
        from facekd.evaluation.report import markdown_table, summary_table, write_report
        from facekd.evaluation.runner import EvalOptions, ModelSpec, ValSpec, evaluate_models, save_results

        threads = apply_thread_budget(args.threads, args.jobs)
        print(f"facekd eval: {threads} compute thread(s)", file=sys.stderr)

        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        options = EvalOptions(
            batch_size=args.batch_size, device=device, amp=args.amp, nrof_folds=args.folds,
            far_targets=args.far, resolution_sizes=args.sizes, resolution_side=args.degrade_side,
            hardest=args.hardest, latency_runs=args.latency_runs, latency_batch_size=args.latency_batch_size,
            embedding_size=args.embedding_size, num_workers=args.workers, progress=not args.no_progress)
        val_options = {"cache": not args.no_cache, **parse_options(args.val_option)}
        models = [ModelSpec.parse(text) for text in args.model]
        val_sets = [ValSpec.parse(text, val_options) for text in args.val]
        log = lambda line: print(line, file=sys.stderr)  # noqa: E731  (stdout: the tables)
        results = evaluate_models(models, val_sets, options, log=log)
        path = save_results(results, args.out)
        for val_set in results["val_sets"]:
            print(f"\n{val_set['name']} ({val_set['num_pairs']} pairs)\n")
            print(markdown_table(*summary_table(results, val_set["name"])))
        print(f"\nresults: {path}")
        if args.report:
            files = write_report(results, args.report)
            print(f"report: {files.html}")
        return 0
