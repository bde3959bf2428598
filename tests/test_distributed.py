"""DDP on CPU: two gloo processes run the real ``facekd train-teacher`` / ``train-student``
commands under ``torch.distributed.run`` and must end with the same weights.

Each rank runs tests/ddp_worker.py, i.e. ``facekd.cli.main`` with a recording
:class:`~facekd.training.trainer.Hook` (weights at ``on_train_start`` and ``on_train_end``,
the last step's gradients, the sample indices of every batch); the test compares the two
ranks' dumps.

BatchNorm running statistics are *not* compared across ranks: DDP (``broadcast_buffers=True``)
copies rank 0's buffers to every rank before each forward pass, and each rank then updates
them from its own shard, so after the last step they legitimately differ.  Rank 0's are the
ones that reach the checkpoint, which the test checks instead.

Tiny runs: IResNet-18 with widths 8..64 at 32x32 input, 16 synthetic identities x 8 images,
P x K = 4 x 4, 3 steps, one thread per process; about 10 s per run on 2 cores.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")
WORLD_SIZE = 2
STEPS = 3
TINY_MODEL = "{name: iresnet18, embedding_size: 32, input_size: 32, params: {width: [8, 16, 32, 64]}}"
TINY_RUN = [
    "data.num_identities=16", "data.images_per_identity=8",
    "train.identities_per_batch=4", "train.images_per_identity=4",
    "train.epochs=1", f"train.max_steps_per_epoch={STEPS}", "train.progress=false",
    "train.log_every_steps=1", "train.checkpoint_every_steps=0", "optim.warmup_epochs=0",
    "data.num_workers=0",
]
TIMEOUT_S = 240
#: a collective the other rank never joins fails after this (FACEKD_COLLECTIVE_TIMEOUT_S), not after 30 min
COLLECTIVE_TIMEOUT_S = 120


def _require_gloo() -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    if not dist.is_gloo_available():
        pytest.skip("the gloo backend is not available in this torch build")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sets(*assignments: str) -> List[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def run_ddp(dump_dir: Path, command: List[str]) -> Dict[int, Dict[str, Any]]:
    """Run ``facekd <command>`` on WORLD_SIZE gloo ranks; return each rank's dump."""
    _require_gloo()
    dump_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               FACEKD_COLLECTIVE_TIMEOUT_S=str(COLLECTIVE_TIMEOUT_S),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if sys.platform.startswith("linux") and os.path.isdir("/sys/class/net/lo"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")   # single host: don't depend on hostname resolution
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD_SIZE),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(WORKER), str(dump_dir), *command, "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGUSR1)          # each worker prints where its threads are (ddp_worker.py)
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGKILL)          # torchrun and its workers (their own session)
        output, _ = proc.communicate()
        pytest.fail(f"DDP run did not finish in {TIMEOUT_S} s:\n{output[-12000:]}")
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{output[-6000:]}"
    dumps = {}
    for rank in range(WORLD_SIZE):
        path = dump_dir / f"rank{rank}.pt"
        assert path.is_file(), f"rank {rank} wrote no {path.name} (on_train_end not reached?):\n{output[-4000:]}"
        dumps[rank] = torch.load(path, map_location="cpu", weights_only=False)
    return dumps


def _differing(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], names) -> List[str]:
    """The names whose tensors in ``a`` and ``b`` are not bit-identical."""
    return [n for n in names if not torch.equal(a[n], b[n])]


def check_ranks_in_sync(dumps: Dict[int, Dict[str, Any]]) -> None:
    """Same parameters (at start and end) and gradients on every rank; the weights moved."""
    r0, r1 = dumps[0], dumps[1]
    for rank, d in dumps.items():
        assert (d["rank"], d["world_size"], d["backend"], d["ddp"]) == (rank, WORLD_SIZE, "gloo", True)
        assert d["step"] == STEPS and len(d["losses"]) == STEPS
        assert all(torch.isfinite(torch.tensor(d["losses"])))
    names = r0["parameter_names"]
    assert names == r1["parameter_names"] and names
    assert set(r0["final"]) == set(r1["final"])

    # same start on every rank (same seed, and DDP broadcasts rank 0's weights at construction)
    assert not _differing(r0["initial"], r1["initial"], r0["initial"]), "initial weights differ between ranks"
    # the all-reduced gradients of the last step are bit-identical ...
    assert r0["grads"] and set(r0["grads"]) == set(r1["grads"])
    differing = _differing(r0["grads"], r1["grads"], r0["grads"])
    assert not differing, f"gradients differ between ranks: {differing}"
    # ... and so is every parameter after the optimiser steps (frozen ones included)
    differing = _differing(r0["final"], r1["final"], names)
    assert not differing, f"parameters differ between ranks after {STEPS} steps: {differing}"
    # buffers other than the BN running statistics (num_batches_tracked) agree too
    buffers = [n for n in r0["final"] if n not in names and not n.endswith(("running_mean", "running_var"))]
    differing = _differing(r0["final"], r1["final"], buffers)
    assert not differing, f"buffers differ between ranks: {differing}"
    for d in dumps.values():
        assert all(torch.isfinite(d["final"][n]).all() for n in names)

    # training changed the weights
    changed = _differing(r0["final"], r0["initial"], names)
    assert changed, "no parameter changed during training"
    assert len(changed) >= 0.9 * len(r0["grads"]), f"only {len(changed)} of {len(r0['grads'])} trained parameters changed"


