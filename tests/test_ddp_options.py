"""Gradient accumulation and DDP's options (facekd/training/ddp_options.py) through the real
:class:`~facekd.training.Trainer`'s ``train_step``.

A linear task without batch statistics (linear -> tanh -> linear classifier, cross entropy) is
trained for 2 optimiser steps of ``k = 3`` batches of ``B`` rows and compared with the same
steps taken on one batch of ``k * B`` rows: SGD with momentum and weight decay, a cosine LR
schedule and gradient clipping that is hit (the clip must see the whole step's gradient).
On 2 gloo ranks (forked, one thread each) every rank takes its half of each batch; the
reference is one process on the whole ``2 * k * B`` rows.  The ranks' gradients differ inside
a step (``no_sync``) and agree after its last batch.  fp16 / bf16 gradient compression is
installed as a DDP communication hook and lands within its precision of the uncompressed run.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facekd.config import load_config
from facekd.errors import CheckpointError, ConfigError
from facekd.training import Hook, Trainer
from facekd.training.ddp_options import Accumulation
from facekd.training.distributed import DistInfo
from facekd.training.task import StepBatch, Task

D_IN, D, C, B, K, STEPS = 6, 5, 4, 4, 3, 2
EXACT = dict(rtol=0, atol=1e-6)


class LinearTask(Task):
    """linear -> tanh -> linear over ``C`` classes; batches are ``{"x", "label"}``."""

    name = "linear"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def build(self, trainer: Any) -> None:
        self.backbone = nn.Linear(D_IN, D)
        self.module = nn.Sequential(self.backbone, nn.Tanh(), nn.Linear(D, C))
        self.train_set = None

    @property
    def train_labels(self) -> np.ndarray:
        return np.repeat(np.arange(8), 4)          # only for the sampler the trainer builds

    def set_epoch(self, epoch: int) -> None:
        pass

    def prepare_batch(self, batch: Dict[str, Any]) -> StepBatch:
        return StepBatch(batch["x"], batch["label"])

    def compute_loss(self, trainer: Any, batch: Dict[str, Any]):
        logits = trainer.model(batch["x"])
        if batch.get("poison"):         # a finite loss whose gradient overflows (as fp16 gradients do)
            logits.register_hook(lambda grad: grad * float("inf"))
        loss = F.cross_entropy(logits, batch["label"])
        return loss, {"cross_entropy": loss.detach()}

    def verify(self, trainer: Any, pair_sets: Any) -> Dict[str, Any]:
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {"state_dict": self.module.state_dict()}

    def load_state_dict(self, state: Dict[str, Any], path: str = "<checkpoint>") -> None:
        self.module.load_state_dict(state["state_dict"])


def config(root: Path, k: int, *sets: str) -> Any:
    return load_config(None, [f"output_dir={root}", f"train.grad_accum_steps={k}", "train.epochs=2",
                              "train.max_steps_per_epoch=1", "train.identities_per_batch=2",
                              "train.images_per_identity=2", "train.grad_clip=0.05", "optim.lr=0.5",
                              "optim.weight_decay=0.01", *sets])


def micro_batches(step: int, rows: int) -> List[Dict[str, torch.Tensor]]:
    """The ``K`` batches of optimiser step ``step``, ``rows`` rows each."""
    generator = torch.Generator().manual_seed(50 + step)
    return [{"x": torch.randn(rows, D_IN, generator=generator),
             "label": torch.randint(0, C, (rows,), generator=generator)} for _ in range(K)]


def whole(batches: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def trainer_for(cfg: Any, info: DistInfo, scaler: bool = False) -> Trainer:
    trainer = Trainer(cfg, LinearTask(cfg), dist=info)
    trainer.build()
    if scaler:      # the fp16 path's loss scaler (CUDA only in real runs) on fp32 CPU tensors
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    return trainer


def weights(trainer: Trainer) -> Dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.module.named_parameters()}


def single_process(root: Path, rows: int, scaler: bool = False) -> Trainer:
    """The reference: ``STEPS`` optimiser steps, each on its ``K`` batches as one batch."""
    trainer = trainer_for(config(root, 1), DistInfo(), scaler)
    for step in range(STEPS):
        trainer.train_step(whole(micro_batches(step, rows)))
    return trainer


@pytest.mark.parametrize("scaler", [False, True], ids=["fp32", "loss_scaler"])
def test_k_batches_make_the_step_of_one_k_times_larger_batch(tmp_path, scaler):
    reference = single_process(tmp_path / "ref", B, scaler)
    trainer = trainer_for(config(tmp_path / "acc", K), DistInfo(), scaler)
    losses = []
    for step in range(STEPS):
        for i, batch in enumerate(micro_batches(step, B)):
            trainer.train_step(batch)
            assert trainer.step == step + (i == K - 1), "the optimiser stepped inside an accumulation"
        losses.append(trainer.last_loss)
    assert trainer.step == reference.step == STEPS and trainer.batches_done == K * STEPS
    assert trainer.scheduler.last_epoch == reference.scheduler.last_epoch == STEPS
    assert trainer.optimizer.param_groups[0]["lr"] == reference.optimizer.param_groups[0]["lr"]
    torch.testing.assert_close(trainer.last_loss, reference.last_loss, **EXACT)     # mean of the K losses
    for name, value in weights(reference).items():
        torch.testing.assert_close(weights(trainer)[name], value, **EXACT, msg=name)
    if scaler:
        assert trainer.scaler.get_scale() == reference.scaler.get_scale()


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_an_overflow_in_one_batch_skips_the_whole_step(tmp_path):
    trainer = trainer_for(config(tmp_path, K), DistInfo(), scaler=True)
    before, scale = weights(trainer), trainer.scaler.get_scale()
    batches = micro_batches(0, B)
    batches[1] = {**batches[1], "poison": True}
    for batch in batches:
        trainer.train_step(batch)
    assert trainer.step == 1 and trainer.scaler.get_scale() == scale / 2
    for name, value in before.items():
        assert torch.equal(weights(trainer)[name], value), f"{name} changed in a skipped step"


def test_accumulation_bookkeeping():
    acc = Accumulation(3)
    assert [acc.is_first(n) for n in range(6)] == [True, False, False, True, False, False]
    assert [acc.is_last(n) for n in range(6)] == [False, False, True, False, False, True]
    loss, terms = None, None
    for n, value in enumerate([1.0, 2.0, 6.0]):
        loss, terms = acc.add(acc.is_first(n), torch.tensor(value), {"a": torch.tensor(2 * value)})
    assert float(loss) == 3.0 and float(terms["a"]) == 6.0
    acc.check_resume(6, 0, "last.pt")
    with pytest.raises(CheckpointError, match="inside an optimiser step of train.grad_accum_steps=3"):
        acc.check_resume(4, 1, "last.pt")
    with pytest.raises(ValueError):
        Accumulation(0)


@pytest.mark.parametrize("setting, message", [
    ("train.grad_accum_steps=0", "train.grad_accum_steps must be in [1, 1024]"),
    ("train.grad_accum_steps=2.5", "train.grad_accum_steps must be an integer"),
    ("ddp.bucket_cap_mb=0", "ddp.bucket_cap_mb must be in (0, 4096]"),
    ("ddp.bucket_cap_mb=.nan", "ddp.bucket_cap_mb must be a finite number"),
    ("ddp.static_graph=2", "ddp.static_graph must be true or false"),
    ("ddp.grad_compression=int8", "ddp.grad_compression must be one of none, fp16, bf16; got 'int8'"),
    ("ddp.gradient_compression=fp16", "unknown config key"),
    ("ddp.static_graph=true --set train.grad_accum_steps=2",
     "ddp.static_graph cannot go with train.grad_accum_steps=2"),
])
def test_bad_values_are_refused_by_the_config_loader(setting, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_config(None, setting.split(" --set "))


def test_the_config_names_every_compression_hook():
    from facekd.config import GRAD_COMPRESSIONS
    from facekd.training.ddp_options import COMPRESSION_HOOKS

    assert tuple(COMPRESSION_HOOKS) == GRAD_COMPRESSIONS


# --------------------------------------------------------------------------- two gloo ranks

#: name -> (grad_accum_steps, extra --set) of the runs every rank makes
RUNS = {"accumulated": (K, []), "accumulated_small_buckets": (K, ["ddp.bucket_cap_mb=0.0001"]),
        "static_graph": (1, ["ddp.static_graph=true", "ddp.bucket_cap_mb=0.0001"]),
        "plain": (1, []), "fp16": (1, ["ddp.grad_compression=fp16"]), "bf16": (1, ["ddp.grad_compression=bf16"])}


def worker(rank: int, world: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        info = DistInfo(rank, world, rank, torch.device("cpu"), "gloo")
        out: Dict[str, Any] = {}
        for name, (k, sets) in RUNS.items():
            trainer = trainer_for(config(Path(root) / name, k, *sets), info)
            grads = []
            for step in range(STEPS):
                batches = micro_batches(step, world * B)
                if k == 1:
                    batches = [whole(batches)]
                for batch in batches:
                    rows = len(batch["label"]) // world
                    trainer.train_step({key: value[rank * rows:(rank + 1) * rows] for key, value in batch.items()})
                    grads.append(trainer.task.backbone.weight.grad.clone())
            out[name] = {"weights": weights(trainer), "grads": grads, "step": trainer.step,
                         "hooks": [hook.__name__ for hook, _ in trainer.model._comm_hooks],
                         "static_graph": trainer.model.static_graph, "bucket_bytes": trainer.model.bucket_bytes_cap}
        torch.save(out, f"{root}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Dict[int, Dict[str, Any]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    root = tmp_path_factory.mktemp("ddp_options")
    torch.multiprocessing.start_processes(worker, args=(2, str(root)), nprocs=2, start_method="fork")
    return {rank: torch.load(root / f"rank{rank}.pt", weights_only=False) for rank in range(2)}


@pytest.mark.parametrize("name", ["accumulated", "accumulated_small_buckets", "static_graph", "plain"])
def test_two_ranks_accumulating_equal_one_process_on_the_whole_batch(two_ranks, tmp_path, name):
    reference = weights(single_process(tmp_path, 2 * B))
    for rank, dump in two_ranks.items():
        assert dump[name]["step"] == STEPS and dump[name]["hooks"] == []
        assert dump[name]["static_graph"] == (name == "static_graph")
        assert dump[name]["bucket_bytes"] == (int(0.0001 * 2 ** 20) if name != "accumulated" and name != "plain"
                                              else 25 * 2 ** 20)
        for key, value in reference.items():
            torch.testing.assert_close(dump[name]["weights"][key], value, **EXACT, msg=f"{key}, rank {rank}")


@pytest.mark.parametrize("name", ["accumulated", "accumulated_small_buckets"])
def test_the_ranks_reduce_only_after_the_last_batch_of_a_step(two_ranks, name):
    grads = [two_ranks[rank][name]["grads"] for rank in (0, 1)]
    for index, (mine, theirs) in enumerate(zip(*grads)):
        last = index % K == K - 1
        assert torch.equal(mine, theirs) == last, f"batch {index}: {'not ' if last else ''}reduced"


@pytest.mark.parametrize("name, tolerance", [("fp16", 2e-3), ("bf16", 2e-2)])
def test_compressed_gradients_land_near_the_uncompressed_run(two_ranks, name, tolerance):
    for rank, dump in two_ranks.items():
        assert dump[name]["hooks"] == [f"{name}_compress_hook"]
        plain, compressed = dump["plain"]["weights"], dump[name]["weights"]
        assert any(not torch.equal(compressed[key], plain[key]) for key in plain), f"{name} changed nothing"
        for key, value in plain.items():
            assert float((compressed[key] - value).norm() / value.norm()) < tolerance, f"{key}, rank {rank}"
        assert all(torch.equal(a, b) for a, b in zip(dump[name]["grads"], two_ranks[0][name]["grads"]))


# --------------------------------------------------------------------------- checkpoints and resume

class StopInsideStep(Hook):
    """Raise before the second batch of optimiser step ``step + 1`` (a job killed inside a step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def before_step(self, trainer: Any, batch: Dict[str, Any]) -> None:
        if trainer.step == self.step and not trainer.accumulation.is_first(trainer.batches_done):
            raise KeyboardInterrupt


@pytest.fixture
def one_thread():
    """One intra-op thread (on 2 busy cores, 2 threads made these tiny runs 8x slower: 28 s against 3.7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_checkpoints_fall_between_steps_and_a_killed_run_resumes_exactly(tmp_path, one_thread):
    """The teacher task, 2 batches per step, 2 epochs of 2 steps, a checkpoint after every step."""
    from test_training import tiny_config, trainable_state

    from facekd.training import TeacherTask, load_checkpoint, read_metrics

    over = {"train": {"epochs": 2, "grad_accum_steps": 2, "checkpoint_every_steps": 1, "keep_step_checkpoints": 10}}
    cfg = tiny_config(tmp_path, "full", **over)
    full = Trainer(cfg, TeacherTask(cfg))
    full.fit()
    assert (full.steps_per_epoch, full.batches_per_epoch, full.step) == (2, 4, 4)
    assert [r["step"] for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl", "train")] == [1, 2, 3, 4]
    for path in sorted(Path(cfg.output_dir).glob("step_*.pt")):
        state = load_checkpoint(path)
        assert state["sampler"]["batches_done"] == 2 * (state["step"] % 2), path.name    # between steps
    assert full.scheduler.last_epoch == 4

    cfg = tiny_config(tmp_path, "killed", **over)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, TeacherTask(cfg), hooks=[StopInsideStep(3)]).fit()
    last = Path(cfg.output_dir) / "last.pt"
    state = load_checkpoint(last)
    assert (state["step"], state["epoch"], state["sampler"]["batches_done"]) == (3, 1, 2)
    resumed = Trainer(cfg, TeacherTask(cfg))
    resumed.fit(resume=str(last))
    assert resumed.step == 4
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    expected, actual = trainable_state(full), trainable_state(resumed)
    for key in expected:
        torch.testing.assert_close(actual[key].float(), expected[key].float(), **EXACT, msg=key)

    other = tiny_config(tmp_path, "killed", **{"train": {**over["train"], "grad_accum_steps": 3}})
    mid_epoch = load_checkpoint(Path(cfg.output_dir) / "step_0000003.pt")
    assert mid_epoch["sampler"]["batches_done"] == 2
    with pytest.raises(CheckpointError, match="inside an optimiser step of train.grad_accum_steps=3"):
        Trainer(other, TeacherTask(other)).load(str(Path(cfg.output_dir) / "step_0000003.pt"))
