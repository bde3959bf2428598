"""Untrusted files: checkpoints and insightface ``.bin`` sets are unpickled safely.

Every hostile file here would create a marker file when unpickled without restrictions; the
tests assert the clear error naming the file *and* that the marker never appears.
"""
from __future__ import annotations

import argparse
import builtins
import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from facekd.data.pairs import read_bin, write_bin
from facekd.errors import DataError
from facekd.fileio import TRUST_PICKLES_ENV, pickles_trusted
from facekd.models import read_checkpoint
from facekd.training.checkpoint import load_checkpoint, set_rng_state

from evaluation_fakes import TinyNet, tiny_arch  # noqa: F401  (tiny_arch: a fixture)


class MarkerBySystem:
    """Unpickling calls ``os.system('touch <marker>')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class MarkerByExec:
    """Unpickling calls ``builtins.exec`` on code that writes the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


PAYLOADS = {"os.system": (MarkerBySystem, "system"), "exec": (MarkerByExec, "exec")}


@pytest.fixture(autouse=True)
def untrusted(monkeypatch):
    """Run every test with the opt-in unset, whatever the caller's environment."""
    monkeypatch.delenv(TRUST_PICKLES_ENV, raising=False)


def hostile_checkpoints(tmp_path: Path, payload: str):
    """(marker, [torch zip checkpoint, plain pickle 'checkpoint']) both carrying the payload."""
    cls, _ = PAYLOADS[payload]
    marker = tmp_path / "marker"
    zipped, plain = tmp_path / "backbone.pth", tmp_path / "legacy.pt"
    torch.save({"state_dict": TinyNet().state_dict(), "extra": cls(marker)}, zipped)
    with open(plain, "wb") as handle:
        pickle.dump({"state_dict": {}, "extra": cls(marker)}, handle, protocol=2)
    return marker, [zipped, plain]


# --------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_hostile_checkpoint_is_refused_and_never_run(tmp_path, payload):
    marker, files = hostile_checkpoints(tmp_path, payload)
    for path in files:
        with pytest.raises(DataError) as caught:
            read_checkpoint(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: refused to load") and PAYLOADS[payload][1] in message
        assert "nothing was run" in message and TRUST_PICKLES_ENV in message
    assert not marker.exists()


def test_facekd_checkpoint_is_plain_data(tmp_path):
    """A real training checkpoint (model, head, optimiser, schedule, sampler, RNG, config) loads
    with plain ``weights_only=True`` — no allow-listed global at all — and resumes the RNG."""
    from facekd.training import run_training
    from test_training import tiny_config

    summary = run_training(tiny_config(tmp_path, "teacher", train={"max_steps_per_epoch": 2}), "teacher")
    state = torch.load(summary["last"], map_location="cpu", weights_only=True)   # no safe_globals
    assert state["step"] == 2 and state["head"]["state_dict"] and state["optimizer"]["state"]
    name, keys, pos, has_gauss, cached = state["rng"]["numpy"]
    assert name == "MT19937" and len(keys) == 624 and all(isinstance(k, int) for k in keys)
    np.random.seed(123)
    set_rng_state(load_checkpoint(summary["last"])["rng"])
    restored = np.random.get_state()
    assert restored[1].tolist() == keys and restored[2] == pos
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])


def test_older_checkpoint_with_numpy_rng_array_loads(tmp_path):
    """Checkpoints written before the plain-data RNG state hold a numpy array: still loadable."""
    path = tmp_path / "old.pt"
    old_rng = {"python": __import__("random").getstate(), "numpy": np.random.get_state(),
               "torch": torch.get_rng_state()}
    torch.save({"state_dict": TinyNet().state_dict(), "rng": old_rng}, path)
    state = read_checkpoint(path)
    assert isinstance(state["rng"]["numpy"][1], np.ndarray) and state["rng"]["numpy"][1].dtype == np.uint32
    expected = np.random.rand(4)
    set_rng_state(state["rng"])
    assert np.array_equal(np.random.rand(4), expected)