def check_disjoint_shards(dumps: Dict[int, Dict[str, Any]]) -> None:
    """Rank r trained on the first batches of its own share of the epoch (identities of its own)."""
    from facekd.data import PKBatchSampler

    r0 = dumps[0]
    labels = r0["train_labels"]
    assert labels == dumps[1]["train_labels"]
    s = r0["sampler"]
    assert s["len"] == len(PKBatchSampler(labels, s["P"], s["K"], seed=s["seed"])) // WORLD_SIZE
    for rank, d in dumps.items():
        assert d["sampler"] == s
        share = PKBatchSampler(labels, s["P"], s["K"], seed=s["seed"], rank=rank, world_size=WORLD_SIZE).plan(0)
        assert d["batches"] == share[:STEPS].tolist(), f"rank {rank} did not get its share"
        for batch, batch_labels in zip(d["batches"], d["labels"]):
            assert batch_labels == [labels[i] for i in batch]
            assert len(set(batch_labels)) == s["P"] and len(batch) == s["P"] * s["K"]
    for step in range(STEPS):
        assert dumps[0]["batches"][step] != dumps[1]["batches"][step], f"both ranks got the same batch {step}"


def check_rank0_files(run_dir: Path, dumps: Dict[int, Dict[str, Any]], validated: bool) -> None:
    """Only rank 0 logged (one record per step) and its final weights are the checkpoint."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert len([r for r in records if r["kind"] == "val"]) == (1 if validated else 0)
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert last["step"] == STEPS and (run_dir / "best.pt").is_file()
    final = dumps[0]["final"]
    saved = {f"backbone.{k}": v for k, v in last["state_dict"].items()}   # weights and BN statistics
    saved.update({f"criterion.terms.arcface.{k}": v for k, v in last["head"]["state_dict"].items()})
    assert set(saved) == set(final)
    differing = _differing(saved, final, saved)
    assert not differing, f"last.pt differs from rank 0's final weights: {differing}"
    # the best-verification record is broadcast from rank 0
    assert dumps[0]["best"] == dumps[1]["best"]
    if validated:
        assert dumps[1]["best"]["name"] == "synthetic" and dumps[1]["best"]["step"] == STEPS


@pytest.fixture(scope="module")
def ddp_teacher(tmp_path_factory):
    """A 2-rank train-teacher run (with the epoch-end verification, so rank 0 verifies while rank 1 waits)."""
    root = tmp_path_factory.mktemp("ddp_teacher")
    command = ["train-teacher", "--config", str(REPO_ROOT / "configs" / "teacher_synthetic.yaml"),
               "--output-dir", str(root / "run"),
               *_sets(f"model={TINY_MODEL}", *TINY_RUN, "val.every_epochs=1", "val.batch_size=60",
                      "val.sets=[{name: synthetic, kind: synthetic, params: {num_pairs: 60}}]")]
    return root, run_ddp(root / "dumps", command)


def test_ddp_teacher_ranks_stay_in_sync(ddp_teacher):
    root, dumps = ddp_teacher
    check_ranks_in_sync(dumps)
    check_disjoint_shards(dumps)
    check_rank0_files(root / "run", dumps, validated=True)


def test_ddp_student_with_teacher_cache_stays_in_sync(ddp_teacher, tmp_path):
    """train-student (ArcFace + triplet distillation + Hinton KD on a degraded view) from the
    cached teacher embeddings, which the two ranks compute half each and gather."""
    teacher_root, _ = ddp_teacher
    cache_dir = tmp_path / "cache"
    command = ["train-student", "--config", str(REPO_ROOT / "configs" / "student_synthetic.yaml"),
               "--output-dir", str(tmp_path / "run"),
               *_sets(f"model={TINY_MODEL}", f"teacher.model={TINY_MODEL}",
                      f"teacher.checkpoint={teacher_root / 'run' / 'best.pt'}", "teacher.train_config=null",
                      f"teacher.cache_dir={cache_dir}", "teacher.cache=true",
                      "losses=[{name: arcface, weight: 1.0, scale: 32.0, margin: 0.3}, "
                      "{name: triplet_distill, weight: 1.0}, {name: hinton_kd, weight: 1.0, temperature: 4.0}]",
                      "degrade.min_size=14", "degrade.max_size=40", *TINY_RUN, "val.every_epochs=0")]
    dumps = run_ddp(tmp_path / "dumps", command)
    check_ranks_in_sync(dumps)
    check_disjoint_shards(dumps)
    check_rank0_files(tmp_path / "run", dumps, validated=False)
    assert len(list(cache_dir.glob("*.pt"))) == 1, "rank 0 should have written the teacher cache once"
