"""The results JSON of ``facekd eval`` (schema :data:`RESULTS_SCHEMA`, described in
:mod:`facekd.evaluation.runner`): writing, reading, merging, and the environment it records."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, Sequence, Union

from facekd.errors import DataError
from facekd.fileio import atomic_write_text

RESULTS_SCHEMA = "facekd.eval/1"


def environment(device: str) -> Dict[str, Any]:
    """Versions and hardware the numbers were measured on (latency depends on them)."""
    import torch

    from facekd import __version__

    info = {"facekd": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# --------------------------------------------------------------------------- JSON I/O

def save_results(results: Dict[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write the results JSON atomically (temp file + rename)."""
    return atomic_write_text(path, json.dumps(results, indent=1, allow_nan=True))


def load_results(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a results JSON written by :func:`save_results`; errors name the file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(path, "results file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"not a readable results JSON ({error})") from None
    if not isinstance(data, dict) or data.get("schema") != RESULTS_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise DataError(path, f"not a facekd results file (schema {found!r}, expected {RESULTS_SCHEMA!r})")
    for key in ("models", "val_sets"):
        if not isinstance(data.get(key), list):
            raise DataError(path, f"results file has no {key!r} list")
    return data


def merge_results(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Combine several results files: models appended, val sets united by name."""
    if not results:
        raise ValueError("no results to merge")
    merged = dict(results[0])
    merged["models"] = [m for r in results for m in r["models"]]
    by_name: Dict[str, Any] = {}
    for r in results:
        for val_set in r["val_sets"]:
            by_name.setdefault(val_set["name"], val_set)
    merged["val_sets"] = list(by_name.values())
    return merged
