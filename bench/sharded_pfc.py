#!/usr/bin/env python3
"""The PartialFC head replicated under DDP (today's single-process head, every rank all C
centres, the dense C x D gradient all-reduced) against the sharded head (C / W per rank,
outside DDP): seconds per step and the head's memory per rank, on W gloo ranks on the CPU.

    python3 bench/sharded_pfc.py                       # C = 100k, D = 512, 2 ranks, rates 1.0 and 0.1
    python3 bench/sharded_pfc.py --classes 200000 --world 2 --steps 4

Each rank trains a linear "backbone" (D x D, in DDP) on its own batch of ``--batch`` random
inputs, so the head dominates the step; SGD with momentum, one thread per rank.  Per layout and
sample rate: the median wall seconds of ``--steps`` timed steps (after one warm-up) on rank 0,
and the head's bytes on rank 0 (centres, their gradient and momentum: what sharding divides by W).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gloo_ranks import on_gloo_ranks  # noqa: E402
from facekd.losses import LOSSES, LossInputs  # noqa: E402
from facekd.training.distributed import DistInfo  # noqa: E402
from facekd.training.sharding import ShardedParameters  # noqa: E402


class Net(nn.Module):
    def __init__(self, head: nn.Module, width: int) -> None:
        super().__init__()
        self.backbone = nn.Linear(width, width)
        self.head = head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(LossInputs(student_embedding=self.backbone(x), labels=labels))


def run_layout(rank: int, world: int, args: argparse.Namespace, sharded: bool, rate: float) -> dict:
    torch.manual_seed(0)
    head = LOSSES.build("partial_fc", num_classes=args.classes, embedding_size=args.width, sample_rate=rate,
                        rank=rank if sharded else 0, world_size=world if sharded else 1)
    net = Net(head, args.width)
    shards = ShardedParameters(net, DistInfo(rank, world, rank, torch.device("cpu"), "gloo"))
    shards.exclude_from_ddp(net)
    model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(rank)
    times = []
    for step in range(args.steps + 1):
        x = torch.randn(args.batch, args.width, generator=generator)
        labels = torch.randint(0, args.classes, (args.batch,), generator=generator)
        dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        model(x, labels).backward()
        optimizer.step()
        dist.barrier()
        if step:
            times.append(time.perf_counter() - start)
    weight = head.weight
    head_bytes = weight.numel() * weight.element_size() * 3          # weight, gradient, momentum
    return {"seconds": statistics.median(times), "head_bytes": head_bytes, "rows": weight.shape[0]}


def worker(rank: int, world: int, args: argparse.Namespace) -> list:
    """Every layout and rate on this rank (rank 0's rows are reported)."""
    rows = []
    for rate in args.rates:
        for sharded in (False, True):
            result = run_layout(rank, world, args, sharded, rate)
            rows.append({"layout": "sharded" if sharded else "replicated", "rate": rate, **result})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--width", type=int, default=512, help="embedding size D")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="rows per rank")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    args = parser.parse_args(argv)
    rows = on_gloo_ranks(worker, args.world, args)
    print(f"C = {args.classes}, D = {args.width}, {args.world} gloo ranks x {args.batch} rows, "
          f"median of {args.steps} steps, rank 0")
    print(f"{'rate':>5} {'layout':<11} {'centres/rank':>12} {'head MiB/rank':>14} {'s/step':>8} {'x replicated':>13}")
    base = {}
    for row in rows:
        base.setdefault(row["rate"], row["seconds"])
        print(f"{row['rate']:5.2f} {row['layout']:<11} {row['rows']:12d} {row['head_bytes'] / 2**20:14.1f} "
              f"{row['seconds']:8.3f} {row['seconds'] / base[row['rate']]:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
