"""What the CPU offers INT8 inference: AVX2, AVX-512, VNNI, AMX (read from ``/proc/cpuinfo``).

onnxruntime's int8 convolutions and matrix products are fastest with VNNI (``avx512_vnni`` or
``avx_vnni``: one instruction per 4 int8 products) or AMX tiles (``amx_int8``); with AVX2 alone
they emulate the dot product in three instructions, so INT8's speed-up over fp32 is smaller.
The export command and ``bench/bench_inference.py`` print this beside the measured ratio.

Without VNNI or AMX those three instructions are not exact: ``VPMADDUBSW`` adds two uint8 x int8
products into a *saturating* int16, and two products of full-range weights reach
2 x 255 x 127 = 64,770 > 32,767.  :func:`u8s8_saturates` names such CPUs; 7-bit weights
(``reduce_range``: at most 64, 2 x 255 x 64 = 32,640) never saturate (bench/README.md, "8-bit weights
saturate without VNNI").
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

#: capability name -> the ``/proc/cpuinfo`` flags that provide it (any of them)
INT8_FEATURES = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "VNNI": ("avx512_vnni", "avx_vnni"),
                 "AMX-INT8": ("amx_int8",)}


def cpu_flags(cpuinfo: Optional[str] = None) -> set:
    """The first processor's flags in ``cpuinfo`` (default: this machine's ``/proc/cpuinfo``; empty elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def int8_capability(cpuinfo: Optional[str] = None) -> Dict[str, bool]:
    """``{"AVX2": bool, "AVX-512": bool, "VNNI": bool, "AMX-INT8": bool}`` of this CPU (or of ``cpuinfo``)."""
    flags = cpu_flags(cpuinfo)
    return {name: any(f in flags for f in wanted) for name, wanted in INT8_FEATURES.items()}


def describe_int8_capability(found: Optional[Dict[str, bool]] = None) -> str:
    """One line, e.g. ``CPU INT8 support: AVX2 yes, AVX-512 no, VNNI no, AMX-INT8 no`` (default: this CPU's)."""
    found = int8_capability() if found is None else found
    line = "CPU INT8 support: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in found.items())
    return line + ("; 8-bit weights saturate here (use 7-bit: reduce_range)" if u8s8_saturates(found) else "")


def u8s8_saturates(found: Optional[Dict[str, bool]] = None) -> bool:
    """True on an x86 CPU (AVX2 or AVX-512) without VNNI and AMX (default: this one; or ``found``, an
    :func:`int8_capability` result): its uint8 x int8 kernels saturate with 8-bit weights."""
    found = int8_capability() if found is None else found
    return (found["AVX2"] or found["AVX-512"]) and not (found["VNNI"] or found["AMX-INT8"])
