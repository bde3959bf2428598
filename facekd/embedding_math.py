"""Row-wise embedding arithmetic: a leaf any module may import (evaluation and export both do).

* :func:`l2_normalize` — rows scaled to unit L2 norm, in float32 (what the deployment API
  returns) or float64 (the verification protocol, ``sklearn.preprocessing.normalize``
  semantics);
* :func:`row_cosine` — cosine similarity of corresponding rows.
"""
from __future__ import annotations

import numpy as np


def l2_normalize(embeddings: np.ndarray, eps: float = 1e-12, dtype: type = np.float32) -> np.ndarray:
    """Rows of ``embeddings`` (last axis) divided by their L2 norm (at least ``eps``), computed in ``dtype``."""
    embeddings = np.asarray(embeddings, dtype=dtype)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), eps)


def row_cosine(a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Cosine similarity of corresponding rows of ``a`` and ``b`` (``[N]``), computed in ``dtype``."""
    return np.sum(l2_normalize(a, dtype=dtype) * l2_normalize(b, dtype=dtype), axis=-1)
