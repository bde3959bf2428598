"""Training checkpoints: atomic writes and the RNG state they carry.

A training checkpoint is a dict (``torch.save``) with

=================  ============================================================
``format``         :data:`CHECKPOINT_FORMAT` (an int, bumped on layout changes)
``model_config``   the backbone's ``ModelConfig`` as a dict (rebuild with ``build_model``)
``state_dict``     the backbone's weights (what :func:`facekd.models.load_pretrained` reads)
``head``           the margin head, if any: ``{"name", "params", "num_classes", "state_dict"}``
``losses``         state of every loss module (heads, adapters) for ``--resume``
``classes``        the training identities (label -> name); ``dataset_fingerprint``
``optimizer``      optimiser state; ``scheduler`` its LR schedule state; ``scaler`` AMP scaler
``sampler``        the batch sampler's position (``epoch``, ``batches_done`` and its own state)
``epoch``/``step`` the epoch being run and the number of optimiser steps taken
``rng``            python / numpy / torch (and CUDA) generator states, as plain data
``config``         the full ``ExperimentConfig`` as a dict; ``metrics`` the latest values
=================  ============================================================

Writes go to a temporary file in the same directory that is then ``os.replace``-d over
the target, so a crash never leaves a partial ``last.pt``, and a full disk raises
:class:`~facekd.errors.DiskFullError` naming the file with the previous one intact.

Everything in a checkpoint is tensors, numbers, strings and containers (the numpy RNG state is
stored as lists), so it loads with ``torch.load(weights_only=True)``
(:func:`facekd.models.read_checkpoint`); older checkpoints holding the numpy state as an array
load too.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from facekd.fileio import PathLike, atomic_path
from facekd.models.checkpoint import read_checkpoint

CHECKPOINT_FORMAT = 1


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Temporaries of ``path`` that killed runs left behind are removed first.
    """
    with atomic_path(path, remove_stale=True) as tmp, open(tmp, "wb") as stream:
        torch.save(obj, stream)
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)


def atomic_copy(source: PathLike, target: PathLike) -> Path:
    """Copy a finished checkpoint file atomically (e.g. ``last.pt`` -> ``best.pt``)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return Path(target)


def load_checkpoint(path: PathLike, trusted: Optional[bool] = None) -> Dict[str, Any]:
    """Read a checkpoint on CPU (safe loading unless ``trusted``, see :func:`read_checkpoint`);
    a missing, corrupt or refused file raises ``DataError`` naming it."""
    return read_checkpoint(path, trusted=trusted)


def rng_state() -> Dict[str, Any]:
    """The python, numpy, torch and (if present) CUDA generator states, as plain data.

    numpy's legacy state ``(name, uint32[624] keys, pos, has_gauss, cached_gaussian)`` is kept
    with the keys as a list of ints, so the checkpoint needs no numpy globals to unpickle.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generator states saved by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


#: what a shipped model keeps of a training checkpoint (:func:`strip_checkpoint`)
SHIPPED_KEYS = ("model_config", "state_dict", "teacher_center")


def write_shipped_model(state: Dict[str, Any], source: PathLike, target: PathLike,
                        state_dict: Optional[Dict[str, torch.Tensor]] = None, **extra: Any) -> Dict[str, Any]:
    """Write the shipped form of checkpoint ``state`` (read from ``source``) to ``target``.

    ``state_dict`` replaces the checkpoint's weights (a fine-tuned model of the same
    architecture); ``extra`` entries are added to the provenance, which is the checkpoint's own
    when it is already a shipped model, else built from its training config.  Returns the provenance.

    Raises:
        CheckpointError: ``state`` has no model config or weights.
    """
    from facekd.errors import CheckpointError

    missing = [key for key in SHIPPED_KEYS[:2] if key not in state]
    if missing:
        raise CheckpointError(f"{source}: not a facekd training checkpoint (no {', '.join(missing)})")
    provenance = state.get("provenance")
    if not isinstance(provenance, dict):
        config = state.get("config") or {}
        provenance = {"name": config.get("name"), "seed": config.get("seed"), "epoch": state.get("epoch"),
                      "step": state.get("step"), "best": state.get("best"), "source": os.fspath(source)}
    provenance = {**provenance, **extra}
    shipped = {"format": CHECKPOINT_FORMAT, **{k: state.get(k) for k in SHIPPED_KEYS}, "provenance": provenance}
    if state_dict is not None:
        shipped["state_dict"] = state_dict
    atomic_save(shipped, target)
    return provenance


def strip_checkpoint(source: PathLike, target: PathLike) -> Dict[str, Any]:
    """Write the weights and model config of training checkpoint ``source`` to ``target``.

    No optimiser, sampler, RNG or loss state (a MobileFaceNet: ~4 MB instead of ~8 MB):
    what ``facekd eval --model path=...`` and ``facekd export`` read, plus ``provenance`` —
    the run's name, seed, epoch, step and best verification — for the README beside it.
    Returns the provenance.

    Raises:
        CheckpointError: ``source`` is not a facekd training checkpoint (no model config or weights).
    """
    return write_shipped_model(read_checkpoint(source), source, target)
