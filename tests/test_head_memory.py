"""facekd head-memory (facekd/losses/head_memory.py, facekd/commands/head_memory.py): the head's
memory per GPU, computed from the shapes of the config."""
from __future__ import annotations

from pathlib import Path

import pytest

from facekd.losses import LOSSES
from facekd.losses.head_memory import head_memory

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_a_shard_holds_a_wth_of_the_centres_plus_the_sampled_ones():
    """The issue's target at C = 200k, D = 512: per rank <= 1 / W of today's head plus the sampled centres."""
    for world in (2, 4, 8):
        replicated = head_memory(200_000, 512, world, 128, sample_rate=0.1, sharded=False)
        sharded = head_memory(200_000, 512, world, 128, sample_rate=0.1, sharded=True)
        assert sharded.centres_per_gpu == 200_000 // world
        assert sharded.total <= replicated.total / world + sharded.bytes["sampled"] + sharded.bytes["logits"]
        assert replicated.bytes["ddp_buckets"] == replicated.bytes["centres"] and sharded.bytes["ddp_buckets"] == 0


def test_the_counted_centres_are_what_a_sharded_head_allocates():
    for rank, world in [(0, 1), (0, 3), (2, 3)]:
        head = LOSSES.build("partial_fc", num_classes=1000, embedding_size=16, rank=rank, world_size=world)
        m = head_memory(1000, 16, world, 8, sharded=world > 1)
        assert head.weight.numel() * 4 <= m.bytes["centres"] <= (head.weight.numel() + 16) * 4
    adamw = head_memory(1000, 16, 2, 8, optimizer="adamw")
    assert adamw.bytes["optimizer"] == 2 * adamw.bytes["centres"]


@pytest.mark.parametrize("name, classes", [("teacher_ms1mv2_r100", 85_742), ("teacher_glint360k_r100", 360_232),
                                           ("teacher_webface42m_r100", 2_059_906)])
def test_the_command_prints_a_table_for_the_scale_configs(name, classes, capsys):
    from facekd.cli import main

    assert main(["head-memory", "--config", str(CONFIGS / f"{name}.yaml"), "--classes", str(classes),
                 "--world-size", "8", "64"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 8 ") or line.startswith("| 64 ")]
    assert len(rows) == 4 and f"C = {classes:,}" in out
    sharded_8 = next(r for r in rows if r.startswith("| 8 | sharded"))
    assert f"{-(-classes // 8):,}" in sharded_8
