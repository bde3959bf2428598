"""Run a function on ``W`` gloo ranks of this machine and return rank 0's result: the harness of
``bench/sharded_pfc.py`` and ``bench/ddp_options.py``.

The ranks are forked from the calling process (they inherit its imported modules: starting
fresh interpreters costs ~5 s of CPU each on a small machine), use one intra-op thread each and
meet through a file store in a temporary folder.
"""
import datetime
import os
import tempfile
from typing import Any, Callable

import torch
import torch.distributed as dist


def _rank(rank: int, fn: Callable[..., Any], world: int, folder: str, args: tuple, minutes: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=minutes))
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            torch.save(result, os.path.join(folder, "rank0.pt"))
    finally:
        dist.destroy_process_group()


def on_gloo_ranks(fn: Callable[..., Any], world: int, *args: Any, minutes: float = 10.0) -> Any:
    """``fn(rank, world, *args)`` on each of ``world`` forked gloo ranks; rank 0's return value.

    ``minutes``: how long a collective waits for the other ranks before failing.
    """
    with tempfile.TemporaryDirectory() as folder:
        torch.multiprocessing.start_processes(_rank, args=(fn, world, folder, args, minutes), nprocs=world,
                                              start_method="fork")
        return torch.load(os.path.join(folder, "rank0.pt"), weights_only=False)
