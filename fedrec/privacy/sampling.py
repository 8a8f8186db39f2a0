"""Which users and interactions a user-level DP step sees: Poisson sampling of users, capped histories.

User-level DP needs each user's whole contribution bounded: a user enters a step with probability q
(Poisson sampling, what the accountant's amplification assumes) and brings at most `max_per_user` of their
interactions. Which interactions is decided once, uniformly at random, *without looking at the data*
(by i.i.d. random keys; item ids, ratings and order play no part), so the cap itself reveals nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.privacy.dp_mf import UserBatch
from fedrec.privacy.noise import NoiseSource


@dataclass(frozen=True)
class CappedHistories:
    """Each user's kept interactions, user-major: `items[start[u]:start[u] + count[u]]`."""

    n_users: int
    items: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor
    dropped: int

    @classmethod
    def build(cls, users: np.ndarray, items: np.ndarray, *, n_users: int, max_per_user: int,
              keys: np.ndarray) -> CappedHistories:
        """Keep at most `max_per_user` interactions per user: those with the smallest `keys` (vectorised).

        `keys` are i.i.d. uniform, one per interaction, from the silo's noise source (so they are as secret
        as the noise): each user's kept subset is then uniform and independent of every other user's data.
        """
        if max_per_user < 1:
            raise ValueError(f"max_per_user={max_per_user} must be >= 1")
        if len(keys) != len(users):
            raise ValueError(f"{len(keys)} keys for {len(users)} interactions")
        order = np.lexsort((keys, users))
        u_sorted = users[order]
        counts_all = np.bincount(u_sorted, minlength=n_users)
        first = np.concatenate(([0], np.cumsum(counts_all)[:-1]))
        rank = np.arange(len(u_sorted)) - first[u_sorted]
        keep = order[rank < max_per_user]
        kept_users = users[keep]
        count = np.minimum(counts_all, max_per_user)
        start = np.concatenate(([0], np.cumsum(count)[:-1]))
        return cls(n_users=n_users, items=torch.as_tensor(items[keep], dtype=torch.long),
                   start=torch.as_tensor(start), count=torch.as_tensor(count),
                   dropped=int(len(users) - len(kept_users)))


def poisson_user_batch(h: CappedHistories, *, sample_rate: float, noise: NoiseSource) -> UserBatch:
    """Sample each user independently with probability `sample_rate` and gather their kept interactions."""
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate={sample_rate} must lie in (0, 1]")
    users = torch.nonzero(noise.uniform(h.n_users) < sample_rate).squeeze(1)
    counts = h.count[users]
    owner = torch.repeat_interleave(torch.arange(len(users)), counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    positions = h.start[users][owner] + offsets
    return UserBatch(users=users, owner=owner, items=h.items[positions])
