"""Checkpoints written while training goes on: :func:`host_copy` takes a copy of the state at
the step it describes, :class:`CheckpointWriter` writes it (one write at a time, in a
background thread when asked).  The files themselves are written atomically by
:mod:`facekd.training.checkpoint`.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

import torch

LOG = logging.getLogger(__name__)


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor (in nested dicts, lists, tuples) copied to host memory.

    Training continues to update parameters and optimiser state in place; a checkpoint
    written in the background must hold copies taken at the step it describes.
    """
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, host_copy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Runs checkpoint writes one at a time, in a background thread when ``background``.

    :meth:`submit` first waits for the previous write; :meth:`wait` joins the current one
    and re-raises an error it hit (``raise_errors=False`` only logs it).
    """

    def __init__(self, background: bool = True) -> None:
        self.background = bool(background)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, write: Callable[[], None]) -> None:
        """Run ``write()`` (after the previous write has finished)."""
        self.wait()
        if not self.background:
            write()
            return
        self._thread = threading.Thread(target=self._run, args=(write,), name="facekd-checkpoint", daemon=False)
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as error:   # re-raised in the training thread by wait()
            self._error = error

    @property
    def busy(self) -> bool:
        """A write is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, raise_errors: bool = True) -> None:
        """Block until the current write (if any) is done."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            if raise_errors:
                raise error
            LOG.error("writing a checkpoint failed: %s", error)
