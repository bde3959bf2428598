"""One rank of the multi-node fault tests (tests/test_multinode_faults.py), started without
torchrun (whose agent would stop the surviving ranks itself, hiding what they do alone).

Usage::

    RANK=r WORLD_SIZE=w MASTER_ADDR=... MASTER_PORT=... python tests/rank_fault_worker.py \
        DIE_AT_STEP train-teacher --config ... --set key=value ...

Runs ``facekd.cli.main`` on the rest of the command line; with ``DIE_AT_STEP > 0`` rank 1
kills itself (SIGKILL, nothing is cleaned up) at the start of that optimiser step.
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
    die_at = int(argv[0])
    from facekd import cli
    from facekd.training import trainer as trainer_module
    from facekd.training.hooks import Hook

    class DieMidRun(Hook):
        def before_step(self, trainer: Any, batch: Dict[str, Any]) -> None:
            if trainer.dist.rank == 1 and trainer.step + 1 == die_at:
                os.kill(os.getpid(), signal.SIGKILL)

    trainer_module.run_training = functools.partial(trainer_module.run_training, hooks=[DieMidRun()])
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
