"""Keep the training step's freed memory in the process (glibc), instead of faulting it in every step.

A training step allocates and frees the same activations every time.  glibc's malloc serves large
blocks with ``mmap`` and gives memory back at the heap's top, so the next step faults the same pages
in again: on a 2-core VM, ~30,000 minor page faults per second and rank, half of the CPU time in the
kernel, 37.6 instead of 48 steps/min for issue 34's long run (bench/README.md, "Page faults of the
training step").  :func:`keep_freed_memory` sets ``M_MMAP_THRESHOLD`` to glibc's largest (32 MiB:
blocks up to that size come from the heap) and ``M_TRIM_THRESHOLD`` to 1 GiB (the heap is not
trimmed below that), as the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables would.
The process then holds its peak memory between steps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

LOG = logging.getLogger(__name__)

#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's largest mmap threshold on 64-bit systems, and the heap kept untrimmed
MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES = 32 << 20, 1 << 30
#: environment variables that leave malloc as it is: facekd's switch (0) and glibc's own settings
OPT_OUT = "FACEKD_KEEP_FREED_MEMORY"
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks (see the module docstring); True when it did.

    Nothing is changed where malloc is not glibc's, where ``FACEKD_KEEP_FREED_MEMORY=0``, or where
    the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (theirs stand).
    """
    if os.environ.get(OPT_OUT, "1") == "0" or any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version       # glibc only: another libc's mallopt takes other parameters
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    done = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and done
    if done:
        LOG.debug("malloc keeps freed blocks up to %d MiB (mallopt)", MMAP_THRESHOLD_BYTES >> 20)
    return done
