"""Killed runs and full disks: nothing is lost, nothing half-written is read.

Each kill is a real ``SIGKILL`` of a child process (no ``finally``, no atexit, no flush), placed
deterministically by the child itself: after an optimiser step, half-way through writing a
checkpoint, a teacher-cache batch or an aligned image.  The parent then restarts the job the
way a user would (``facekd train-teacher --resume``, ``facekd align`` again, building the cache
again) and compares the result with an uninterrupted run.  Tiny models, synthetic data, CPU.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from facekd.errors import DiskFullError
from facekd.fileio import atomic_write_text
from facekd.training import load_checkpoint
from facekd.training.checkpoint import atomic_save

from test_data_align import _make_photo_tree
from test_training import write_config

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
TRAIN = {"epochs": 3, "checkpoint_every_steps": 3, "keep_step_checkpoints": 0}   # 4 steps per epoch


def script(*parts: str) -> str:
    """Indented code blocks joined into one program."""
    return "\n".join(textwrap.dedent(part) for part in parts)


def run_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (one thread, this checkout first on the path)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}"}
    return subprocess.run([sys.executable, "-c", script(code), *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT_S, env=env, cwd=cwd)


def facekd(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m facekd ARGV`` in a fresh interpreter."""
    return run_python("import sys; from facekd.cli import main; sys.exit(main(sys.argv[1:]))", *argv, cwd=cwd)


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -signal.SIGKILL


