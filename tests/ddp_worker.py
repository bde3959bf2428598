"""One rank of the two-process DDP test (tests/test_distributed.py); run by ``torch.distributed.run``.

Usage::

    python -m torch.distributed.run --nproc_per_node 2 ... tests/ddp_worker.py DUMP_DIR \
        train-teacher --config ... --set key=value ...

Everything after ``DUMP_DIR`` is a ``facekd`` command line, run through the real
``facekd.cli.main`` (option parsing, ``--set``, ``init_distributed``, ``run_training``,
``cleanup_distributed``).  The only addition is a :class:`Recorder` hook, passed to the
trainer through ``run_training(hooks=...)``; it writes ``DUMP_DIR/rank<r>.pt`` with this
rank's weights at ``on_train_start`` (after DDP's initial broadcast) and ``on_train_end``,
its gradients after the last step, the samples of every batch it trained on, and the
best-verification record every rank ends with.
"""
from __future__ import annotations

import faulthandler
import functools
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List

import torch

torch.set_num_threads(1)
faulthandler.register(signal.SIGUSR1, all_threads=True)    # run_ddp asks for the stacks of a run that hangs


def _clone(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def main(argv: List[str]) -> int:
    dump_dir = Path(argv[0])
    from facekd import cli
    from facekd.training import launch
    from facekd.training.hooks import Hook

    class Recorder(Hook):
        def __init__(self) -> None:
            self.initial: Dict[str, torch.Tensor] = {}
            self.batches: List[List[int]] = []
            self.labels: List[List[int]] = []
            self.losses: List[float] = []
            self.grads: Dict[str, torch.Tensor] = {}

        def on_train_start(self, trainer: Any) -> None:
            self.initial = _clone(trainer.module.state_dict())

        def before_step(self, trainer: Any, batch: Dict[str, Any]) -> None:
            self.batches.append([int(i) for i in batch["index"]])
            self.labels.append([int(i) for i in batch["label"]])

        def after_step(self, trainer: Any, batch: Dict[str, Any], loss: torch.Tensor, terms: Any) -> None:
            self.losses.append(float(loss))
            self.grads = {n: p.grad.detach().cpu().clone()
                          for n, p in trainer.module.named_parameters() if p.grad is not None}

        def on_train_end(self, trainer: Any) -> None:
            module = trainer.module
            torch.save({
                "rank": trainer.dist.rank, "world_size": trainer.dist.world_size,
                "backend": trainer.dist.backend,
                "ddp": isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel),
                "initial": self.initial, "final": _clone(module.state_dict()),
                "parameter_names": [n for n, _ in module.named_parameters()],
                "grads": self.grads, "batches": self.batches, "labels": self.labels, "losses": self.losses,
                "train_labels": [int(x) for x in trainer.task.train_labels],
                "sampler": {"P": trainer.sampler.P, "K": trainer.sampler.K, "seed": trainer.sampler.seed,
                            "len": len(trainer.sampler)},
                "step": trainer.step, "best": dict(trainer.best),
            }, dump_dir / f"rank{trainer.dist.rank}.pt")

    # launch.train() calls launch.run_training (looked up at call time): add the hook there.
    launch.run_training = functools.partial(launch.run_training, hooks=[Recorder()])
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
