"""User sampling for user-level DP: bounded contribution, data-independent choice, Poisson rate."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.sampling import CappedHistories, poisson_user_batch


def histories(items: np.ndarray, cap: int = 3) -> CappedHistories:
    users = np.array([0, 0, 0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    keys = np.random.default_rng(7).random(len(users))
    return CappedHistories.build(users, items, n_users=5, max_per_user=cap, keys=keys)


ITEMS = np.array([10, 11, 12, 13, 14, 20, 30, 31, 40, 41, 42, 43])


def test_no_user_brings_more_than_the_cap_and_drops_are_counted() -> None:
    h = histories(ITEMS)
    assert h.count.tolist() == [3, 1, 2, 3, 0]  # user 4 has no interactions
    assert h.dropped == (5 - 3) + (4 - 3)
    # each user's kept items are their own
    owned = {0: {10, 11, 12, 13, 14}, 1: {20}, 2: {30, 31}, 3: {40, 41, 42, 43}}
    for u in range(4):
        kept = h.items[h.start[u]: h.start[u] + h.count[u]].tolist()
        assert set(kept) <= owned[u] and len(set(kept)) == len(kept)


def test_which_interactions_are_kept_does_not_depend_on_the_data() -> None:
    # Same users and history lengths, different items: the same positions are kept
    other = ITEMS * 100 + 7
    a, b = histories(ITEMS), histories(other)
    assert torch.equal(b.items, a.items * 100 + 7)


def test_a_batch_holds_exactly_the_kept_interactions_of_the_sampled_users() -> None:
    h = histories(ITEMS)
    batch = poisson_user_batch(h, sample_rate=1.0, noise=NoiseSource("seeded", seed=0))
    assert batch.users.tolist() == [0, 1, 2, 3, 4]
    for row, u in enumerate(batch.users.tolist()):
        got = batch.items[batch.owner == row].tolist()
        assert got == h.items[h.start[u]: h.start[u] + h.count[u]].tolist()


def test_users_are_sampled_at_the_poisson_rate() -> None:
    users = np.arange(2000)
    h = CappedHistories.build(users, users, n_users=2000, max_per_user=1, keys=np.random.default_rng(0).random(2000))
    gen = NoiseSource("seeded", seed=1)
    sizes = [len(poisson_user_batch(h, sample_rate=0.05, noise=gen).users) for _ in range(200)]
    # mean 100, sd of the mean over 200 draws ~ sqrt(2000*0.05*0.95/200) = 0.69
    assert abs(np.mean(sizes) - 100) < 3
    assert np.std(sizes) > 5  # the batch size varies (Poisson, not fixed-size)
