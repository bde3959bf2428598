#!/usr/bin/env python3
"""DDP's options against today's step on W gloo ranks on the CPU (issue 32 item 4): bucket size,
static graph, fp16 / bf16 gradient compression and gradient accumulation, as ratios measured in
one run.

    python3 bench/ddp_options.py                          # IResNet-18 at 32 px, 2 ranks x 8x4 faces
    python3 bench/ddp_options.py --model iresnet50 --rounds 5 --out ddp.json

Each rank builds one real :class:`~facekd.training.Trainer` (the teacher task on synthetic faces,
ArcFace head, SGD) per option, with the option set through the config (``--set`` syntax, see
:data:`OPTIONS`), and times ``trainer.train_step`` on the same ``--batches`` batches, already
loaded.  ``--rounds`` rounds, each timing every option in turn (the order rotating, so a slow
spell of a busy machine hits every option alike); a round's time per batch is its wall time over
``--batches`` (with accumulation, ``k`` batches make one optimiser step).  Reported per option:
the median seconds per batch on rank 0 and the median of the per-round ratios to ``today``
(plain DDP: 25 MiB buckets, no hook, one batch per optimiser step), and the gradient bytes each
rank all-reduces per batch.  ``no all-reduce`` (a communication hook that reduces nothing) is the
step without communication: ``today`` minus it is what the all-reduce costs.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gloo_ranks import on_gloo_ranks  # noqa: E402
from facekd.config import load_config  # noqa: E402
from facekd.training import TeacherTask, Trainer  # noqa: E402
from facekd.training.distributed import DistInfo  # noqa: E402

#: option name -> config assignments (today's step: none)
OPTIONS: Dict[str, List[str]] = {
    "today": [],
    "bucket 1 MiB": ["ddp.bucket_cap_mb=1"],
    "bucket 100 MiB": ["ddp.bucket_cap_mb=100"],
    "static graph": ["ddp.static_graph=true"],
    "fp16 compression": ["ddp.grad_compression=fp16"],
    "bf16 compression": ["ddp.grad_compression=bf16"],
    "accumulate 2": ["train.grad_accum_steps=2"],
    "accumulate 4": ["train.grad_accum_steps=4"],
    "no all-reduce": [],       # a hook that skips the all-reduce: the step without communication (a bound)
}


def skip_allreduce(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook that reduces nothing (each rank keeps its own gradients)."""
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future


def settings(args: argparse.Namespace, sets: List[str]) -> List[str]:
    """The run's config assignments: the model, the batch, the option."""
    model = f"{{name: {args.model}, embedding_size: 512, input_size: {args.input_size}}}"
    return [f"model={model}", f"data.input_size={args.input_size}", "data.num_identities=64",
            "data.images_per_identity=16", f"train.identities_per_batch={args.p}",
            f"train.images_per_identity={args.k}", "train.progress=false", "train.log_every_steps=1000",
            "train.checkpoint_every_steps=0",
            "losses=[{name: arcface, scale: 32.0, margin: 0.3}]", "output_dir=/tmp/facekd_bench_ddp_options",
            *sets]


def gradient_bytes(trainer: Trainer) -> int:
    """Bytes of the gradients DDP all-reduces per optimiser step on each rank (compressed: half)."""
    if trainer.model._comm_hooks and trainer.model._comm_hooks[0][0] is skip_allreduce:
        return 0
    elements = sum(p.numel() for p in trainer.module.parameters() if p.requires_grad)
    half = trainer.cfg.ddp.grad_compression in ("fp16", "bf16")
    return elements * (2 if half else 4)


def worker(rank: int, world: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Build every option's trainer, time them round by round; rank 0's times."""
    info = DistInfo(rank, world, rank, torch.device("cpu"), "gloo")
    trainers = {}
    for name, sets in OPTIONS.items():
        cfg = load_config(None, settings(args, sets))
        trainer = Trainer(cfg, TeacherTask(cfg), dist=info)
        trainer.build()
        if name == "no all-reduce":
            trainer.model.register_comm_hook(None, skip_allreduce)
        trainers[name] = trainer
    batches = []
    for batch in trainers["today"].loader(0):
        batches.append(batch)
        if len(batches) == args.batches:
            break
    names = list(OPTIONS)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_ in range(args.rounds + 1):               # round 0 warms up every option
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            trainer = trainers[name]
            dist.barrier()
            start = time.perf_counter()
            for batch in batches:
                trainer.train_step(batch)
            trainer.check_finite()
            dist.barrier()
            if round_:
                times[name].append((time.perf_counter() - start) / len(batches))
    return {"times": times, "bytes": {name: gradient_bytes(t) // t.accumulation.steps for name, t in trainers.items()},
            "steps": {name: t.step for name, t in trainers.items()}}


def summarise(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per option: median seconds per batch, median ratio to today's in the same round, bytes."""
    times = result["times"]
    rows = []
    for name, seconds in times.items():
        ratios = [s / t for s, t in zip(seconds, times["today"])]
        rows.append({"option": name, "s_per_batch": statistics.median(seconds),
                     "x_today": statistics.median(ratios), "min_x": min(ratios), "max_x": max(ratios),
                     "allreduce_mib_per_batch": result["bytes"][name] / 2 ** 20})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="iresnet18")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--p", type=int, default=8, help="identities per batch (P) on each rank")
    parser.add_argument("--k", type=int, default=4, help="images per identity (K)")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8, help="batches per round (a multiple of 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args(argv)
    if args.batches % 4:
        parser.error("--batches must be a multiple of 4 (the largest accumulation)")
    result = on_gloo_ranks(worker, args.world, args, minutes=30)
    rows = summarise(result)
    print(f"{args.model} {args.input_size} px, {args.world} gloo ranks x {args.p}x{args.k} faces, one thread each, "
          f"{args.batches} batches x {args.rounds} rounds (interleaved), rank 0")
    print(f"{'option':<18} {'s / batch':>10} {'x today':>8} {'(min-max)':>13} {'all-reduce MiB/batch':>21}")
    for row in rows:
        print(f"{row['option']:<18} {row['s_per_batch']:10.3f} {row['x_today']:8.2f} "
              f"{row['min_x']:6.2f}-{row['max_x']:<6.2f} {row['allreduce_mib_per_batch']:21.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
