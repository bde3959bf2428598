"""Thread budget of evaluation / embedding extraction (facekd.evaluation.embed): several
processes at once share the cores instead of each taking all of them."""
from __future__ import annotations

import os

import pytest
import torch

from facekd.evaluation.embed import apply_thread_budget, available_cores, thread_budget


def test_budget_from_cores_jobs_and_environment():
    assert thread_budget(env={}, cores=16) == 16
    assert thread_budget(jobs=7, env={}, cores=16) == 2            # seven evals on 16 cores
    assert thread_budget(env={"FACEKD_JOBS": "4"}, cores=16) == 4
    assert thread_budget(jobs=32, env={}, cores=16) == 1           # never below one thread
    assert thread_budget(env={"FACEKD_THREADS": "3", "FACEKD_JOBS": "8"}, cores=16) == 3
    assert thread_budget(threads=5, env={"FACEKD_THREADS": "3"}, cores=16) == 5
    for bad in ({"threads": 0}, {"jobs": 0}):
        with pytest.raises(ValueError):
            thread_budget(env={}, cores=16, **bad)


def test_available_cores_is_the_affinity_mask():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected


def test_apply_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert apply_thread_budget(threads=1) == 1 and torch.get_num_threads() == 1
        assert apply_thread_budget(jobs=available_cores() * 2) == 1
    finally:
        torch.set_num_threads(before)
