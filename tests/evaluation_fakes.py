"""Small stand-ins shared by the evaluation and report tests (no real data, no real models)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn


def structured_embeddings(num_pairs=240, dim=16, noise=0.9, seed=0):
    """Pairs in insightface layout: same pairs share an identity vector plus noise."""
    rng = np.random.default_rng(seed)
    issame = rng.random(num_pairs) < 0.5
    rows = []
    for same in issame:
        a = rng.normal(size=dim)
        b = a if same else rng.normal(size=dim)
        rows += [a + noise * rng.normal(size=dim), b + noise * rng.normal(size=dim)]
    return np.array(rows), issame


class FakePairSet:
    """PairSet-like: random faces, deterministic per index; missing images raise like a file would."""

    def __init__(self, num_images=24, num_pairs=40, seed=0, missing=()):
        rng = np.random.default_rng(seed)
        self.name = "fake"
        self.images = [f"img/{i:03d}.jpg" for i in range(num_images)]
        yy, xx = np.mgrid[:112, :112]
        face = ((yy - 56) / 50.0) ** 2 + ((xx - 56) / 38.0) ** 2 < 1   # an oval "face" on a backdrop
        colours = rng.integers(40, 256, size=(num_images, 2, 3))
        noise = rng.integers(0, 40, size=(num_images, 112, 112, 3))
        self._pixels = (np.where(face[None, :, :, None], colours[:, None, None, 0], colours[:, None, None, 1])
                        * 0.8 + noise).clip(0, 255).astype(np.uint8)
        self.pairs = rng.integers(0, num_images, size=(num_pairs, 2)).astype(np.int64)
        self.issame = np.arange(num_pairs) % 2 == 0
        self.folds = np.full(num_pairs, -1)
        self.missing = set(missing)

    def load(self, i):
        if i in self.missing:
            raise FileNotFoundError(f"No such file: {self.images[i]}")
        return self._pixels[i]


class TinyNet(nn.Module):
    """A few-kilobyte backbone: strided conv, pooling, linear."""

    def __init__(self, embedding_size=8, input_size=112):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)     # 112 -> 14
        self.pool = nn.AvgPool2d(7)                   # 14 -> 2 (ONNX-exportable, unlike adaptive pooling)
        self.fc = nn.Linear(4 * 2 * 2, embedding_size)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def darken(image, size):
    """A stand-in for degrade_to_size: visibly changes the image, depends on size."""
    return (image // (112 // size + 1)).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_arch():
    """Register TinyNet in facekd's model registry (once per process)."""
    from facekd.models import MODELS

    if "tiny_test_net" not in MODELS:
        MODELS.register("tiny_test_net")(TinyNet)
    return "tiny_test_net"


def save_checkpoint(path, arch, embedding_size=8, declared=None, seed=0):
    """A facekd-style checkpoint of a TinyNet; ``declared`` overrides the size in model_config."""
    torch.manual_seed(seed)
    model = TinyNet(embedding_size)
    torch.save({"model_config": {"name": arch, "embedding_size": declared or embedding_size, "input_size": 112},
                "state_dict": model.state_dict()}, path)
    return model
