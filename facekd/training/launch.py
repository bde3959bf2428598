"""What ``facekd train-teacher`` / ``train-student`` (and ``train_face_student.py``) share:
their options, config loading, the teacher-first rule, :func:`run_training` (a task by name,
trained by the :class:`~facekd.training.trainer.Trainer`) and the final report.

Options::

    --config PATH          experiment YAML (default: the command's synthetic config)
    --set KEY=VALUE        override one config key (repeatable), e.g. --set train.epochs=2
    --resume [PATH]        continue from PATH, or from <output_dir>/last.pt when no PATH is given
                           (a fresh start if that does not exist yet)
    --output-dir DIR       overrides output_dir
    --device DEV           cpu | cuda (default: cuda when available)

Under ``torchrun --nproc_per_node N`` the same command trains with DDP.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional

from facekd.errors import ConfigError, DataError
from facekd.training.resume import AUTO_RESUME, resolve_resume  # noqa: F401  (resolve_resume: re-exported)

if TYPE_CHECKING:  # annotations only
    from facekd.training.hooks import Hook

LOG = logging.getLogger("facekd.train")


def add_training_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    """Add the options every training command takes."""
    parser.add_argument("--config", default=default_config,
                        help=f"experiment YAML, or a name under configs/ or configs/experiments/ "
                             f"(default: configs/{default_config})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--resume", nargs="?", const=AUTO_RESUME, default=None, metavar="PATH",
                        help="continue a run from PATH (default: <output_dir>/last.pt if it exists)")
    parser.add_argument("--output-dir", default=None, help="run directory (overrides output_dir)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def load_run_config(args: argparse.Namespace, task_name: Optional[str] = None) -> Any:
    """The ``ExperimentConfig`` of ``--config`` + ``--set`` + ``--output-dir``, every value checked
    (with ``task_name``, also against the registries: :mod:`facekd.training.preflight`)."""
    from facekd.config import Origins, load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    origins = Origins()
    cfg = load_config(args.config, overrides, origins)
    if task_name is not None:
        from facekd.training.preflight import check_run

        check_run(cfg, task_name, origins)
    return cfg


def setup_logging(is_main: bool) -> None:
    """INFO on rank 0, WARNING elsewhere (unless logging was configured already)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def ensure_teacher(cfg: Any, dist: Any) -> None:
    """Train the teacher first when ``teacher.checkpoint`` is missing and ``teacher.train_config`` is set."""
    teacher = cfg.teacher
    if teacher is None or not teacher.checkpoint or os.path.exists(teacher.checkpoint):
        return
    if not teacher.train_config:
        raise DataError(teacher.checkpoint, "teacher checkpoint not found (train one with `facekd "
                                            "train-teacher`, or set teacher.train_config to train it first)")
    from facekd.config import load_config

    run_dir = str(Path(teacher.checkpoint).parent)
    teacher_cfg = load_config(teacher.train_config, [f"output_dir={run_dir}"])
    if dist.is_main:
        LOG.info("teacher checkpoint %s not found: training the teacher first (%s -> %s)",
                 teacher.checkpoint, teacher.train_config, run_dir)
    summary = train(teacher_cfg, "teacher", resume=AUTO_RESUME, dist=dist)
    if dist.is_main:
        print(format_summary("teacher", summary))
    if not os.path.exists(teacher.checkpoint):
        raise ConfigError(f"teacher.checkpoint {teacher.checkpoint} is still missing after training "
                          f"{teacher.train_config} into {run_dir} (it writes best.pt and last.pt there)")


def run_training(cfg: Any, task_name: str, resume: Optional[str] = None, hooks: Iterable["Hook"] = (),
                 dist: Any = None) -> Dict[str, Any]:
    """Build the task ``task_name`` (``teacher`` / ``student``, :data:`~facekd.training.tasks.TASKS`)
    and train it (``hooks``: extra :class:`~facekd.training.hooks.Hook` objects); return the summary.

    The config is checked against the registries first (:func:`facekd.training.preflight.check_run`);
    ``resume`` is what ``--resume`` takes (None, :data:`AUTO_RESUME` or a path), and in a process
    group every rank must call this: the ranks agree on the checkpoint before any of them loads it
    (:func:`facekd.training.resume.resolve_resume`).
    """
    from facekd.training.preflight import check_run
    from facekd.training.tasks import TASKS
    from facekd.training.trainer import Trainer

    check_run(cfg, task_name)
    if dist is None:
        from facekd.training.distributed import init_distributed

        dist = init_distributed()
    resume = resolve_resume(resume, cfg.output_dir, dist)
    task = TASKS.build(task_name, cfg=cfg)
    return Trainer(cfg, task, dist=dist, hooks=list(hooks)).fit(resume)


def train(cfg: Any, task_name: str, resume: Optional[str] = None, dist: Any = None) -> Dict[str, Any]:
    """Train task ``task_name`` with ``cfg`` (``resume`` as ``--resume`` takes it); return the summary."""
    return run_training(cfg, task_name, resume=resume, dist=dist)


def format_summary(task_name: str, summary: Dict[str, Any]) -> str:
    """A few lines for the terminal: where the files are and the verification result."""
    out = Path(summary["output_dir"])
    lines = [f"{task_name}: {summary['steps']} steps, {summary['epochs']} epochs in {summary['seconds']:.1f} s, "
             f"final loss {summary['final_loss']:.4f}",
             f"  checkpoint: {summary['best']} (last: {summary['last']})",
             f"  metrics:    {out / 'metrics.jsonl'}",
             f"  result:     {out / 'verification.json'}"]
    for name, result in summary.get("verification", {}).items():
        lines.append(f"  verification {name}: accuracy {100 * result['accuracy_mean']:.2f}% "
                     f"± {100 * result['accuracy_std']:.2f}%, AUC {result['auc']:.4f}")
    best = summary.get("best_metric") or {}
    if best.get("name"):
        lines.append(f"  best {best['name']}: {100 * best['value']:.2f}% at epoch {best['epoch']} "
                     f"(step {best['step']})")
    return "\n".join(lines)


def run_command(args: argparse.Namespace, task_name: str) -> int:
    """Body of the training commands: config, (teacher first), train, report; returns the exit code."""
    from facekd.training.distributed import barrier, cleanup_distributed, init_distributed, lost_ranks
    from facekd.training.memory import keep_freed_memory

    keep_freed_memory()                      # no page faults for the same activations every step
    cfg = load_run_config(args, task_name)
    dist = init_distributed(args.device)
    setup_logging(dist.is_main)
    try:
        if task_name == "student":
            ensure_teacher(cfg, dist)
        summary = train(cfg, task_name, args.resume, dist)
        if dist.is_main:
            print(format_summary(task_name, summary))
            LOG.debug("summary: %s", json.dumps(summary, default=str))
        barrier(dist)       # no rank closes its connections while another may still be using them
    except Exception as error:
        lost = lost_ranks(error, dist)       # another rank died: one clear line, not a backend trace
        if lost is None:
            raise
        raise lost from error
    finally:
        cleanup_distributed()
    return 0
