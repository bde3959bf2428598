"""One rank's share of a P x K epoch, planned in O(N / W) memory with numpy (no global plan).

Planning the whole epoch on every rank costs what the whole data costs (measured before this
module: 8 s and 1.3 GB per rank per epoch at MS1MV2 size, 155 s and 7.1 GB at WebFace42M).
Here each rank plans only its share:

1. the identities are split between the ranks by one permutation that every rank draws alike
   from ``(seed, epoch)``: contiguous runs of it holding about ``1 / W`` of the epoch's chunks
   (an identity's ``ceil(n / K)`` chunks of ``K`` images) go to each rank, so a rank's batches
   hold only its identities and the ranks' batches never share an identity;
2. the rank shuffles the images of its identities, cuts them into chunks of ``K`` (the last
   chunk topped up with other images of the identity, repeating only when it has fewer than
   ``K``) and, round by round as :class:`~facekd.data.PKBatchSampler` does, visits every
   identity with chunks left in random order, ``P`` per batch, carrying a round's remainder to
   the front of the next; when fewer than ``P`` identities are left, random other identities
   of the rank fill the batch with a fresh chunk;
3. it stops at ``batches`` batches (the same number on every rank) and shuffles them.

Only the rank's images (``~N / W``), one entry per identity and the plan itself are held.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Index:
    """The training images grouped by identity: ``order[starts[c]:starts[c] + counts[c]]`` are
    identity ``c``'s (built once per sampler, ``int32`` when the indices fit)."""

    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray) -> "Index":
        dtype = np.int32 if len(labels) < 2 ** 31 else np.int64
        order = np.argsort(labels, kind="stable").astype(dtype)
        _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        return cls(order, starts.astype(np.int64), counts.astype(np.int64))


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + n) for s, n)``, vectorised."""
    total = int(counts.sum())
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return offsets + np.arange(total)


def rank_identities(index: Index, K: int, rank: int, world_size: int, rng: np.random.Generator) -> np.ndarray:
    """The identities of ``rank``: a run of the shared permutation with ~1/W of the chunks."""
    perm = rng.permutation(len(index.counts))
    chunks = -(-index.counts[perm] // K)
    before = np.cumsum(chunks) - chunks                       # chunks ahead of each identity
    owner = (before * world_size) // int(chunks.sum())
    return perm[owner == rank]


def plan_rank_share(index: Index, identities: np.ndarray, P: int, K: int, batches: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``batches x (P * K)`` image indices of the rank's share (steps 2 and 3 above)."""
    counts = index.counts[identities]
    faces = index.order[_ranges(index.starts[identities], counts)]
    owner = np.repeat(np.arange(len(identities)), counts)
    shuffled = faces[np.argsort(owner + rng.random(len(faces)))]       # shuffled within each identity
    first = np.cumsum(counts) - counts                                  # identity's first in ``shuffled``
    chunks = -(-counts // K)

    def chunk(ids: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """``len(ids) x K`` images: chunk ``taken`` of each identity; past its images, a window
        of its other images (of any image when it has fewer than K)."""
        slot = taken[:, None] * K + np.arange(K)
        n = counts[ids][:, None]
        pool = np.where(n > K, (chunks[ids][:, None] - 1) * K, n)       # images before the last chunk
        start = rng.integers(0, pool[:, 0])[:, None]
        extra = (start + slot - n) % pool
        return shuffled[first[ids][:, None] + np.where(slot < n, slot, extra)]

    taken = np.zeros(len(identities), dtype=np.int64)
    out = np.empty((batches, P, K), dtype=index.order.dtype)
    done, carry = 0, np.empty(0, dtype=np.int64)
    alive = np.arange(len(identities))          # identities with chunks left (shrinks: O(chunks) in all)
    waiting = np.zeros(len(identities), dtype=bool)
    while done < batches:
        alive = alive[taken[alive] < chunks[alive]]
        waiting[carry] = True
        order = np.concatenate([carry, rng.permutation(alive[~waiting[alive]])])
        waiting[carry] = False
        fresh = np.zeros(len(order), dtype=bool)
        if len(order) < P:                    # top up with fresh chunks of other identities
            free = np.ones(len(identities), dtype=bool)
            free[order] = False
            order = np.concatenate([order, rng.choice(np.flatnonzero(free), P - len(order), replace=False)])
            fresh = np.arange(len(order)) >= len(fresh)
        full = min(len(order) // P, batches - done) * P
        use, new = order[:full], fresh[:full]
        rounds = np.where(new, rng.integers(0, chunks[use]), taken[use])
        out[done:done + full // P] = chunk(use, rounds).reshape(-1, P, K)
        taken[use[~new]] += 1
        done += full // P
        carry = order[full:][~fresh[full:]]
    return out.reshape(batches, P * K)[rng.permutation(batches)]
