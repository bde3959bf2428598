"""The memory-mapped teacher-target store (``teacher.store``): reuse, refusal of bad files,
resumable builds, store-fed training runs and their resume, and the store on two gloo ranks.

Tiny teachers on synthetic faces, as in tests/test_teachers.py and tests/test_training.py.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.data import SyntheticFaces
from facekd.errors import DataError
from facekd.training import CACHE_STATS, StudentTask, TeacherCache, Trainer
from facekd.training.distributed import DistInfo
from facekd.training.target_store import HEADER_BYTES, MAGIC, TargetStore, file_size
from facekd.training.teacher_cache import cache_key
from tests.test_teachers import FailingTeacher, tiny_torch_teacher
from tests.test_teaching import AUGMENT
from tests.test_training import (ALL_STUDENT_LOSSES, Interrupt, StopAt, student_overrides, teacher_ckpt,  # noqa: F401
                                 tiny_config, trainable_state)


def build_store(teacher, dataset, cache_dir, **kw) -> TeacherCache:
    return TeacherCache.load_or_build(teacher, dataset, cache_dir, batch_size=4, dtype="float16", store=True, **kw)


def on_the_file(cache: TeacherCache) -> bool:
    """The cache's embeddings are the mapped file itself, not a copy in memory."""
    return isinstance(cache.store.rows, np.memmap) and cache.embeddings.data_ptr() == cache.store.rows.ctypes.data


# --------------------------------------------------------------------------- the store

def test_store_serves_bit_identical_targets_on_reuse_from_the_mapped_file(tmp_path):
    teacher, dataset = tiny_torch_teacher(32), SyntheticFaces(4, 4, seed=3)
    CACHE_STATS.reset()
    built = build_store(teacher, dataset, tmp_path)
    assert (CACHE_STATS.misses, CACHE_STATS.hits) == (1, 0) and not built.from_disk
    assert built.path.name.endswith(".float16.store") and on_the_file(built)
    assert built.embeddings.shape == (16, 2, 32) and built.embeddings.dtype == torch.float16
    # the same rows as today's file cache at the same dtype
    in_memory = TeacherCache.load_or_build(teacher, dataset, tmp_path / "pt", batch_size=4, dtype="float16")
    assert torch.equal(built.embeddings, in_memory.embeddings)

    counted = FailingTeacher(teacher)
    reused = build_store(counted, dataset, tmp_path)
    assert reused.from_disk and CACHE_STATS.hits == 1 and counted.batches == 0       # no teacher forward
    assert torch.equal(reused.embeddings, built.embeddings) and on_the_file(reused)
    rows, columns = torch.tensor([3, 0, 15]), torch.tensor([1, 0, 1])
    assert torch.equal(reused.lookup(rows, columns), in_memory.lookup(rows, columns))
    assert reused.lookup(rows, columns).dtype == torch.float32

    float32 = TeacherCache.load_or_build(teacher, dataset, tmp_path, batch_size=4, store=True)   # another file
    assert float32.path != built.path and float32.embeddings.dtype == torch.float32
    assert torch.equal(float32.embeddings.half(), built.embeddings)


