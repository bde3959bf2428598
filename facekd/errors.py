"""Exceptions raised on bad input.  Each names the offending file or key."""
from __future__ import annotations

import errno
import os
from typing import Optional, Union


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of ``error``'s message, at most ``limit`` characters, or its type's name when the
    message is empty: how a library's multi-line exception (onnxruntime, onnx, gloo) is quoted in one
    of facekd's one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


class FaceKDError(Exception):
    """Base class of facekd's user-facing errors."""


class ConfigError(FaceKDError, ValueError):
    """A config file or ``--set`` override is invalid (unknown key, bad type)."""


class DataError(FaceKDError, ValueError):
    """A data file is missing, unreadable or malformed.

    The message always starts with the path, so a crash in the middle of an epoch
    says which file caused it.
    """

    def __init__(self, path: Union[str, os.PathLike], problem: Optional[str] = None) -> None:
        if problem is None:   # one ready-made message (how DataLoader workers re-raise errors)
            self.path, self.problem = None, str(path)
            super().__init__(self.problem)
            return
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(FaceKDError, ValueError):
    """A checkpoint does not match the model it is loaded into."""


class TrainingError(FaceKDError, RuntimeError):
    """Training cannot continue (e.g. the loss became NaN or infinite)."""


class DiskFullError(FaceKDError, OSError):
    """A write failed because the disk (or quota) is full; the previous file is unchanged."""

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = os.fspath(path)
        super().__init__(errno.ENOSPC, f"{self.path}: no space left on device while writing it "
                                       "(nothing was replaced: the previous file, if any, is unchanged)")

    def __str__(self) -> str:
        return self.strerror
