"""The trainer's contract with its tasks and hooks: every member a task owes is declared on
:class:`facekd.training.Task`, and hook names are checked against ``HOOK_POINTS``."""
from __future__ import annotations

import inspect

import pytest

from facekd.config import ExperimentConfig
from facekd.training import HOOK_POINTS, Hook, StudentTask, Task, TeacherTask, Trainer
from facekd.training.distributed import DistInfo


def test_an_incomplete_task_cannot_be_created():
    class OnlyALoss(Task):
        def compute_loss(self, trainer, batch):
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract"):
        OnlyALoss()
    for task in (TeacherTask, StudentTask):
        assert not inspect.isabstract(task), task.__abstractmethods__


def test_the_trainer_uses_only_what_the_task_contract_declares():
    """Every ``self.task.<member>`` in trainer.py is a member of :class:`Task` (or a hook point)."""
    import re

    from facekd.training import trainer

    used = set(re.findall(r"self\.task\.(\w+)", inspect.getsource(trainer)))
    declared = {name for name in dir(Task) if not name.startswith("_")} | set(Task.__annotations__)
    assert used and used <= declared, sorted(used - declared)


def test_hook_names_are_checked_against_the_hook_points():
    class Misspelt(Hook):
        def on_epoch_ends(self, trainer, epoch):    # would never be called
            pass

    cfg = ExperimentConfig()
    with pytest.raises(ValueError, match=r"\['on_epoch_ends'\] named like hook points"):
        Trainer(cfg, TeacherTask(cfg), dist=DistInfo(), hooks=[Misspelt()])
    trainer = Trainer(cfg, TeacherTask(cfg), dist=DistInfo(), hooks=[Hook()])
    with pytest.raises(ValueError, match="'on_train_begin' is not a hook point"):
        trainer.call_hook("on_train_begin")
    assert set(HOOK_POINTS) <= {name for name in dir(Hook) if not name.startswith("_")}