def weights(path: Path) -> Dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(expected: Dict[str, torch.Tensor], actual: Dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key       # bit-identical on CPU


def temporaries(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Dict[str, torch.Tensor]:
    """Final weights of an uninterrupted ``facekd train-teacher`` run (12 steps)."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "ref.yaml", root / "run", train=TRAIN)
    done = facekd("train-teacher", "--config", str(config), cwd=root)
    assert done.returncode == 0, done.stderr
    state = load_checkpoint(root / "run" / "last.pt")
    assert state["step"] == 12 and state["epoch"] == 3
    return state["state_dict"]


# --------------------------------------------------------------------------- training

KILL_AFTER_STEP = """
    import os, signal, sys
    from facekd.config import load_config
    from facekd.training import Hook, run_training

    class KillAfter(Hook):
        def after_step(self, trainer, batch, loss, terms):
            if trainer.step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    run_training(load_config(sys.argv[1]), "teacher", hooks=[KillAfter()])
"""

KILL_DURING_SAVE = """
    import io, os, signal, sys
    import torch
    from facekd.config import load_config
    from facekd.training import run_training

    real_save, calls = torch.save, [0]

    def dying_save(obj, stream, *args, **kwargs):
        calls[0] += 1
        if calls[0] == int(sys.argv[2]):          # write half of this checkpoint, then die
            buffer = io.BytesIO()
            real_save(obj, buffer)
            stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            stream.flush()
            os.fsync(stream.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, stream, *args, **kwargs)

    torch.save = dying_save
    run_training(load_config(sys.argv[1]), "teacher")
"""


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path, reference):
    """Killed after step 7 (last.pt is step 6, half-way through epoch 2), resumed with --resume.

    Checkpoints are written in a background thread (``train.async_checkpoint``): should step
    6's write not have finished when the kill lands, last.pt is step 3's, also mid-epoch.
    """
    config = write_config(tmp_path / "run.yaml", tmp_path / "run", train=TRAIN)
    child = run_python(KILL_AFTER_STEP, config, 7, cwd=tmp_path)
    assert killed(child), child.stderr
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["step"], state["epoch"], state["sampler"]["batches_done"]) in ((6, 1, 2), (3, 0, 3))

    resumed = facekd("train-teacher", "--config", str(config), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(tmp_path / "run" / "last.pt")
    assert final["step"] == 12
    assert_same_weights(reference, final["state_dict"])


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, reference):
    """Killed half-way through the second checkpoint write (step 6): last.pt is still step 3's."""
    config = write_config(tmp_path / "run.yaml", tmp_path / "run", train=TRAIN)
    child = run_python(KILL_DURING_SAVE, config, 2, cwd=tmp_path)
    assert killed(child), child.stderr
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["step"] == 3                 # the previous checkpoint loads
    leftovers = temporaries(run)
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")  # the half-written temporary
    resumed = facekd("train-teacher", "--config", str(config), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference, weights(run / "last.pt"))
    assert temporaries(run) == []                                      # the killed writer's file was swept


def test_only_temporaries_of_dead_writers_on_this_host_are_swept(tmp_path):
    import socket

    from facekd.fileio import remove_stale_temporaries

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(gone.stdout), socket.gethostname()
    target = tmp_path / "last.pt"
    dead = tmp_path / f".last.pt.{host}.{dead_pid}.0a1b2c3d.tmp"
    mine = tmp_path / f".last.pt.{host}.{os.getpid()}.0a1b2c3d.tmp"
    elsewhere = tmp_path / f".last.pt.other-host.{dead_pid}.0a1b2c3d.tmp"
    other_target = tmp_path / f".best.pt.{host}.{dead_pid}.0a1b2c3d.tmp"
    for path in (dead, mine, elsewhere, other_target):
        path.write_bytes(b"half")
    assert remove_stale_temporaries(target) == [dead]
    assert not dead.exists() and mine.exists() and elsewhere.exists() and other_target.exists()
    atomic_save({"step": 1}, tmp_path / "best.pt")                     # checkpoint writes sweep first
    assert not other_target.exists() and load_checkpoint(tmp_path / "best.pt")["step"] == 1


def test_full_disk_while_writing_a_checkpoint(tmp_path, monkeypatch, capsys):
    """ENOSPC during the second checkpoint: exit 2, one line naming last.pt, step 3's file intact."""
    from facekd.cli import main

    config = write_config(tmp_path / "run.yaml", tmp_path / "run", train=TRAIN)
    real_save, calls = torch.save, [0]

    def full_disk_save(obj, stream, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            stream.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_save)
    assert main(["train-teacher", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    last = tmp_path / "run" / "last.pt"
    assert err[-1] == (f"facekd train-teacher: error: {last}: no space left on device while writing it "
                       f"(nothing was replaced: the previous file, if any, is unchanged)")
    monkeypatch.undo()
    assert load_checkpoint(last)["step"] == 3 and temporaries(tmp_path / "run") == []


def test_full_disk_in_atomic_writes_is_a_clear_error(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    atomic_save({"step": 1}, tmp_path / "last.pt")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(DiskFullError, match=r"results\.json: no space left on device") as caught:
        atomic_write_text(target, "new")
    assert caught.value.errno == errno.ENOSPC and caught.value.path == str(target)
    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DiskFullError, match=r"last\.pt: no space left"):
        atomic_save({"step": 2}, tmp_path / "last.pt")
    monkeypatch.undo()
    assert target.read_text() == "old" and load_checkpoint(tmp_path / "last.pt")["step"] == 1
    assert temporaries(tmp_path) == []
    other = OSError(errno.EACCES, "Permission denied")                 # other errors pass unchanged

    def denied(*args, **kwargs):
        raise other

    monkeypatch.setattr(Path, "write_text", denied)
    with pytest.raises(PermissionError):
        atomic_write_text(target, "new")


# --------------------------------------------------------------------------- teacher cache

CACHE_SETUP = """
    import os, signal, sys
    from facekd.config import load_config
    from facekd.data import SyntheticFaces
    from facekd.teachers import Framing, TorchTeacher, load_teacher
    from facekd.training import TeacherCache

    def build(checkpoint, cache_dir, kill_at_batch=0):
        frozen = load_teacher(load_config(None, [f"teacher.checkpoint={checkpoint}"]).teacher)
        teacher = TorchTeacher(frozen, framing=Framing(32))
        if kill_at_batch:
            real, calls = teacher.embed, [0]

            def dying(images):
                calls[0] += 1
                if calls[0] == kill_at_batch:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(images)

            teacher.embed = dying
        return TeacherCache.load_or_build(teacher, SyntheticFaces(4, 3, seed=1), cache_dir, batch_size=3,
                                          partial_every_s=0.0)
"""


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    config = write_config(root / "teacher.yaml", root / "run", train={"max_steps_per_epoch": 2})
    done = facekd("train-teacher", "--config", str(config), cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "run" / "last.pt"


def test_killed_teacher_cache_build_is_rebuilt_not_read(tmp_path, teacher_checkpoint):
    """Killed at the 3rd of 4 batches: the next build is a miss, resumes, and equals a clean build;
    a cache file cut in half is rebuilt too."""
    reference = run_python(script(CACHE_SETUP, """
    import torch
    cache = build(sys.argv[1], sys.argv[2])
    torch.save(cache.embeddings, sys.argv[3])
    """), teacher_checkpoint, tmp_path / "clean", tmp_path / "expected.pt", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    assert expected.shape == (12, 2, 32)

    cache_dir = tmp_path / "cache"
    child = run_python(script(CACHE_SETUP, "build(sys.argv[1], sys.argv[2], kill_at_batch=3)"),
                       teacher_checkpoint, cache_dir, cwd=tmp_path)
    assert killed(child), child.stderr
    assert [p.name for p in cache_dir.glob("teacher_*.pt") if ".partial" not in p.name] == []   # no cache file
    assert len(list(cache_dir.glob("teacher_*.partial.pt"))) == 1                                # progress kept

    check = """
    import torch
    from facekd.training import CACHE_STATS
    CACHE_STATS.reset()
    cache = build(sys.argv[1], sys.argv[2])
    assert not cache.from_disk and CACHE_STATS.misses == 1, "a killed build must not be read as a cache"
    assert torch.equal(cache.embeddings, torch.load(sys.argv[3], weights_only=True))
    again = build(sys.argv[1], sys.argv[2])
    assert again.from_disk and CACHE_STATS.hits == 1
    print(cache.path)
    """
    rebuilt = run_python(script(CACHE_SETUP, check), teacher_checkpoint, cache_dir, tmp_path / "expected.pt",
                         cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert list(cache_dir.glob("teacher_*.partial.pt")) == []                                    # cleaned up

    cache_file = Path(rebuilt.stdout.strip().splitlines()[-1])
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[: len(data) // 2])              # e.g. copied by a tool that was killed
    truncated = run_python(script(CACHE_SETUP, check), teacher_checkpoint, cache_dir, tmp_path / "expected.pt",
                           cwd=tmp_path)
    assert truncated.returncode == 0, truncated.stderr
    assert "unreadable teacher cache" in truncated.stderr


# --------------------------------------------------------------------------- align

KILL_DURING_IMAGE_WRITE = """
    import os, signal, sys
    import facekd.data.image_io as image_io
    from facekd.cli import main
    from facekd.fileio import atomic_path

    calls = [0]
    real = image_io.atomic_write_bytes

    def dying_write(path, data):
        calls[0] += 1
        if calls[0] == int(sys.argv[3]):          # half of this image's temporary file, then die
            with atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        return real(path, data)

    image_io.atomic_write_bytes = dying_write
    sys.exit(main(["align", sys.argv[1], sys.argv[2], "--no-progress"]))
"""


def images_of(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name != "align_log.txt"}


def test_align_killed_and_restarted_gives_the_same_tree(tmp_path):
    from facekd.data import read_align_log

    from conftest import SHARED_DATA

    src = _make_photo_tree(tmp_path, SHARED_DATA if SHARED_DATA.is_dir() else None)
    full = facekd("align", str(src), str(tmp_path / "full"), "--no-progress", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    expected = images_of(tmp_path / "full")
    assert sorted(expected) == ["s1/1.jpg", "s2/1.jpg", "s3/1.jpg"]

    dst = tmp_path / "restarted"
    child = run_python(KILL_DURING_IMAGE_WRITE, src, dst, 2, cwd=tmp_path)
    assert killed(child), child.stderr
    assert len(images_of(dst)) == 1 and len(temporaries(dst)) == 1       # one done, one half-written temp
    again = facekd("align", str(src), str(dst), "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert images_of(dst) == expected                                     # byte-identical faces
    log, reference_log = read_align_log(dst / "align_log.txt"), read_align_log(tmp_path / "full" / "align_log.txt")
    for kind in ("no_face", "unreadable", "center_fallback"):
        assert log[kind] == reference_log[kind]
    assert log["counts"]["existing"] == 1 and log["counts"]["aligned"] == 2    # the restart redid the rest
    assert log["counts"]["total"] == reference_log["counts"]["total"] == 5
