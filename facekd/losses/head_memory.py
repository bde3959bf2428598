"""The memory a margin head takes per GPU, computed from its shapes (``facekd head-memory``).

Two layouts of a ``C x D`` float32 head trained with a per-GPU batch of ``B`` on ``W`` GPUs:

* ``replicated``: every GPU holds all centres (``arcface``, ``cosface``, or ``partial_fc`` in
  a single process); DDP all-reduces the dense gradient through its own bucket copy.
* ``sharded``: the model-parallel PartialFC (:mod:`facekd.losses.partial_fc_sharded`): the
  largest shard, ``ceil(C / W)`` centres, scores the global batch ``W * B``.

Per GPU (bytes): ``centres``, their ``gradient`` (dense: PyTorch allocates the whole
``.grad``), ``optimizer`` state (one copy for SGD momentum, two for AdamW), ``ddp_buckets``
(replicated on more than one GPU), ``sampled`` (the ``k`` scored centres gathered, normalised and both
gradients: 4 copies of ``k x D``) and ``logits`` (cosines, margin logits, exponentials and
their gradient: 4 copies of ``rows x k`` float32, ``rows`` = ``B`` replicated, ``W * B`` sharded).
Activations of the backbone and allocator slack are not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict

#: bytes of a float32 value (the head's centres, optimiser state and logits)
FLOAT32 = 4
#: optimiser states per parameter value
OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}


@dataclass
class HeadMemory:
    """One layout's per-GPU memory (:func:`head_memory`)."""

    layout: str
    world_size: int
    centres_per_gpu: int
    sampled: int
    bytes: Dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All counted bytes."""
        return sum(self.bytes.values())


def head_memory(num_classes: int, embedding_size: int, world_size: int, batch_per_gpu: int,
                sample_rate: float = 1.0, sharded: bool = True, optimizer: str = "sgd") -> HeadMemory:
    """Per-GPU memory of a margin head (see the module docstring for what is counted).

    Args:
        num_classes: ``C``.  embedding_size: ``D``.  world_size: ``W``.
        batch_per_gpu: ``B`` (``identities_per_batch * images_per_identity``).
        sample_rate: PartialFC's share of centres scored per step (1.0: all).
        sharded: the model-parallel layout (else replicated).
        optimizer: ``sgd`` or ``adamw`` (the number of state copies).
    """
    rows = math.ceil(num_classes / world_size) if sharded else num_classes
    batch = batch_per_gpu * world_size if sharded else batch_per_gpu
    sampled = min(rows, max(math.ceil(sample_rate * rows), batch))
    matrix = rows * embedding_size * FLOAT32
    parts = {"centres": matrix, "gradient": matrix, "optimizer": OPTIMIZER_STATES[optimizer] * matrix,
             "ddp_buckets": matrix if not sharded and world_size > 1 else 0,
             "sampled": 4 * sampled * embedding_size * FLOAT32,
             "logits": 4 * batch * sampled * FLOAT32}
    return HeadMemory("sharded" if sharded else "replicated", world_size, rows, sampled, parts)
