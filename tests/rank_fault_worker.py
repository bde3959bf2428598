"""One rank of the multi-node fault tests (tests/test_multinode_faults.py), started without
torchrun (whose agent would stop the surviving ranks itself, hiding what they do alone).

Usage::

    RANK=r WORLD_SIZE=w MASTER_ADDR=... MASTER_PORT=... python tests/rank_fault_worker.py \
        FAULT train-teacher --config ... --set key=value ...

Runs ``facekd.cli.main`` on the rest of the command line.  ``FAULT`` is ``none``, or
``kill:N`` / ``stop:N``: rank 1 sends itself SIGKILL (dies, nothing cleaned up) or SIGSTOP
(hangs, its connections stay open) at the start of optimiser step ``N``.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any, Dict

import torch

torch.set_num_threads(1)


def main(argv) -> int:
    fault, _, step = argv[0].partition(":")
    signals = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
    from facekd import cli
    from facekd.training import launch
    from facekd.training.hooks import Hook

    class DieMidRun(Hook):
        def before_step(self, trainer: Any, batch: Dict[str, Any]) -> None:
            if fault in signals and trainer.dist.rank == 1 and trainer.step + 1 == int(step):
                os.kill(os.getpid(), signals[fault])

    # launch.train() calls launch.run_training (looked up at call time): add the hook there.
    launch.run_training = functools.partial(launch.run_training, hooks=[DieMidRun()])
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
