"""facekd.training.memory: a training process keeps its freed blocks (glibc), so a step that allocates
what the previous one freed does not fault the pages in again."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from facekd.training import memory

STEPS = """
import resource, sys, torch
from facekd.training.memory import keep_freed_memory
torch.set_num_threads(1)
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def step():                      # a training step's pattern: blocks of 3-30 MiB, a few alive at once
    alive = []
    for mib in (3, 19, 19, 10, 25, 5, 12, 30):
        alive.append(torch.ones(mib << 18))
        if len(alive) > 3:
            alive.pop(0)
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(mode: str) -> tuple:
    env = {k: v for k, v in os.environ.items() if k not in memory.GLIBC_VARIABLES + (memory.OPT_OUT,)}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, faults = out.stdout.split()
    return kept == "True", float(faults)


#: pages a step writes: its eight blocks (3 + 19 + 19 + 10 + 25 + 5 + 12 + 30 MiB) of 4 KiB pages
PAGES_PER_STEP = (123 << 20) // 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_step_after_keep_freed_memory_reuses_the_pages_the_last_one_freed():
    kept, faults = faults_per_step("keep")
    if not kept:
        pytest.skip("malloc is not glibc's")
    # measured: 115-384 faults per step, against 15,765 in a run of glibc's defaults (which adapt
    # their thresholds as blocks come and go: another run of the defaults faulted none)
    assert faults < 0.05 * PAGES_PER_STEP, faults


def test_the_users_own_malloc_settings_and_the_opt_out_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert memory.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv(memory.OPT_OUT, "0")
    assert memory.keep_freed_memory() is False
