"""File helpers: atomic writes and the trust policy for pickle-based files.

Atomic writes: a reader never sees a half-written file, a crash never leaves one behind, and a
failed write (e.g. a full disk) raises :class:`OSError` naming the target with the old file intact.

Pickles: PyTorch checkpoints and insightface ``.bin`` sets are pickles, and unpickling an
untrusted file can run arbitrary code.  facekd reads them with restricted loaders by default
(tensors, numbers, strings, bytes, lists/dicts/tuples, plain numpy arrays); a file that needs
anything else is refused with an error naming it.  Files you trust (e.g. old checkpoints of
other tools) can be loaded unrestricted with the environment variable
``FACEKD_TRUST_PICKLES=1``, the ``facekd ... --trust-pickles`` flag, or ``trusted=True``.
"""
from __future__ import annotations

import errno
import glob
import os
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Union

from facekd.errors import DiskFullError

PathLike = Union[str, os.PathLike]

#: environment variable that lifts the restricted unpickling (``1``/``true``/``yes``)
TRUST_PICKLES_ENV = "FACEKD_TRUST_PICKLES"
#: how a refusal tells the user to opt in
TRUST_HINT = f"set {TRUST_PICKLES_ENV}=1 or pass --trust-pickles"


def pickles_trusted(trusted: Optional[bool] = None) -> bool:
    """Whether pickle-based files may be loaded unrestricted.

    ``trusted`` (an explicit argument) wins; ``None`` reads :data:`TRUST_PICKLES_ENV`.
    """
    if trusted is not None:
        return bool(trusted)
    return os.environ.get(TRUST_PICKLES_ENV, "").strip().lower() in ("1", "true", "yes")


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{socket.gethostname()}."


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's process
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> List[Path]:
    """Delete the temporaries of ``path`` left by writers on this host that were killed.

    A killed process (``SIGKILL``, power loss) never reaches the cleanup of
    :func:`atomic_path`; its half-written temporary stays beside the target.  Only files
    named by :func:`atomic_path` on this host whose process no longer exists are removed.
    Returns the removed paths.
    """
    path = Path(path)
    prefix = _temporary_prefix(path)
    removed = []
    for tmp in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path: PathLike, remove_stale: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``.

    The temporary name is unique per host, process and call (parallel writers of the same
    target do not collide) and sits in the target's directory, so the final ``os.replace`` is
    atomic.  If the body raises, the temporary file is removed and ``path`` is left as it was;
    a full disk (``ENOSPC``/``EDQUOT``) is re-raised as :class:`~facekd.errors.DiskFullError`
    (an ``OSError``) whose message names ``path`` and says that there is no space left.
    ``remove_stale`` first deletes temporaries of killed writers (:func:`remove_stale_temporaries`;
    it lists the directory, so it is meant for files such as checkpoints, not for each of
    thousands of images in one folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        remove_stale_temporaries(path)
    tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if _disk_full(error):
            raise DiskFullError(path) from error
        raise


def _disk_full(error: BaseException) -> bool:
    """True for the ``OSError``s of a full disk or quota, also when wrapped (``torch.save``)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
