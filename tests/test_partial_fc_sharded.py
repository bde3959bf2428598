"""Model-parallel PartialFC (facekd/losses/partial_fc_sharded.py, facekd/training/sharding.py) on
CPU gloo ranks started with ``torch.multiprocessing.spawn``.

Each rank trains a tiny "backbone" (a linear layer, in DDP) and its shard of the head (outside
DDP, as the trainer does) on its share of a fixed global batch of 24 rows; the test repeats the
same steps in one process with the whole head (``world_size=1``, today's loss) and compares:
the loss (every rank holds the global batch's loss), the embedding gradient (``W`` times the
single process's, which DDP's averaging divides again), the backbone's gradient after DDP,
each shard's gradient (its rows of the whole head's), and the weights after a few SGD steps
with momentum and global-norm clipping (and, looser, one step under bf16 autocast).  The 2-rank run saves a checkpoint (the whole head and
momentum, gathered on rank 0); the 4-rank run resumes from it (re-shard 2 -> 4) and must take
the same next step as the single process.  C = 37 classes: shards of unequal size.
"""
from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist
from torch import nn

from facekd.losses import LOSSES, LossInputs
from facekd.losses.partial_fc_sharded import ClassShard, initial_centres
from facekd.training.distributed import DistInfo
from facekd.training.sharding import ShardedParameters

C, D, D_IN, GLOBAL_BATCH, STEPS = 37, 16, 8, 24, 3
HEADS = {"partial_fc": {"scale": 16.0, "margin": 0.5}, "partial_fc_cosface": {"scale": 16.0, "margin": 0.35}}
MAX_NORM = 0.5          # small enough that every step is clipped
TOL = dict(rtol=1e-5, atol=1e-5)


class Net(nn.Module):
    """Linear backbone + margin head; remembers the embedding (for its gradient)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.backbone = nn.Linear(D_IN, D)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(3)
            self.backbone.weight.copy_(torch.randn(D, D_IN, generator=generator) * 0.3)
            self.backbone.bias.zero_()
        self.head = head
        self.embedding: Any = None

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.embedding = self.backbone(x)
        self.embedding.retain_grad()
        return self.head(LossInputs(student_embedding=self.embedding, labels=labels))


def global_batch(step: int):
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, D_IN, generator=generator), torch.randint(0, C, (GLOBAL_BATCH,), generator=generator)


def build(name: str, rank: int, world: int):
    head = LOSSES.build(name, num_classes=C, embedding_size=D, sample_rate=1.0, rank=rank, world_size=world,
                        **HEADS[name])
    torch.manual_seed(0)
    head.load_state_dict({"weight": initial_centres(ClassShard(C), D)})     # a whole head: each rank keeps its rows
    net = Net(head)
    info = DistInfo(rank, world, rank, torch.device("cpu"), "gloo" if world > 1 else None)
    sharded = ShardedParameters(net, info)
    model = net
    if world > 1:
        sharded.exclude_from_ddp(net)
        model = nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    optimizer.register_load_state_dict_pre_hook(sharded.slice_optimizer_state)
    return net, model, sharded, optimizer


def train(net, model, sharded, optimizer, rank: int, world: int, steps) -> List[Dict[str, torch.Tensor]]:
    """SGD steps on this rank's rows of each global batch; what each step saw."""
    records = []
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    for step in steps:
        x, labels = global_batch(step)
        optimizer.zero_grad()
        loss = model(x[rows], labels[rows])
        loss.backward()
        sharded.clip_grad_norm_(list(net.parameters()), MAX_NORM)
        records.append({"loss": loss.detach().clone(), "embedding_grad": net.embedding.grad.clone(),
                        "backbone_grad": net.backbone.weight.grad.clone(),
                        "head_grad": net.head.weight.grad.clone()})
        optimizer.step()
    return records


def checkpoint(net, sharded, optimizer) -> Dict[str, Any]:
    """The whole state (rank 0; ``{}`` elsewhere) as the trainer writes it."""
    whole = sharded.gather(optimizer)
    if sharded.info.rank != 0:
        return {}
    return sharded.fill({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, whole)


def sample_once(rank: int, world: int) -> Dict[str, Any]:
    """One forward at sample_rate 0.3: the shard's sampled centres and the generator after it."""
    torch.manual_seed(5)
    head = LOSSES.build("partial_fc", num_classes=C, embedding_size=D, sample_rate=0.3, rank=rank, world_size=world)
    x, labels = global_batch(9)
    rows = slice(rank * 4, rank * 4 + 4)          # 4 rows per rank: the global batch is smaller than C
    head(LossInputs(student_embedding=torch.randn(4, D), labels=labels[rows]))
    return {"index": head.last_index, "labels": labels[:4 * world], "rng": torch.get_rng_state()}


def bf16_step(rank: int, world: int) -> Dict[str, torch.Tensor]:
    """Loss and backbone gradient of one global batch under bf16 autocast (no optimiser step)."""
    net, model, _, _ = build("partial_fc", rank, world)
    x, labels = global_batch(0)
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x[rows], labels[rows])
    loss.float().backward()
    return {"loss": loss.detach().float(), "backbone_grad": net.backbone.weight.grad.clone()}