def test_store_refuses_a_truncated_file_and_a_wrong_header_with_one_line(tmp_path):
    teacher, dataset = tiny_torch_teacher(32), SyntheticFaces(3, 2, seed=0)
    path = build_store(teacher, dataset, tmp_path).path
    good = path.read_bytes()
    assert len(good) == file_size((6, 2, 32), "float16")

    def refused(data: bytes, match: str) -> None:
        path.write_bytes(data)
        with pytest.raises(DataError, match=match) as error:
            build_store(teacher, dataset, tmp_path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)

    refused(good[:len(good) - 100], "truncated or damaged")                   # cut short
    refused(good[:HEADER_BYTES // 2], "truncated or damaged")                 # cut after the header's JSON
    refused(good[:40], "unreadable teacher-target store header")              # cut inside it
    refused(b"PK" + good[2:], "bad magic")                                    # another file under its name
    header = json.loads(good[len(MAGIC):HEADER_BYTES].decode())

    def with_header(**changes) -> bytes:
        text = (MAGIC + json.dumps({**header, **changes}).encode() + b"\n").ljust(HEADER_BYTES, b" ")
        return text + good[HEADER_BYTES:]

    refused(with_header(key="0" * 64), "holds key 0000000000000000..., this run needs")
    refused(with_header(version=99), "version 99")
    refused(with_header(shape=[6, 2, 16]), "holds shape")
    refused(with_header(dtype="int8"), "not \\[N, V, D\\]")
    path.write_bytes(good)
    assert build_store(teacher, dataset, tmp_path).from_disk                   # the intact file is served


KILLED_BUILD = """
    import os, signal, sys
    from facekd.data import SyntheticFaces
    from facekd.training import TeacherCache
    from tests.test_teachers import tiny_torch_teacher

    teacher, calls = tiny_torch_teacher(32), [0]
    real = teacher.embed

    def dying(images):                                   # killed while embedding the 3rd of 4 batches
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(images)

    teacher.embed = dying
    TeacherCache.load_or_build(teacher, SyntheticFaces(4, 4, seed=3), sys.argv[1], batch_size=4, dtype="float16",
                               store=True, partial_every_s=0.0)
"""


def resumes_the_missing_rows(cache_dir: Path, reference: torch.Tensor, done: int) -> None:
    """The store in ``cache_dir`` has its first ``done`` rows; a rebuild embeds only the rest."""
    teacher, dataset = tiny_torch_teacher(32), SyntheticFaces(4, 4, seed=3)
    path = TeacherCache.store_file_for(cache_dir, cache_key(teacher, dataset), "float16")
    partial = TargetStore.open(path)
    assert not partial.complete and partial.missing().tolist() == list(range(done, 16))
    CACHE_STATS.reset()
    resumed = FailingTeacher(teacher)
    cache = build_store(resumed, dataset, cache_dir)
    assert resumed.batches == (16 - done) // 4 and CACHE_STATS.misses == 1
    assert torch.equal(cache.embeddings, reference)
    assert build_store(teacher, dataset, cache_dir).from_disk


def test_interrupted_store_build_resumes_with_only_the_missing_rows(tmp_path):
    """Interrupted in Python after two of four batches (rows synced as the build stops), or killed
    by SIGKILL in the third (rows synced every batch): the next build embeds only what is missing."""
    from tests.test_faults import killed, run_python

    teacher, dataset = tiny_torch_teacher(32), SyntheticFaces(4, 4, seed=3)   # 16 samples, 4 batches of 4
    reference = build_store(teacher, dataset, tmp_path / "ref").embeddings
    with pytest.raises(KeyboardInterrupt):
        build_store(FailingTeacher(teacher, fail_after=2), dataset, tmp_path / "interrupted")
    resumes_the_missing_rows(tmp_path / "interrupted", reference, done=8)

    child = run_python(KILLED_BUILD, tmp_path / "killed", cwd=tmp_path)
    assert killed(child), child.stderr
    resumes_the_missing_rows(tmp_path / "killed", reference, done=8)


def test_store_build_without_a_progress_bar_logs_its_progress_at_each_sync(tmp_path, caplog):
    """A build logged to a file (no bar) says how far it is at every sync: here after each batch of 4."""
    teacher, dataset = tiny_torch_teacher(32), SyntheticFaces(4, 4, seed=3)   # 16 samples
    with caplog.at_level("INFO", logger="facekd.training.teacher_cache"):
        build_store(teacher, dataset, tmp_path, partial_every_s=0.0)
    counts = [message.split(": ")[1].split(" rows")[0] for message in caplog.messages if "rows embedded" in message]
    assert counts == ["4 of this rank's 16", "8 of this rank's 16", "12 of this rank's 16", "16 of this rank's 16"]


# --------------------------------------------------------------------------- store-fed runs

STORE_RUN = {"targets": "view_cache", "views": 3, "store": True, "cache_dtype": "float16", "center": True}


def test_store_fed_run_keeps_targets_on_disk_and_resumes_bit_identically(tmp_path, teacher_ckpt):
    """View targets (mixup views) and the centring statistics from stores: both caches are the
    mapped files; stopped after step 7 and resumed, the run ends with the uninterrupted weights."""
    over = student_overrides(teacher_ckpt, tmp_path / "cache", teacher=STORE_RUN, augment=AUGMENT,
                             losses=ALL_STUDENT_LOSSES[:3],
                             train={"epochs": 2, "checkpoint_every_steps": 3, "keep_step_checkpoints": 1})
    cfg_a = tiny_config(tmp_path, "a", **over)
    full = Trainer(cfg_a, StudentTask(cfg_a))
    full.fit()
    task = full.task
    assert on_the_file(task.targets.cache) and on_the_file(task.cache)       # view and clean caches alike
    assert task.targets.cache.embeddings.shape == (len(task.dataset), 3, 32)
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".store", ".store"]   # no .pt copy

    cfg_b = tiny_config(tmp_path, "b", **over)
    with pytest.raises(Interrupt):
        Trainer(cfg_b, StudentTask(cfg_b), hooks=[StopAt(7)]).fit()
    CACHE_STATS.reset()
    resumed = Trainer(cfg_b, StudentTask(cfg_b))
    resumed.fit(resume=str(Path(cfg_b.output_dir) / "last.pt"))
    assert resumed.step == full.step == 8 and CACHE_STATS.hits == 2 and CACHE_STATS.misses == 0
    expected, actual = trainable_state(full), trainable_state(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


# --------------------------------------------------------------------------- two ranks

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_builds(rank: int, world: int, port: int, root: str, shared: bool) -> None:
    """One gloo rank builds the store of a tiny teacher; rank 1 sees another folder unless ``shared``."""
    import torch.distributed as dist

    from facekd.training import teacher_cache

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    embedded = []
    real = teacher_cache.fill_store

    def counting(*args, **kwargs):
        embedded.append(real(*args, **kwargs))
        return embedded[-1]

    teacher_cache.fill_store = counting
    teacher_cache.all_gather_rows = None                  # the store never gathers rows
    cache_dir = Path(root) / ("cache" if shared or rank == 0 else "elsewhere")
    try:
        cache = build_store(tiny_torch_teacher(32), SyntheticFaces(4, 4, seed=3), cache_dir,
                            dist=DistInfo(rank, world))
        result = {"embedded": embedded, "rows": cache.embeddings.clone()}
    except DataError as error:
        result = {"error": str(error)}
    torch.save(result, Path(root) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "rank1_without_the_file"])
def test_two_ranks_fill_one_store_each_with_its_half_or_both_stop(tmp_path, monkeypatch, shared):
    """Two gloo ranks: each embeds and writes half the rows of one store (nothing gathered) and
    both serve the whole store; when rank 1 cannot see the file, both stop with one DataError
    instead of waiting for each other."""
    import torch.multiprocessing as mp

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("gloo is not available")
    if os.path.isdir("/sys/class/net/lo") and "GLOO_SOCKET_IFNAME" not in os.environ:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")      # one host: no hostname resolution
    mp.start_processes(_rank_builds, args=(2, _free_port(), str(tmp_path), shared), nprocs=2, join=True,
                       start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    if not shared:
        for result in results:
            assert result["error"].startswith(str(tmp_path / "elsewhere")) and result["error"].endswith(
                "cannot read the teacher-target store (No such file or directory) (rank 1)")
        return
    assert [r["embedded"] for r in results] == [[8], [8]]
    reference = build_store(tiny_torch_teacher(32), SyntheticFaces(4, 4, seed=3), tmp_path / "one")
    for result in results:
        assert torch.equal(result["rows"], reference.embeddings)


def test_ddp_student_fed_from_the_store_stays_in_sync(tmp_path, teacher_ckpt):
    """train-student on two gloo ranks with teacher.store: the ranks fill one store file between
    them (no .pt cache, nothing gathered) and end with the same weights."""
    from tests.test_distributed import REPO_ROOT, TINY_MODEL, TINY_RUN, _sets, check_ranks_in_sync, run_ddp

    cache_dir = tmp_path / "cache"
    command = ["train-student", "--config", str(REPO_ROOT / "configs" / "student_synthetic.yaml"),
               "--output-dir", str(tmp_path / "run"),
               *_sets(f"model={TINY_MODEL}", f"teacher.model={TINY_MODEL}", f"teacher.checkpoint={teacher_ckpt}",
                      "teacher.train_config=null", f"teacher.cache_dir={cache_dir}", "teacher.cache=true",
                      "teacher.store=true", "teacher.cache_dtype=float16",
                      "losses=[{name: arcface, weight: 1.0, scale: 32.0, margin: 0.3}, "
                      "{name: triplet_distill, weight: 1.0}]", *TINY_RUN, "val.every_epochs=0")]
    check_ranks_in_sync(run_ddp(tmp_path / "dumps", command))
    stores = list(cache_dir.iterdir())
    assert [p.suffix for p in stores] == [".store"]
    assert TargetStore.open(stores[0]).complete
