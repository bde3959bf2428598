"""Multi-node runs that never hang: two gloo ranks on localhost, each started on its own as
a node's only process would be (tests/rank_fault_worker.py, no torchrun agent).

* A node that cannot see the checkpoint (no shared filesystem: each rank gets its own
  ``--output-dir``, only rank 0's holds ``last.pt``): both ranks stop before training, each
  with one line naming the rank and the missing file.
* A rank killed (or stopped, so its connections stay open) mid-step: the other ends within
  the collective timeout with one line.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from facekd.training.metrics import read_metrics
from test_distributed import REPO_ROOT, TINY_MODEL, TINY_RUN, _free_port, _require_gloo, _sets

WORKER = Path(__file__).with_name("rank_fault_worker.py")
LIMIT_S = 60
CONFIG = str(REPO_ROOT / "configs" / "teacher_synthetic.yaml")


def run_ranks(commands: List[List[str]], fault: str = "none", timeout_s: float = 20,
              wait_for: int = 0) -> List[Tuple[int, str, float]]:
    """Start one process per rank; ``(exit code, stderr, seconds)`` of the first ``wait_for`` ranks
    (default: all; the others are then killed).  A rank still running after LIMIT_S fails the test."""
    _require_gloo()
    port = _free_port()
    procs = []
    start = time.monotonic()
    for rank, command in enumerate(commands):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE=str(len(commands)),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   FACEKD_COLLECTIVE_TIMEOUT_S=str(timeout_s),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        if os.path.isdir("/sys/class/net/lo"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), fault, *command, "--device", "cpu"],
                                      cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    results = []
    try:
        for proc in procs[:wait_for or len(procs)]:
            try:
                _, err = proc.communicate(timeout=max(1.0, LIMIT_S - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                pytest.fail(f"a rank was still running after {LIMIT_S} s (a hang)")
            results.append((proc.returncode, err, time.monotonic() - start))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return results


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.startswith("facekd ") and ": error: " in line]


def test_a_node_without_the_checkpoint_stops_every_rank_with_one_line(tmp_path):
    dirs = [tmp_path / "node0", tmp_path / "node1"]
    dirs[0].mkdir()
    torch.save({"step": 3, "epoch": 0}, dirs[0] / "last.pt")      # only the step is read before agreeing
    commands = [["train-teacher", "--config", CONFIG, "--output-dir", str(d), "--resume",
                 *_sets(f"model={TINY_MODEL}", *TINY_RUN)] for d in dirs]
    results = run_ranks(commands)
    for rank, (code, err, _) in enumerate(results):
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1, f"rank {rank} exited with {code}:\n{err[-3000:]}"
        assert "rank 1 cannot see" in lines[0] and "rank 0 at step 3" in lines[0], lines[0]
        assert str(dirs[rank] / "last.pt") in lines[0]
    assert not (dirs[1] / "metrics.jsonl").exists()


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_rank_that_dies_or_hangs_mid_step_ends_the_others_within_the_timeout(tmp_path, fault):
    """SIGKILL: gloo sees the closed connection at once; SIGSTOP: the collective timeout (10 s;
    it also bounds the start-up rendezvous, so not shorter on a busy machine)."""
    commands = [["train-teacher", "--config", CONFIG, "--output-dir", str(tmp_path / "run"),
                 *_sets(f"model={TINY_MODEL}", *TINY_RUN, "val.every_epochs=0")]] * 2
    [(code0, err0, seconds)] = run_ranks(commands, fault=f"{fault}:2", timeout_s=10, wait_for=1)
    lines = error_lines(err0)
    assert code0 == 2 and len(lines) == 1, f"rank 0 exited with {code0} after {seconds:.0f} s:\n{err0[-3000:]}"
    assert "rank 0 of 2: lost the other ranks" in lines[0], lines[0]
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl", "train")]
    assert steps == [1], f"the fault should strike in step 2 (rank 0 logged steps {steps})"


def test_single_process_resume_rules_are_unchanged(tmp_path):
    from facekd.errors import DataError
    from facekd.training.resume import AUTO_RESUME, resolve_resume

    assert resolve_resume(None, str(tmp_path)) is None
    assert resolve_resume(AUTO_RESUME, str(tmp_path)) is None              # nothing yet: a fresh start
    with pytest.raises(DataError, match="checkpoint to resume from not found"):
        resolve_resume(str(tmp_path / "gone.pt"), str(tmp_path))
    (tmp_path / "last.pt").write_bytes(b"")
    assert resolve_resume(AUTO_RESUME, str(tmp_path)) == str(tmp_path / "last.pt")


def test_the_disagreement_line_names_every_rank_and_step():
    from facekd.training.resume import NO_FILE, UNREADABLE, disagreement

    line = disagreement([3, 2, NO_FILE, UNREADABLE, 3], "/runs/x/last.pt", "empty file")
    assert "\n" not in line
    assert "rank 2 cannot see /runs/x/last.pt" in line and "rank 3 cannot read /runs/x/last.pt (empty file)" in line
    assert "rank 1 at step 2" in line and "ranks 0, 4 at step 3" in line
