"""Training: the :class:`Trainer` loop with named hooks, the :class:`Task` contract and the
teacher and student tasks, the teacher-embedding cache, DDP helpers, atomic checkpoints and
metrics logs.

Typical use (what ``facekd train-teacher`` / ``train-student`` do)::

    from facekd.config import load_config
    from facekd.training import run_training

    summary = run_training(load_config("student_synthetic.yaml"), "student")

or, with more control::

    trainer = Trainer(cfg, StudentTask(cfg), hooks=[MyHook()])
    summary = trainer.fit(resume="runs/x/last.pt")
"""
from facekd.training.checkpoint import atomic_save, load_checkpoint
from facekd.training.distributed import DistInfo, cleanup_distributed, init_distributed
from facekd.training.metrics import MetricsLogger, read_metrics
from facekd.training.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from facekd.training.hooks import HOOK_POINTS, Hook
from facekd.training.launch import run_training
from facekd.training.task import StepBatch, Task
from facekd.training.tasks import TASKS, StudentTask, TeacherTask
from facekd.training.teacher_cache import STATS as CACHE_STATS
from facekd.training.teacher_cache import TeacherCache, cache_key
from facekd.training.trainer import Trainer

__all__ = ["Trainer", "Hook", "HOOK_POINTS", "run_training", "Task", "StepBatch", "TeacherTask", "StudentTask", "TASKS",
           "TeacherCache", "cache_key", "CACHE_STATS", "DistInfo", "init_distributed", "cleanup_distributed",
           "MetricsLogger", "read_metrics", "OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_scheduler",
           "atomic_save", "load_checkpoint"]