def test_insightface_plain_state_dict_loads(tmp_path):
    path = tmp_path / "backbone.pth"
    model = TinyNet()
    torch.save(model.state_dict(), path)
    loaded = read_checkpoint(path)
    assert set(loaded) == set(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_trusted_opt_in_loads_other_objects(tmp_path, monkeypatch):
    """A harmless non-tensor object (training scripts often save their argparse ``args``) is
    refused by default, loaded with trusted=True or the env var."""
    path = tmp_path / "other_tool.pt"
    torch.save({"state_dict": TinyNet().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(DataError, match=r"other_tool\.pt: refused to load.*argparse\.Namespace"):
        read_checkpoint(path)
    assert read_checkpoint(path, trusted=True)["args"].lr == 0.1
    monkeypatch.setenv(TRUST_PICKLES_ENV, "1")
    assert pickles_trusted() and read_checkpoint(path)["args"].lr == 0.1
    assert not pickles_trusted(False)
    with pytest.raises(DataError, match="refused"):
        read_checkpoint(path, trusted=False)                            # the argument wins


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_cli_refuses_hostile_checkpoint(tmp_path, capsys, payload, tiny_arch):
    from facekd.cli import main

    marker, (zipped, _) = hostile_checkpoints(tmp_path, payload)
    commands = [["export", str(zipped), "--arch", tiny_arch, "--out", str(tmp_path / "m.onnx")],
                ["eval", "--model", f"path={zipped},arch={tiny_arch}", "--val", "synthetic",
                 "--out", str(tmp_path / "r.json"), "--no-progress", "--latency-runs", "0", "--sizes", "none"]]
    for argv in commands:
        assert main(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].startswith(f"facekd {argv[0]}: error: {zipped}: refused to load")
    assert not marker.exists() and not (tmp_path / "m.onnx").exists() and not (tmp_path / "r.json").exists()


def test_cli_trust_flag_lifts_the_restriction(tmp_path, capsys, monkeypatch, tiny_arch):
    """With --trust-pickles the file is unpickled, and export fails later, on its content."""
    from facekd.cli import main

    path = tmp_path / "other_tool.pt"
    torch.save({"weights": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    argv = ["export", str(path), "--arch", tiny_arch, "--out", str(tmp_path / "m.onnx")]
    assert main(argv) == 2 and "refused to load" in capsys.readouterr().err
    assert main(argv + ["--trust-pickles"]) == 2
    err = capsys.readouterr().err
    assert "refused" not in err and "holds no state dict" in err
    assert TRUST_PICKLES_ENV not in os.environ                         # main() restores the environment


# --------------------------------------------------------------------------- insightface .bin

def test_hostile_bin_is_refused_and_never_run(tmp_path):
    for payload, (cls, word) in PAYLOADS.items():
        marker = tmp_path / f"marker_{payload}"
        path = tmp_path / f"lfw_{word}.bin"
        with open(path, "wb") as handle:
            pickle.dump(([b"a", b"b"], [cls(marker)]), handle, protocol=4)
        with pytest.raises(DataError) as caught:
            read_bin(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: refused to load") and word in message and "nothing was run" in message
        assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("issame_kind", ["list", "numpy_bool_array", "numpy_bool_scalars"])
def test_real_bin_layouts_load(tmp_path, protocol, issame_kind):
    """What insightface .bin files hold: (list of encoded images, issame list/array), any protocol."""
    images = [bytes([i]) * (5 + i) for i in range(6)]
    issame = [True, False, True]
    stored = {"list": issame, "numpy_bool_array": np.array(issame),
              "numpy_bool_scalars": [np.bool_(s) for s in issame]}[issame_kind]
    path = tmp_path / "set.bin"
    with open(path, "wb") as handle:
        pickle.dump((images, stored), handle, protocol=protocol)
    bins, flags = read_bin(path)
    assert bins == images and flags.tolist() == issame and flags.dtype == bool


def test_bin_images_as_uint8_arrays_load(tmp_path):
    path = tmp_path / "arrays.bin"
    with open(path, "wb") as handle:
        pickle.dump(([np.frombuffer(b"abc", np.uint8), np.frombuffer(b"de", np.uint8)], [True]), handle)
    assert read_bin(path)[0] == [b"abc", b"de"]


def test_bin_with_object_array_is_refused(tmp_path):
    path = tmp_path / "objects.bin"
    with open(path, "wb") as handle:
        pickle.dump(([b"a", b"b"], np.array([collections.OrderedDict()], dtype=object)), handle)
    with pytest.raises(DataError, match=r"objects\.bin: refused to load.*dtype object"):
        read_bin(path)


def test_bin_trust_opt_in(tmp_path, monkeypatch):
    path = tmp_path / "deque.bin"
    with open(path, "wb") as handle:
        pickle.dump((collections.deque([b"a", b"b"]), [True]), handle)
    with pytest.raises(DataError, match=r"deque\.bin: refused to load.*collections\.deque"):
        read_bin(path)
    with pytest.raises(DataError, match="images are a deque, not a list"):   # unpickled, then checked
        read_bin(path, trusted=True)
    write_bin(tmp_path / "ok.bin", [b"x", b"y"], [False])
    monkeypatch.setenv(TRUST_PICKLES_ENV, "1")
    assert read_bin(tmp_path / "ok.bin")[1].tolist() == [False]
