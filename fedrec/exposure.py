"""Exposure: how many of a region's users a model shows one item to, and where that item stands globally.

The measure behind "no jurisdiction can steer another's feed": the fraction of a silo's **test users** (the
users the evaluation scores: at least one test item) who get `item` in their top `k`, ranked exactly as the
evaluation ranks (`fedrec.metrics.ranked_top_k`: the whole catalog, each user's train and valid items
excluded). An item the user already has in train or valid is never shown to them, so it never counts.
Computed inside a silo (it needs the silo's users' parameters); a simulation's owner reads every silo's
(`fedrec.run_exposure`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.split import SiloData
from fedrec.metrics import ranked_top_k, withheld_pairs
from fedrec.models import RecModel

ITEM_BIAS = "item_bias.weight"
"""The global item bias of the models that have one (MF, two-tower): one row per catalog item."""


@dataclass(frozen=True)
class Exposure:
    """`n_exposed` of a silo's `n_users` test users get `item` in their top `k`."""

    item: int
    k: int
    n_users: int
    n_exposed: int

    @property
    def fraction(self) -> float:
        """The share of the silo's test users shown the item (NaN for a silo without test users)."""
        return self.n_exposed / self.n_users if self.n_users else float("nan")


def item_exposure(model: RecModel, silo: SiloData, item: int, *, k: int = 20, withheld: np.ndarray | None = None
                  ) -> Exposure:
    """The silo's test users who get `item` in their top `k` (train and valid items excluded, as in evaluation).

    `withheld`: items the region's guard keeps out of every ranking (`fedrec.silo.guard`).
    """
    if not 0 <= item < silo.n_items:
        raise ValueError(f"item {item} is not in the catalog (0..{silo.n_items - 1})")
    model.eval()
    users = np.unique(silo.test[0])
    exposed = 0
    for batch in ranked_top_k(model.score_all, n_items=silo.n_items, users=users,
                              exclude=[silo.train[:2], silo.valid[:2], *withheld_pairs(users, withheld)], k=k):
        exposed += int(((batch.top == item) & batch.shown()).any(1).sum())
    return Exposure(item=item, k=k, n_users=len(users), n_exposed=exposed)


def item_bias_rank(global_arrays: dict[str, np.ndarray], item: int) -> int:
    """`item`'s rank by global item bias, 1 = the largest (ties share the best rank)."""
    if ITEM_BIAS not in global_arrays:
        raise ValueError(f"the model has no global item bias ({ITEM_BIAS}); its arrays are {sorted(global_arrays)}")
    bias = np.asarray(global_arrays[ITEM_BIAS]).reshape(-1)
    if not 0 <= item < len(bias):
        raise ValueError(f"item {item} is not in the catalog (0..{len(bias) - 1})")
    return int((bias > bias[item]).sum()) + 1


def item_at_bias_rank(global_arrays: dict[str, np.ndarray], rank: int) -> int:
    """The item at `rank` by global item bias (1 = the largest; ties broken by item id)."""
    if ITEM_BIAS not in global_arrays:
        raise ValueError(f"the model has no global item bias ({ITEM_BIAS}); its arrays are {sorted(global_arrays)}")
    bias = np.asarray(global_arrays[ITEM_BIAS]).reshape(-1)
    if not 1 <= rank <= len(bias):
        raise ValueError(f"rank {rank} is outside 1..{len(bias)}")
    order = np.lexsort((np.arange(len(bias)), -bias))
    return int(order[rank - 1])