def worker(rank: int, world: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/store{world}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        out: Dict[str, Any] = {}
        for name in HEADS:
            net, model, sharded, optimizer = build(name, rank, world)
            start = checkpoint(net, sharded, optimizer)
            records = train(net, model, sharded, optimizer, rank, world, range(STEPS))
            out[name] = {"start": start, "records": records, "end": checkpoint(net, sharded, optimizer),
                         "shard": (net.head.shard.start, net.head.shard.stop)}
        out["sampled"] = sample_once(rank, world)
        out["bf16"] = bf16_step(rank, world)
        if world == 2 and rank == 0:
            torch.save(out["partial_fc"]["end"], f"{root}/pfc_after_{STEPS}.pt")
        if world == 4:      # resume the 2-rank run: the whole head is re-sharded over 4 ranks
            dist.barrier()
            net, model, sharded, optimizer = build("partial_fc", rank, world)
            saved = torch.load(f"{root}/pfc_after_{STEPS}.pt", weights_only=True)
            net.load_state_dict(saved["net"])
            optimizer.load_state_dict(saved["optimizer"])
            out["resumed"] = {"records": train(net, model, sharded, optimizer, rank, world, [STEPS]),
                              "end": checkpoint(net, sharded, optimizer)}
        torch.save(out, f"{root}/world{world}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_world(world: int, root: Path) -> Dict[int, Dict[str, Any]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # fork: the ranks inherit the imported modules (spawning 6 fresh interpreters costs ~10 s of CPU)
    torch.multiprocessing.start_processes(worker, args=(world, str(root)), nprocs=world, start_method="fork")
    return {rank: torch.load(root / f"world{world}_rank{rank}.pt", weights_only=False) for rank in range(world)}


def single_process(name: str, steps: int):
    net, model, sharded, optimizer = build(name, 0, 1)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    records = train(net, model, sharded, optimizer, 0, 1, range(steps))
    return start, records, net.state_dict()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded_pfc")
    return {2: run_world(2, root), 4: run_world(4, root)}      # 4 resumes 2's checkpoint


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("name", list(HEADS))
def test_sharded_head_equals_the_single_process_head(runs, world, name):
    start, reference, final = single_process(name, STEPS)
    dumps = runs[world]
    assert torch.equal(dumps[0][name]["start"]["net"]["head.weight"], start["head.weight"]), \
        "the sharded run did not start from the single process's head"
    for rank, dump in dumps.items():
        lo, hi = dump[name]["shard"]
        assert (lo, hi) == (ClassShard(C, rank, world).start, ClassShard(C, rank, world).stop)
        rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        for step, (got, want) in enumerate(zip(dump[name]["records"], reference)):
            where = f"rank {rank} of {world}, step {step}"
            torch.testing.assert_close(got["loss"], want["loss"], **TOL, msg=f"loss, {where}")
            torch.testing.assert_close(got["embedding_grad"] / world, want["embedding_grad"][rows], **TOL,
                                       msg=f"embedding gradient, {where}")
            torch.testing.assert_close(got["backbone_grad"], want["backbone_grad"], **TOL,
                                       msg=f"backbone gradient after DDP, {where}")
            torch.testing.assert_close(got["head_grad"], want["head_grad"][lo:hi], **TOL, msg=f"shard gradient, {where}")
    end = dumps[0][name]["end"]["net"]
    for key in final:
        torch.testing.assert_close(end[key], final[key], **TOL, msg=f"{key} after {STEPS} steps")


def test_checkpoint_holds_the_whole_head_and_resumes_on_more_ranks(runs):
    saved = runs[2][0]["partial_fc"]["end"]
    assert saved["net"]["head.weight"].shape == (C, D)
    momentum = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values()]
    assert sorted(tuple(m.shape) for m in momentum) == sorted([(C, D), (D, D_IN), (D,)])
    assert runs[2][1]["partial_fc"]["end"] == {}          # only rank 0 assembles the checkpoint

    _, reference, final = single_process("partial_fc", STEPS + 1)
    for rank, dump in runs[4].items():
        torch.testing.assert_close(dump["resumed"]["records"][0]["loss"], reference[STEPS]["loss"], **TOL)
    end = runs[4][0]["resumed"]["end"]["net"]
    for key in final:
        torch.testing.assert_close(end[key], final[key], **TOL, msg=f"{key} after resuming on 4 ranks")


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_samples_its_positives_and_the_generators_stay_in_step(runs, world):
    for rank, dump in runs[world].items():
        shard, sampled = ClassShard(C, rank, world), dump["sampled"]
        index, labels = sampled["index"], sampled["labels"]
        assert index.numel() == max(math.ceil(0.3 * shard.size), 4 * world) or index.numel() == shard.size
        assert torch.equal(index, index.unique()) and int(index.max()) < shard.size
        positives = {int(y) - shard.start for y in labels if shard.start <= y < shard.stop}
        assert positives <= set(index.tolist()), f"rank {rank} of {world} left out a positive"
        assert torch.equal(sampled["rng"], runs[world][0]["sampled"]["rng"])
    assert len({tuple(runs[world][r]["sampled"]["index"].tolist()) for r in range(world)}) > 1


@pytest.mark.parametrize("world", [2, 4])
def test_bf16_autocast_matches_the_single_process_head(runs, world):
    reference = bf16_step(0, 1)
    for rank, dump in runs[world].items():
        torch.testing.assert_close(dump["bf16"]["loss"], reference["loss"], rtol=2e-3, atol=2e-3)
        grad, want = dump["bf16"]["backbone_grad"], reference["backbone_grad"]
        assert float((grad - want).norm() / want.norm()) < 1e-2, f"rank {rank} of {world}"    # bf16: ~3 digits


def test_initial_centres_do_not_depend_on_the_world_size():
    torch.manual_seed(7)
    whole = initial_centres(ClassShard(70_000), 4)
    parts = torch.cat([initial_centres(ClassShard(70_000, r, 3), 4) for r in range(3)])
    assert torch.equal(whole, parts) and 0.009 < float(whole.std()) < 0.011


def test_shards_cover_the_classes_once():
    for classes, world in [(37, 2), (37, 4), (8, 8), (10, 3)]:
        shards = [ClassShard(classes, r, world) for r in range(world)]
        assert [s.start for s in shards] == [0] + [s.stop for s in shards[:-1]] and shards[-1].stop == classes
        assert max(s.size for s in shards) - min(s.size for s in shards) <= 1


def test_train_teacher_with_a_sharded_head_on_two_ranks_then_resume(tmp_path):
    """The real ``facekd train-teacher`` under torchrun (tests/test_distributed.py's harness):
    the backbone stays in sync, each rank trains its half of the head, last.pt holds the whole
    head and its momentum, and ``--resume`` (the ranks agree on last.pt) gives each rank its rows back."""
    from test_distributed import REPO_ROOT, STEPS as DDP_STEPS, TINY_MODEL, TINY_RUN, _sets, run_ddp

    from facekd.training import load_checkpoint

    config = str(REPO_ROOT / "configs" / "teacher_synthetic.yaml")
    settings = [f"model={TINY_MODEL}", *TINY_RUN, "val.every_epochs=0",
                "losses=[{name: partial_fc, sample_rate: 1.0, scale: 32.0, margin: 0.3}]"]
    command = ["train-teacher", "--config", config, "--output-dir", str(tmp_path / "run")]
    dumps = run_ddp(tmp_path / "dumps", [*command, *_sets(*settings)])
    head = "criterion.terms.partial_fc.weight"
    backbone = [n for n in dumps[0]["parameter_names"] if n != head]
    assert all(torch.equal(dumps[0]["final"][n], dumps[1]["final"][n]) for n in backbone)
    assert dumps[0]["losses"] == dumps[1]["losses"]          # every rank computes the global batch's loss
    shards = [dumps[r]["final"][head] for r in (0, 1)]
    assert [s.shape[0] for s in shards] == [8, 8] and not torch.equal(*shards)
    assert not torch.equal(dumps[0]["initial"][head], shards[0])

    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["step"] == DDP_STEPS
    whole = last["head"]["state_dict"]["weight"]
    assert torch.equal(whole, torch.cat(shards)) and torch.equal(last["losses"]["terms.partial_fc.weight"], whole)
    assert any(s["momentum_buffer"].shape == whole.shape for s in last["optimizer"]["state"].values())

    resumed = run_ddp(tmp_path / "resumed", [*command, "--resume", *_sets(*settings, "train.epochs=2")])
    for rank, dump in resumed.items():
        assert dump["step"] == 2 * DDP_STEPS
        assert torch.equal(dump["initial"][head], shards[rank]), f"rank {rank} did not get its rows back"
    assert all(torch.equal(resumed[0]["final"][n], resumed[1]["final"][n]) for n in backbone)
