"""PKBatchSampler: P x K batches, determinism, resume, DDP shards (each rank plans its own share)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from facekd.data import PKBatchSampler


def _skewed_labels():
    counts = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3, 6]            # 12 identities, 64 images
    return np.repeat(np.arange(len(counts)), counts)[np.random.default_rng(0).permutation(sum(counts))]


def _check_pk(batches, labels, P, K):
    for batch in batches:
        assert len(batch) == P * K
        per_identity = Counter(int(labels[i]) for i in batch)
        assert len(per_identity) == P and set(per_identity.values()) == {K}


def test_every_batch_is_p_identities_times_k_images():
    labels = _skewed_labels()
    sampler = PKBatchSampler(labels, identities_per_batch=4, images_per_identity=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7                     # ceil(sum ceil(n/3) / 4) = ceil(25/4)
    _check_pk(batches, labels, 4, 3)
    seen = {i for b in batches for i in b}
    assert len(seen) >= 0.9 * len(labels)                         # about one pass over the data
    single = int(np.flatnonzero(np.bincount(labels) == 1)[0])     # an identity with 1 image repeats it
    for batch in batches:
        members = [i for i in batch if labels[i] == single]
        assert len(set(members)) <= 1


def test_balanced_epoch_visits_every_image_once():
    labels = np.repeat(np.arange(8), 6)
    batches = list(PKBatchSampler(labels, 4, 3, seed=0))
    assert len(batches) == 4
    assert sorted(i for b in batches for i in b) == list(range(48))


def test_deterministic_per_seed_and_epoch():
    labels = _skewed_labels()
    a, b = PKBatchSampler(labels, 4, 3, seed=5), PKBatchSampler(labels, 4, 3, seed=5)
    first = list(a)
    assert first == list(b)
    assert first == list(a)                                      # same epoch again: same plan
    a.set_epoch(1)
    second = list(a)
    assert second != first
    _check_pk(second, labels, 4, 3)
    assert list(PKBatchSampler(labels, 4, 3, seed=6)) != first


def test_resume_yields_the_remaining_batches():
    labels = _skewed_labels()
    sampler = PKBatchSampler(labels, 4, 3, seed=2)
    sampler.set_epoch(3)
    full = sampler.plan()
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(4)]
    state = sampler.state_dict()
    assert state == {"epoch": 3, "position": 4, "seed": 2} and consumed == full[:4]

    resumed = PKBatchSampler(labels, 4, 3, seed=2)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)                                         # a trainer re-announcing the epoch keeps the position
    assert list(resumed) == full[4:]
    assert resumed.state_dict()["position"] == 0                 # the epoch finished
    # a DataLoader prefetches ahead: the trainer passes how many batches it really used
    prefetched = PKBatchSampler(labels, 4, 3, seed=2)
    prefetched.load_state_dict(sampler.state_dict(position=2))
    assert list(prefetched) == full[2:]
    with pytest.raises(ValueError, match="seed"):
        PKBatchSampler(labels, 4, 3, seed=9).load_state_dict(state)


def test_ddp_shards_are_disjoint_and_equal_length():
    labels = np.repeat(np.arange(16), 6)                         # counts divisible by K: no repeats
    single = PKBatchSampler(labels, 4, 3, seed=7)
    shards = [PKBatchSampler(labels, 4, 3, seed=7, rank=r, world_size=2) for r in range(2)]
    plans = [list(s) for s in shards]
    assert len(plans[0]) == len(plans[1]) == len(shards[0]) == len(single) // 2 == 4
    indices = [{i for b in plan for i in b} for plan in plans]
    assert not indices[0] & indices[1]
    assert indices[0] | indices[1] == set(range(len(labels)))
    identities = [{int(labels[i]) for i in ids} for ids in indices]
    assert not identities[0] & identities[1]                     # each rank plans over its own identities
    for plan in plans:
        _check_pk(plan, labels, 4, 3)
    again = PKBatchSampler(labels, 4, 3, seed=7, rank=1, world_size=2)
    assert list(again) == plans[1]                               # deterministic
    again.set_epoch(1)
    assert list(again) != plans[1]


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shares_of_skewed_data_are_pk_batches_and_resume(world):
    labels = np.repeat(np.arange(40), np.random.default_rng(1).integers(1, 12, 40))
    shards = [PKBatchSampler(labels, 4, 3, seed=2, rank=r, world_size=world) for r in range(world)]
    plans = [list(s) for s in shards]
    assert {len(p) for p in plans} == {len(shards[0])} and len(shards[0]) == len(PKBatchSampler(labels, 4, 3)) // world
    for plan in plans:
        _check_pk(plan, labels, 4, 3)
    owners = [{int(labels[i]) for b in plan for i in b} for plan in plans]
    assert sum(len(o) for o in owners) == len(set().union(*owners))        # no identity on two ranks
    seen = {i for plan in plans for b in plan for i in b}
    assert len(seen) >= 0.8 * len(labels)
    resumed = PKBatchSampler(labels, 4, 3, seed=2, rank=world - 1, world_size=world)
    resumed.load_state_dict(shards[-1].state_dict(position=2))
    assert list(resumed) == plans[-1][2:]


def test_a_rank_share_is_planned_in_a_fraction_of_the_memory():
    """issue 32: one rank of 8 plans its share of 580k faces (MS1MV2 / 10) in ~2 MiB of numpy memory."""
    import tracemalloc

    counts = np.random.default_rng(0).integers(1, 130, 8_574)
    labels = np.repeat(np.arange(len(counts)), counts)
    sampler = PKBatchSampler(labels, 64, 2, seed=0, rank=3, world_size=8)
    tracemalloc.start()
    try:
        plan = sampler.plan(0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(plan) == len(sampler) and plan.shape[1] == 128
    assert peak < 4 * len(labels) // 8 * 8          # a few arrays of the rank's ~N / 8 images


def test_invalid_configurations():
    with pytest.raises(ValueError, match="3 identities cannot fill batches of 4"):
        PKBatchSampler(np.repeat(np.arange(3), 5), 4, 2)
    with pytest.raises(ValueError, match="rank"):
        PKBatchSampler(np.repeat(np.arange(8), 5), 4, 2, rank=2, world_size=2)
