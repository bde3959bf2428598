"""The training loop shared by every task (TFace torchkit style).

A :class:`Trainer` owns what every run needs — the P x K batch sampler and data loader,
optimiser and LR schedule, autocast, gradient clipping, the NaN guard, DDP, checkpoints,
metrics and periodic verification — and calls named hook points of a *task*
(:mod:`facekd.training.tasks`) and of any extra :class:`Hook` objects:

``on_train_start(trainer)`` -> per step ``before_step(trainer, batch)``,
``task.compute_loss(trainer, batch) -> (loss, terms)``, ``after_step(trainer, batch, loss, terms)``
-> ``on_epoch_end(trainer, epoch)`` -> ``on_validate(trainer, results)`` -> ``on_train_end(trainer)``.

Files in ``output_dir``: ``last.pt`` (every ``train.checkpoint_every_steps`` steps and at each
epoch end), ``step_<N>.pt`` (the newest ``train.keep_step_checkpoints``), ``best.pt`` (best
verification accuracy on ``val.select_best_on``), ``metrics.jsonl`` (+ TensorBoard events if
installed), ``verification.json`` (the final verification result), ``config.yaml``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import yaml

from facekd.config import ExperimentConfig, to_dict
from facekd.errors import CheckpointError, ConfigError, TrainingError
from facekd.training.checkpoint import (CHECKPOINT_FORMAT, atomic_copy, atomic_save, load_checkpoint,
                                        rng_state, seed_everything, set_rng_state)
from facekd.training.distributed import DistInfo, all_finite, barrier, broadcast_object
from facekd.training.metrics import MetricsLogger
from facekd.training.optim import build_optimizer, build_scheduler

LOG = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
HOOK_POINTS = ("on_train_start", "before_step", "after_step", "on_epoch_end", "on_validate",
               "on_train_end")


def resolve_amp(amp: str, device: torch.device) -> str:
    """The autocast mode usable on ``device``: fp16 needs CUDA, bf16 CUDA with bf16 or the CPU."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"train.amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        LOG.warning("train.amp=fp16 needs a GPU; training in float32 on %s", device)
        return "none"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        LOG.warning("this GPU has no bf16; training in float32")
        return "none"
    return amp


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` (``none``: a null context)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Hook:
    """Base of objects called at the trainer's hook points (every method is optional)."""

    def on_train_start(self, trainer: "Trainer") -> None:
        """After everything is built (and a checkpoint restored), before the first step."""

    def before_step(self, trainer: "Trainer", batch: Dict[str, Any]) -> None:
        """Before the forward pass of a step."""

    def after_step(self, trainer: "Trainer", batch: Dict[str, Any], loss: torch.Tensor,
                   terms: Dict[str, torch.Tensor]) -> None:
        """After the optimiser step (``trainer.step`` already counts it)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        """After the last step of ``epoch``, before verification and the epoch checkpoint."""

    def on_validate(self, trainer: "Trainer", results: Dict[str, Any]) -> None:
        """After verification; ``results`` maps val-set name -> ``VerificationResult``."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After the last epoch (also on rank != 0)."""


class Trainer:
    """Runs a task's training loop.

    Args:
        cfg: the experiment config.
        task: a :class:`facekd.training.tasks.Task` (built here with ``task.build(trainer)``).
        dist: this process's place in a ``torchrun`` group (default: a single process on the
            best device).
        hooks: extra :class:`Hook` objects called after the task at each hook point.
        output_dir: overrides ``cfg.output_dir``.
    """

    def __init__(self, cfg: ExperimentConfig, task: Any, dist: Optional[DistInfo] = None,
                 hooks: Sequence[Hook] = (), output_dir: Optional[str] = None) -> None:
        from facekd.training.distributed import init_distributed

        self.cfg = cfg
        self.task = task
        self.dist = dist or init_distributed()
        self.device = self.dist.device
        self.hooks: List[Hook] = [task, *hooks]
        self.output_dir = Path(output_dir or cfg.output_dir)
        self.amp = resolve_amp(cfg.train.amp, self.device)
        self.epoch = 0              # the epoch being run
        self.step = 0               # optimiser steps taken
        self.batches_done = 0       # batches of ``epoch`` already trained on
        self.best: Dict[str, Any] = {"name": None, "value": -math.inf, "epoch": None, "step": None}
        self.last_metrics: Dict[str, Any] = {}
        self.verification: Dict[str, Any] = {}
        self._built = False
        self._best_pending = False
        self._pair_sets: Optional[list] = None

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        """Build the task, sampler, loader, optimiser, schedule and (if distributed) DDP."""
        if self._built:
            return
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.task.build(self)
        module = self.task.module.to(self.device)
        if cfg.train.channels_last:
            module.to(memory_format=torch.channels_last)
        self.module = module
        self.model = module
        if self.dist.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.sampler = self._build_sampler()
        self.steps_per_epoch = len(self.sampler)
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"one P x K batch needs {cfg.train.identities_per_batch} identities with "
                              f"{cfg.train.images_per_identity} images; the training data has too few")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.metrics = MetricsLogger(self.output_dir, enabled=self.dist.is_main)
        self._built = True

    def _build_sampler(self) -> Any:
        from facekd.data import PKBatchSampler

        return PKBatchSampler(self.task.train_labels, self.cfg.train.identities_per_batch,
                              self.cfg.train.images_per_identity, seed=self.cfg.seed,
                              rank=self.dist.rank, world_size=self.dist.world_size)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        self.sampler.set_epoch(epoch)   # keeps a restored position inside the same epoch
        self.task.set_epoch(epoch)
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            self.task.train_set, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch))  # keeps the global RNG untouched

    # ------------------------------------------------------------------ hooks
    def call_hook(self, name: str, *args: Any) -> None:
        """Call hook point ``name`` on the task and every extra hook, in order."""
        for hook in self.hooks:
            method = getattr(hook, name, None)
            if method is not None:
                method(self, *args)

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: Optional[str] = None) -> Dict[str, Any]:
        """Train ``cfg.train.epochs`` epochs (continuing from checkpoint ``resume``); return a summary.

        Raises:
            TrainingError: the loss became NaN or infinite (the last good checkpoint is kept).
        """
        self.build()
        if resume:
            self.load(resume)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
            self.metrics.truncate_after(self.step)
        self.call_hook("on_train_start")
        start = time.perf_counter()
        cfg = self.cfg.train
        last_loss = math.nan
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            self.module.train()
            loader = self._loader(epoch)
            remaining = self.steps_per_epoch - self.batches_done
            bar = self._progress(remaining, epoch)
            for batch in loader:
                if self.batches_done >= self.steps_per_epoch:
                    break
                loss, terms = self.train_step(batch)
                last_loss = float(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", refresh=False)
            bar.close()
            self.call_hook("on_epoch_end", epoch)
            self.epoch, self.batches_done = epoch + 1, 0
            if self._should_validate(epoch):
                self.validate()
            self.save_checkpoint()
        seconds = time.perf_counter() - start
        self.finish()
        self.call_hook("on_train_end")
        self.metrics.close()
        return {"output_dir": str(self.output_dir), "last": str(self.output_dir / "last.pt"),
                "best": str(self.output_dir / "best.pt"), "steps": self.step, "epochs": self.epoch,
                "final_loss": last_loss, "seconds": round(seconds, 2), "best_metric": dict(self.best),
                "verification": self.verification}

    def _progress(self, total: int, epoch: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{self.cfg.name} epoch {epoch + 1}/{self.cfg.train.epochs}",
                    unit="step", leave=False, dynamic_ncols=True,
                    disable=not (self.cfg.train.progress and self.dist.is_main))

    def train_step(self, batch: Dict[str, Any]) -> tuple:
        """One optimiser step on ``batch``; returns ``(loss, terms)``."""
        cfg = self.cfg.train
        self.call_hook("before_step", batch)
        with autocast_context(self.device, self.amp):
            loss, terms = self.task.compute_loss(self, batch)
        loss = loss.float()
        if not all_finite(loss, self.dist):
            self._stop_on_bad_loss(loss, terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]], cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        loss = loss.detach()
        self.step += 1
        self.batches_done += 1
        self.call_hook("after_step", batch, loss, terms)
        if self.step % max(1, cfg.log_every_steps) == 0 or self.batches_done == self.steps_per_epoch:
            values = {"loss": float(loss), "lr": lr, **{k: float(v) for k, v in terms.items()}}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            self.last_metrics = values
            self.metrics.log("train", self.step, self.epoch, values)
        if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0 \
                and self.batches_done < self.steps_per_epoch:   # the epoch end writes its own
            self.save_checkpoint(step_file=True)
        return loss, terms

    def _stop_on_bad_loss(self, loss: torch.Tensor, terms: Dict[str, Any]) -> None:
        last = self.output_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        # terms: WeightedLoss gives plain floats; float() also takes 0-d tensors
        values = {"loss": float(loss.detach()),
                  **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in terms.items()}}
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "loss")
        self.metrics.log("error", self.step, self.epoch, values)
        self.metrics.close()
        raise TrainingError(
            f"loss became {values['loss']} at epoch {self.epoch + 1}, step {self.step + 1} "
            f"(loss terms: {detail or 'n/a'}); training stopped without saving — {kept}. "
            f"Lower optim.lr, enable train.grad_clip, or check the data.")

    # ------------------------------------------------------------------ verification
    def _should_validate(self, epoch: int) -> bool:
        every = self.cfg.val.every_epochs
        if not self.cfg.val.sets or every <= 0:
            return False
        return (epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.epochs

    def pair_sets(self) -> list:
        """The configured verification sets (built once)."""
        if self._pair_sets is None:
            self._pair_sets = [_build_pair_set(s) for s in self.cfg.val.sets]
        return self._pair_sets

    def validate(self) -> Dict[str, Any]:
        """Verify on every configured set (rank 0), log, update ``best.pt``; return the results."""
        results: Dict[str, Any] = {}
        if self.dist.is_main:
            results = self.task.verify(self, self.pair_sets())
            summary = {name: r.accuracy_mean for name, r in results.items()}
            self.metrics.log("val", self.step, self.epoch, {
                **{f"{n}/accuracy": r.accuracy_mean for n, r in results.items()},
                **{f"{n}/accuracy_std": r.accuracy_std for n, r in results.items()}})
            LOG.info("epoch %d verification: %s", self.epoch,
                     ", ".join(f"{n} {100 * a:.2f}%" for n, a in summary.items()))
            self.verification = {n: {"accuracy_mean": r.accuracy_mean, "accuracy_std": r.accuracy_std,
                                     "threshold_mean": r.threshold_mean, "auc": r.auc, "eer": r.eer,
                                     "epoch": self.epoch, "step": self.step} for n, r in results.items()}
            key = self.cfg.val.select_best_on or next(iter(results))
            if key not in results:
                raise ConfigError(f"val.select_best_on={key!r} is not a val set; sets: {list(results)}")
            if results[key].accuracy_mean > self.best["value"]:
                self.best = {"name": key, "value": results[key].accuracy_mean, "epoch": self.epoch,
                             "step": self.step}
                self._best_pending = True
        self.best = broadcast_object(self.best, self.dist)
        self.call_hook("on_validate", results)
        self.module.train()
        return results

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> Dict[str, Any]:
        """Everything a checkpoint holds (see :mod:`facekd.training.checkpoint`)."""
        state = {"format": CHECKPOINT_FORMAT, "task": self.task.name, **self.task.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(),
                 "sampler": {**self.sampler.state_dict(position=self.batches_done), "epoch": self.epoch,
                             "batches_done": self.batches_done},
                 "epoch": self.epoch, "step": self.step, "rng": rng_state(), "config": to_dict(self.cfg),
                 "metrics": dict(self.last_metrics), "best": dict(self.best),
                 "verification": dict(self.verification)}
        return state

    def save_checkpoint(self, step_file: bool = False) -> Optional[Path]:
        """Write ``last.pt`` atomically (rank 0); also ``step_<N>.pt`` and ``best.pt`` when due."""
        path = None
        if self.dist.is_main:
            path = atomic_save(self.checkpoint_state(), self.output_dir / "last.pt")
            if step_file and self.cfg.train.keep_step_checkpoints > 0:
                atomic_copy(path, self.output_dir / f"step_{self.step:07d}.pt")
                for old in sorted(self.output_dir.glob("step_*.pt"))[:-self.cfg.train.keep_step_checkpoints]:
                    old.unlink()
            if self._best_pending:
                atomic_copy(path, self.output_dir / "best.pt")
                self._best_pending = False
        barrier(self.dist)
        return path

    def load(self, path: str) -> None:
        """Restore model, optimiser, schedule, sampler position, RNG and counters from ``path``."""
        self.build()
        state = load_checkpoint(path)
        for key in ("state_dict", "optimizer", "scheduler", "sampler", "rng", "step", "epoch"):
            if key not in state:
                raise CheckpointError(f"{path}: not a facekd training checkpoint (no {key!r}); "
                                      "use it as a teacher or with --set to start a new run")
        if state.get("task") not in (None, self.task.name):
            raise CheckpointError(f"{path}: a {state['task']!r} checkpoint cannot resume a "
                                  f"{self.task.name!r} run")
        self.task.load_state_dict(state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        sampler = state["sampler"]
        self.epoch, self.batches_done = int(sampler["epoch"]), int(sampler["batches_done"])
        self.sampler.load_state_dict({**sampler, "position": self.batches_done})
        self.step = int(state["step"])
        self.best = state.get("best", self.best)
        self.last_metrics = state.get("metrics", {})
        self.verification = state.get("verification", {})
        set_rng_state(state["rng"])
        LOG.info("resumed from %s: epoch %d, step %d", path, self.epoch + 1, self.step)

    def finish(self) -> None:
        """Write ``verification.json`` and make sure ``best.pt`` exists (rank 0)."""
        if not self.dist.is_main:
            barrier(self.dist)
            return
        best = self.output_dir / "best.pt"
        if not best.exists() and (self.output_dir / "last.pt").exists():
            atomic_copy(self.output_dir / "last.pt", best)
        summary = {"name": self.cfg.name, "step": self.step, "epoch": self.epoch, "best": self.best,
                   "final": self.verification}
        tmp = self.output_dir / "verification.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(self.output_dir / "verification.json")
        barrier(self.dist)


def _build_pair_set(spec: Any) -> Any:
    # TEMPORARY shim (remove once facekd.data.build_pair_set no longer passes name= through
    # Registry.build, whose own first parameter is called ``name``)
    from facekd.data import PAIR_SOURCES, build_pair_set

    try:
        return build_pair_set(spec.name, spec.kind, spec.path, **spec.params)
    except TypeError as error:
        if "multiple values for argument 'name'" not in str(error):
            raise
        return PAIR_SOURCES.get(spec.kind)(path=spec.path, name=spec.name, **spec.params)


def run_training(cfg: ExperimentConfig, task_name: str, resume: Optional[str] = None,
                 hooks: Iterable[Hook] = (), dist: Optional[DistInfo] = None) -> Dict[str, Any]:
    """Build the task ``task_name`` (``teacher`` / ``student``) and train it; return the summary."""
    from facekd.training.tasks import TASKS

    task = TASKS.build(task_name, cfg=cfg)
    return Trainer(cfg, task, dist=dist, hooks=list(hooks)).fit(resume)
