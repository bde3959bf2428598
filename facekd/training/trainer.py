"""The training loop shared by every task (TFace torchkit style).

A :class:`Trainer` owns what every run needs — the P x K batch sampler and data loader,
optimiser and LR schedule, autocast, gradient clipping, the NaN guard, DDP, checkpoints,
metrics and periodic verification — and calls named hook points of a *task* (any
:class:`~facekd.training.task.Task`: the concrete ones are in :mod:`facekd.training.tasks`, a
layer above, which this module does not import) and of any extra :class:`Hook` objects:

``on_train_start(trainer)`` -> per step ``before_step(trainer, batch)``,
``task.compute_loss(trainer, batch) -> (loss, terms)``, ``after_step(trainer, batch, loss, terms)``
-> ``on_epoch_end(trainer, epoch)`` -> ``on_validate(trainer, results)`` -> ``on_train_end(trainer)``.

Files in ``output_dir``: ``last.pt`` (every ``train.checkpoint_every_steps`` steps and at each
epoch end), ``step_<N>.pt`` (the newest ``train.keep_step_checkpoints``), ``best.pt`` (best
verification accuracy on ``val.select_best_on``), ``metrics.jsonl`` (+ TensorBoard events if
installed), ``verification.json`` (the final verification result), ``config.yaml`` (the resolved
config, :func:`facekd.config.to_yaml`, written when the run starts).

Speed (issue 12): the step never waits for the host.  Losses stay on the device; they are
converted (and checked for NaN/inf, across ranks) only every ``train.log_every_steps``
steps, before every checkpoint and at each epoch end, so a bad loss stops the run with
:class:`~facekd.errors.TrainingError` within ``log_every_steps`` steps and before anything is
saved.  The data loader is built once and its workers stay alive across epochs (each
sample carries its epoch, see :class:`~facekd.training.data.EpochBatches`); checkpoints are
copied to host memory in the step and written by a background thread
(``train.async_checkpoint``), atomically as before.  The optimiser uses the fused (CUDA) or
foreach implementation, cuDNN autotunes on CUDA (``train.cudnn_benchmark``) and
``train.compile`` runs the backbone through ``torch.compile`` (in place; the losses stay eager).

Large runs (:mod:`facekd.training.ddp_options`): ``train.grad_accum_steps`` batches make one
optimiser step (DDP reduces once, after the last), and the ``ddp:`` section sets DDP's bucket
size, static graph and half-precision gradient compression.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from facekd.config import ExperimentConfig, to_dict, to_yaml
from facekd.errors import CheckpointError, ConfigError, TrainingError
from facekd.fileio import atomic_write_text
from facekd.training.checkpoint import (CHECKPOINT_FORMAT, atomic_copy, atomic_save, load_checkpoint,
                                        rng_state, seed_everything, set_rng_state)
from facekd.training.distributed import DistInfo, barrier, broadcast_object
from facekd.precision import autocast_context, resolve_amp
from facekd.training.checkpoint_writer import CheckpointWriter, host_copy
from facekd.training.ddp_options import Accumulation, wrap_ddp
from facekd.training.hooks import HOOK_POINTS, Hook, check_hook_names
from facekd.training.loss_watch import LossWatch
from facekd.training.metrics import MetricsLogger
from facekd.training.optim import build_optimizer, build_scheduler
from facekd.training.quant_noise import attach_quant_noise
from facekd.training.sharding import ShardedParameters
from facekd.training.task import Task

LOG = logging.getLogger(__name__)

#: ``train.compile_mode`` values: the ``mode`` of ``torch.compile``
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class Trainer:
    """Runs a task's training loop.

    Args:
        cfg: the experiment config.
        task: a :class:`~facekd.training.task.Task` (built here with ``task.build(trainer)``).
        dist: this process's place in a ``torchrun`` group (default: a single process on the
            best device).
        hooks: extra :class:`Hook` objects called after the task at each hook point; a method
            named like a hook point (``on_*``, ``before_*``, ``after_*``) that is not one of
            :data:`~facekd.training.hooks.HOOK_POINTS` is refused (a misspelt hook would never run).
        output_dir: overrides ``cfg.output_dir``.
    """

    def __init__(self, cfg: ExperimentConfig, task: Task, dist: Optional[DistInfo] = None,
                 hooks: Sequence[Hook] = (), output_dir: Optional[str] = None) -> None:
        from facekd.training.distributed import init_distributed

        check_hook_names([task, *hooks])
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
        self._loader: Optional[torch.utils.data.DataLoader] = None
        self.loss_watch = LossWatch()
        self.accumulation = Accumulation(cfg.train.grad_accum_steps)
        self.checkpoints = CheckpointWriter(background=cfg.train.async_checkpoint)
        self.last_loss: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        """Build the task, sampler, loader, optimiser, schedule and (if distributed) DDP."""
        if self._built:
            return
        cfg = self.cfg
        seed_everything(cfg.seed)
        if self.device.type == "cuda" and cfg.train.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True    # fixed P x K batch shapes: autotune once
        self.task.build(self)
        attach_quant_noise(self.task.backbone, cfg.train.quant_noise,      # before compile: traced with it
                           cfg.train.quant_noise_range_grad)
        module = self.task.module.to(self.device)
        if cfg.train.channels_last:
            module.to(memory_format=torch.channels_last)
        self.module = module
        self.model = module
        self.sharded = ShardedParameters(module, self.dist)     # a model-parallel head: outside DDP
        if self.dist.distributed:
            self.sharded.exclude_from_ddp(module)
            self.model = wrap_ddp(module, cfg.ddp, self.device)    # bucket size, static graph, compression
        if cfg.train.compile:
            # The backbone alone, in place (nn.Module.compile): parameter names, checkpoints and DDP
            # are unchanged, and the losses (labelled rows, sampled class centres) stay eager.
            # Compiling the whole TrainModule with inductor returned a loss without grad_fn.
            if self.device.type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
                LOG.warning("train.compile: no C++ compiler on PATH (inductor needs one on the CPU); "
                            "training eagerly")
            else:
                self.task.backbone.compile(mode=cfg.train.compile_mode)
        self.sampler = self._build_sampler()
        self.steps_per_epoch = len(self.sampler) // self.accumulation.steps     # optimiser steps
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"one optimiser step needs {self.accumulation.steps} P x K batch(es) of "
                              f"{cfg.train.identities_per_batch} identities with {cfg.train.images_per_identity} "
                              f"images; the training data has {len(self.sampler)} per epoch"
                              + (" on each rank" if self.dist.distributed else ""))
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, cfg.optim)
        self.optimizer.register_load_state_dict_pre_hook(self.sharded.slice_optimizer_state)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.steps_per_epoch, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.metrics = MetricsLogger(self.output_dir, enabled=self.dist.is_main)
        self._built = True

    def _build_sampler(self) -> Any:
        from facekd.data import PKBatchSampler

        sampler = PKBatchSampler(self.task.train_labels, self.cfg.train.identities_per_batch,
                                 self.cfg.train.images_per_identity, seed=self.cfg.seed,
                                 rank=self.dist.rank, world_size=self.dist.world_size)
        return self.task.wrap_sampler(sampler)     # e.g. unlabelled faces beside each batch

    def loader(self, epoch: int) -> Any:
        """The training loader, positioned at ``epoch`` (built once; its workers stay alive; with
        ``data.on_device`` a :class:`~facekd.training.device_views.DeviceLoader`).

        The sampler keeps a restored position inside the same epoch; every index the loader
        hands to the workers carries its epoch, so the workers' copies of the dataset need
        no ``set_epoch``.
        """
        from facekd.training.data import EpochBatches

        self.sampler.set_epoch(epoch)
        self.task.set_epoch(epoch)
        if self._loader is None:
            workers = self.cfg.data.num_workers
            batches = EpochBatches(self.sampler, self.batches_per_epoch)
            if self.cfg.data.on_device:       # the faces live on the device; views are made there
                from facekd.training.device_views import DeviceLoader, DeviceViews

                self._loader = DeviceLoader(DeviceViews(self.task.train_set, self.device, workers), batches)
            else:
                extra = {"persistent_workers": True, "prefetch_factor": max(1, self.cfg.train.prefetch_factor)} \
                    if workers > 0 else {}
                self._loader = torch.utils.data.DataLoader(
                    self.task.train_set, batch_sampler=batches,
                    num_workers=workers, pin_memory=self.device.type == "cuda",
                    generator=torch.Generator().manual_seed(self.cfg.seed), **extra)  # the global RNG untouched
        self._loader.batch_sampler.limit = min(self.batches_per_epoch, len(self.sampler))
        return self._loader

    @property
    def batches_per_epoch(self) -> int:
        """P x K batches an epoch trains on: ``train.grad_accum_steps`` per optimiser step."""
        return self.steps_per_epoch * self.accumulation.steps

    # ------------------------------------------------------------------ hooks
    def call_hook(self, name: str, *args: Any) -> None:
        """Call hook point ``name`` (one of :data:`HOOK_POINTS`) on the task and every extra hook, in order."""
        if name not in HOOK_POINTS:
            raise ValueError(f"{name!r} is not a hook point; hook points: {', '.join(HOOK_POINTS)}")
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
            # the resolved config of this run (load_config of it reproduces the run, --resume included)
            atomic_write_text(self.output_dir / "config.yaml",
                              to_yaml(dataclasses.replace(self.cfg, output_dir=str(self.output_dir))))
            self.metrics.truncate_after(self.step)
        self.call_hook("on_train_start")
        start = time.perf_counter()
        try:
            self._run_epochs()
        except BaseException:
            self.checkpoints.wait(raise_errors=False)   # the files on disk are complete
            raise
        seconds = time.perf_counter() - start
        self.finish()
        last_loss = float(self.last_loss) if self.last_loss is not None else math.nan
        self.call_hook("on_train_end")
        self.metrics.close()
        return {"output_dir": str(self.output_dir), "last": str(self.output_dir / "last.pt"),
                "best": str(self.output_dir / "best.pt"), "steps": self.step, "epochs": self.epoch,
                "final_loss": last_loss, "seconds": round(seconds, 2), "best_metric": dict(self.best),
                "verification": self.verification}

    def _run_epochs(self) -> None:
        cfg = self.cfg.train
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            self.module.train()
            loader = self.loader(epoch)
            bar = self._progress(self.batches_per_epoch - self.batches_done, epoch)
            for batch in loader:
                if self.batches_done >= self.batches_per_epoch:
                    break
                logged = self.last_metrics
                self.train_step(batch)
                bar.update(1)
                if self.last_metrics is not logged:      # a log step: the loss is on the host
                    bar.set_postfix(loss=f"{self.last_metrics['loss']:.3f}", refresh=False)
            bar.close()
            self.call_hook("on_epoch_end", epoch)
            self.epoch, self.batches_done = epoch + 1, 0
            if self._should_validate(epoch):
                self.validate()
            self.save_checkpoint()

    def _progress(self, total: int, epoch: int):
        from tqdm import tqdm

        return tqdm(total=total, desc=f"{self.cfg.name} epoch {epoch + 1}/{self.cfg.train.epochs}",
                    unit="step", leave=False, dynamic_ncols=True,
                    disable=not (self.cfg.train.progress and self.dist.is_main))

    def train_step(self, batch: Dict[str, Any]) -> tuple:
        """Forward and backward of ``batch``, and the optimiser step when it is the last of its
        ``train.grad_accum_steps`` batches; returns ``(loss, terms)``, means over the step's batches so far."""
        cfg, accumulation = self.cfg.train, self.accumulation
        first, last = accumulation.is_first(self.batches_done), accumulation.is_last(self.batches_done)
        self.call_hook("before_step", batch)
        if first:
            self.optimizer.zero_grad(set_to_none=True)
        with accumulation.sync(self.model, last):          # DDP reduces after the step's last batch only
            with autocast_context(self.device, self.amp):
                loss, terms = self.task.compute_loss(self, batch)
            loss = loss.float()
            self.scaler.scale(accumulation.scale(loss)).backward()
        self.batches_done += 1
        loss, terms = accumulation.add(first, loss.detach(), terms)
        if not last:
            return loss, terms
        self.loss_watch.add(self.step + 1, self.epoch, loss, terms)    # checked on the host later
        if self.sharded and self.scaler.is_enabled():
            self.sharded.share_overflow()
        grad_norm = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = self.sharded.clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]], cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.last_loss = loss
        self.step += 1
        self.call_hook("after_step", batch, loss, terms)
        log_now = self.step % max(1, cfg.log_every_steps) == 0 or self.batches_done == self.batches_per_epoch
        save_now = bool(cfg.checkpoint_every_steps) and self.step % cfg.checkpoint_every_steps == 0 \
            and self.batches_done < self.batches_per_epoch   # the epoch end writes its own
        if log_now or save_now:
            self.check_finite()
        if log_now:
            values = {"loss": float(loss), "lr": lr, **{k: float(v) for k, v in terms.items()}}
            if grad_norm is not None:
                values["grad_norm"] = float(grad_norm)
            self.last_metrics = values
            self.metrics.log("train", self.step, self.epoch, values)
        if save_now:
            self.save_checkpoint(step_file=True)
        return loss, terms

    def check_finite(self) -> None:
        """Raise :class:`TrainingError` if a loss since the last check was NaN/inf (on any rank).

        The one host sync of the loss: called at log steps, before checkpoints and at epoch ends.
        """
        if not self.loss_watch.all_finite(self.dist):
            self._stop_on_bad_loss(*self.loss_watch.first_bad())

    def _stop_on_bad_loss(self, step: int, epoch: int, loss: torch.Tensor, terms: Dict[str, Any]) -> None:
        self.checkpoints.wait(raise_errors=False)
        last = self.output_dir / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        # terms: detached 0-d tensors from WeightedLoss (plain floats from custom tasks)
        values = {"loss": float(loss),
                  **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in terms.items()}}
        detail = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "loss")
        self.metrics.log("error", step, epoch, values)
        self.metrics.close()
        raise TrainingError(
            f"loss became {values['loss']} at epoch {epoch + 1}, step {step} "
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
            from facekd.data import build_pair_set

            self._pair_sets = [build_pair_set(s.name, s.kind, s.path, **s.params) for s in self.cfg.val.sets]
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
        """Write ``last.pt`` atomically (rank 0); also ``step_<N>.pt`` and ``best.pt`` when due.

        The state is checked (no NaN loss since the last check) and copied to host memory
        here; the files are written by :attr:`checkpoints` — in a background thread with
        ``train.async_checkpoint`` (call ``self.checkpoints.wait()`` to be sure they exist).
        Returns the path of ``last.pt`` (rank 0) or None.
        """
        self.check_finite()
        whole = self.sharded.gather(self.optimizer)       # every rank sends its shard of a sharded head
        path = None
        if self.dist.is_main:
            path = self.output_dir / "last.pt"
            state = self.sharded.fill(self.checkpoint_state(), whole)
            if self.checkpoints.background:    # training goes on updating the tensors in place
                state = host_copy(state)
            step_name = f"step_{self.step:07d}.pt" if step_file and self.cfg.train.keep_step_checkpoints > 0 else None
            best, self._best_pending = self._best_pending, False
            self.checkpoints.submit(lambda: self._write_checkpoint(state, step_name, best))
        barrier(self.dist)
        return path

    def _write_checkpoint(self, state: Dict[str, Any], step_name: Optional[str], best: bool) -> None:
        path = atomic_save(state, self.output_dir / "last.pt")
        if step_name:
            atomic_copy(path, self.output_dir / step_name)
            for old in sorted(self.output_dir.glob("step_*.pt"))[:-self.cfg.train.keep_step_checkpoints]:
                old.unlink()
        if best:
            atomic_copy(path, self.output_dir / "best.pt")

    def load(self, path: str) -> None:
        """Restore model, optimiser, schedule, sampler position, RNG and counters from ``path``."""
        self.build()
        self.checkpoints.wait()
        state = load_checkpoint(path)
        for key in ("state_dict", "optimizer", "scheduler", "sampler", "rng", "step", "epoch"):
            if key not in state:
                raise CheckpointError(f"{path}: not a facekd training checkpoint (no {key!r}); "
                                      "use it as a teacher, or start a new run from its weights with --set init_from=PATH")
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
        self.accumulation.check_resume(self.batches_done, self.epoch, str(path))
        self.sampler.load_state_dict({**sampler, "position": self.batches_done})
        self.step = int(state["step"])
        self.best = state.get("best", self.best)
        self.last_metrics = state.get("metrics", {})
        self.verification = state.get("verification", {})
        set_rng_state(state["rng"])
        LOG.info("resumed from %s: epoch %d, step %d", path, self.epoch + 1, self.step)

    def finish(self) -> None:
        """Write ``verification.json`` and make sure ``best.pt`` exists (rank 0)."""
        self.checkpoints.wait()
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
