"""``PKBatchSampler``: batches of P identities x K images, deterministic and resumable."""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from facekd.data.rank_plan import Index, plan_rank_share, rank_identities


class PKBatchSampler:
    """Yields index lists of ``P * K``: ``P`` distinct identities, ``K`` images of each.

    An epoch is planned from ``(seed, epoch)`` alone: each identity's images are shuffled
    and cut into chunks of ``K`` (the last chunk topped up with other images of that
    identity, with repetition when it has fewer than ``K``); rounds then visit every
    identity that still has chunks, in random order, ``P`` identities per batch; when fewer
    than ``P`` identities are left, random other identities fill the batch with fresh
    chunks.  An epoch has ``ceil(sum_c ceil(n_c / K) / P)`` batches (about one pass over the
    data), shuffled.

    DDP (``world_size > 1``): each rank plans only its share of the epoch, over its own
    identities (:mod:`facekd.data.rank_plan`: O(N / W) memory, numpy), ``len(self)`` batches
    on every rank, with no identity on two ranks.  :meth:`set_epoch` starts another plan;
    :meth:`state_dict` / :meth:`load_state_dict` save and restore the position inside an
    epoch, so a resumed run yields exactly the remaining batches.
    """

    def __init__(self, labels: Sequence[int], identities_per_batch: int, images_per_identity: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.P = int(identities_per_batch)
        self.K = int(images_per_identity)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        if self.P < 1 or self.K < 1:
            raise ValueError("identities_per_batch and images_per_identity must be >= 1")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self._index = Index.of(self.labels)
        self.identities = self.labels[self._index.order[self._index.starts]]
        if len(self.identities) < self.P * self.world_size:
            raise ValueError(f"{len(self.identities)} identities cannot fill batches of {self.P} distinct "
                             f"identities" + (f" on each of {self.world_size} ranks" if self.world_size > 1 else ""))
        chunks = int((-(-self._index.counts // self.K)).sum())
        self._global_batches = -(-chunks // self.P)
        if self._global_batches < self.world_size:
            raise ValueError(f"{self._global_batches} batches per epoch cannot be shared by {world_size} ranks")
        self.epoch = 0
        self.position = 0  # batches of this rank already yielded in this epoch
        self._plan_cache: Optional[tuple] = None

    @property
    def batch_size(self) -> int:
        """``P * K``."""
        return self.P * self.K

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self._global_batches // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Plan epoch ``epoch`` (position resets to 0 unless it is the epoch already in progress)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def state_dict(self, position: Optional[int] = None) -> Dict[str, int]:
        """``{'epoch', 'position', 'seed'}``; pass ``position`` (batches consumed) when a
        DataLoader prefetches ahead of the training step."""
        return {"epoch": self.epoch, "position": self.position if position is None else int(position),
                "seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue from a :meth:`state_dict`: the next iteration yields the remaining batches."""
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler {self.seed}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    def plan(self, epoch: Optional[int] = None) -> Sequence[Sequence[int]]:
        """All batches of ``epoch`` (default: the current one) for this rank (a list of lists in
        a single process, the rows of an int array under DDP)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            self._plan_cache = (epoch, self._plan_share(epoch) if self.world_size > 1 else self._plan_global(epoch))
        return self._plan_cache[1]

    def _plan_share(self, epoch: int) -> np.ndarray:
        shared = np.random.default_rng([self.seed, epoch, 0x5B])          # alike on every rank
        mine = rank_identities(self._index, self.K, self.rank, self.world_size, shared)
        if len(mine) < self.P:
            raise ValueError(f"rank {self.rank} got {len(mine)} identities in epoch {epoch}: too few for batches "
                             f"of {self.P} (fewer ranks or a smaller identities_per_batch)")
        rng = np.random.default_rng([self.seed, epoch, 0x5C, self.rank, self.world_size])
        return plan_rank_share(self._index, mine, self.P, self.K, len(self), rng)

    @property
    def _members(self) -> List[np.ndarray]:
        """Each identity's sample indices (the single-process plan's input)."""
        order = self._index.order.astype(np.int64)
        return np.split(order, self._index.starts[1:])

    def _chunks(self, members: np.ndarray, rng: np.random.Generator) -> List[np.ndarray]:
        shuffled = rng.permutation(members)
        chunks = [shuffled[i:i + self.K] for i in range(0, len(shuffled), self.K)]
        last = chunks[-1]
        if len(last) < self.K:
            pool = np.setdiff1d(members, last)
            need = self.K - len(last)
            extra = rng.choice(pool, need, replace=len(pool) < need) if len(pool) else rng.choice(last, need)
            chunks[-1] = np.concatenate([last, extra])
        return chunks

    def _plan_global(self, epoch: int) -> List[List[int]]:
        rng = np.random.default_rng([self.seed, epoch, 0x5A])
        members = self._members
        pending = [self._chunks(m, rng) for m in members]
        batches: List[List[int]] = []
        carry: List[int] = []
        while len(batches) < self._global_batches:
            active = [c for c in range(len(pending)) if pending[c] and c not in carry]
            order = carry + [int(c) for c in rng.permutation(active)]
            carry = []
            if len(order) < self.P:  # top up with fresh chunks of other identities
                others = np.setdiff1d(np.arange(len(pending)), order)
                for c in rng.choice(others, self.P - len(order), replace=False):
                    pending[int(c)].append(self._chunks(members[int(c)], rng)[0])
                    order.append(int(c))
            full = len(order) // self.P * self.P
            for start in range(0, full, self.P):
                batch = [int(i) for c in order[start:start + self.P] for i in pending[c].pop()]
                batches.append(batch)
                if len(batches) == self._global_batches:
                    break
            carry = order[full:]
        perm = rng.permutation(len(batches))
        return [batches[i] for i in perm]

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.plan()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch.tolist() if isinstance(batch, np.ndarray) else batch
        self.position = 0
