"""Shared pytest fixtures."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FACEKD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Two cores: keep each test process to a predictable number of threads.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_script(relative_path: str) -> ModuleType:
    """Import a script of the repository that is not part of the package (e.g. ``bench/…``)."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module        # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real-face data (../shared/data); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA}")
    return SHARED_DATA
