"""The region-side guard: a region holds back item rows of a new global version that jumped beyond the others.

A silo can make a global version steer other regions' feeds: a crafted change to one item's row (its bias,
its embedding) at a small multiple of the silo's honest update norm puts the item in the top 20 of most users
elsewhere (`simulations/steering.py`). Under SecAgg+ the coordinator cannot see who did it; the receiving
region can still see *what* moved. Before serving a version, the guard compares it with what the region
serves now (before its first adoption: the first global version it trained from), row by row:

    jump_j = |candidate[j] - reference[j]| per row table (every global array with one row per item),
    bound  = k x the q-quantile of that table's non-zero jumps (this round's typical large move),

and an item whose row jumps beyond the bound in any table is *flagged*: the region keeps its reference row
(the last row it accepted) and withholds the item (it is not recommended) while the jump persists; every other
row, and every other array, is the candidate's. A flagged item comes back once the global row returns within
bound of the kept one. The decision and its evidence stay in the silo, with the adoption decision; the
federation keeps training on the unguarded versions.

The bound is relative to the round's own moves, so it costs nothing in a clean round (no row moves 3x beyond
the 99th percentile of moves: measured in `simulations/README.md`). An attacker who knows the rule can stay
under the bound and push a little every round. So the guard also caps what the region's own data does not
support (`overexposed`): an item that at most `support_quantile` of the catalog's items beat in the region's
own training interactions, yet would sit in the top 20 of more than `max_exposure` of its validation users, is
withheld too. Such an item is, by the region's own data, one its users rarely choose, so withholding it costs
little; what an attacker can still do is bounded by the cap (or needs an item the region's users already like).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.split import SiloData
from fedrec.metrics import ranked_top_k, withheld_pairs
from fedrec.models import RecModel
from fedrec.training import Arrays

WITHHELD_KEY = "guard/withheld"
"""The served file's array of withheld items (bool per item), beside the served global arrays."""


def item_tables(arrays: Arrays, n_items: int) -> list[str]:
    """The global arrays holding one row per item (first dimension = catalog size)."""
    return [k for k, v in arrays.items() if np.ndim(v) >= 1 and np.shape(v)[0] == n_items]


@dataclass(frozen=True)
class Guarded:
    """A candidate version as the guard lets a region serve it."""

    arrays: Arrays
    """The candidate's arrays with each flagged item's rows kept at the reference's."""
    withheld: np.ndarray
    """bool [n_items]: the flagged items, not recommended while flagged."""
    evidence: dict[str, float]
    """Flagged count, the largest jump / bound ratio, and each table's bound (kept in the silo's decision log)."""


def guard_version(reference: Arrays, candidate: Arrays, *, n_items: int, k: float = 3.0, quantile: float = 0.99
                  ) -> Guarded:
    """Flag and hold back the candidate's item rows that jumped beyond `k` x the `quantile` of the jumps."""
    tables = [t for t in item_tables(candidate, n_items) if t in reference and reference[t].shape == candidate[t].shape]
    ratio = np.zeros(n_items)
    evidence: dict[str, float] = {}
    for t in tables:
        delta = candidate[t].astype(np.float64) - reference[t].astype(np.float64)
        jump = np.sqrt(np.sum(delta.reshape(n_items, -1) ** 2, axis=1))
        moved = jump[jump > 0]
        if len(moved) == 0:
            continue
        bound = k * float(np.quantile(moved, quantile))
        evidence[f"bound/{t}"] = bound
        ratio = np.maximum(ratio, jump / bound if bound > 0 else np.where(jump > 0, np.inf, 0.0))
    withheld = ratio > 1.0
    out = dict(candidate)
    if withheld.any():
        for t in tables:
            kept = candidate[t].copy()
            kept[withheld] = reference[t][withheld]
            out[t] = kept
    evidence["flagged"] = float(withheld.sum())
    evidence["max_ratio"] = float(ratio.max()) if len(ratio) else 0.0
    return Guarded(arrays=out, withheld=withheld, evidence=evidence)


def overexposed(model: RecModel, silo: SiloData, *, withheld: np.ndarray, max_exposure: float,
                support_quantile: float, k: int = 20) -> tuple[np.ndarray, dict[str, float]]:
    """Items the region's own data does not support that `model` would show to too many of its users.

    Exposure: the share of the silo's validation users (all users with training data when it has no validation
    split) with the item in their top `k` (their training items and the `withheld` ones excluded). Support: the
    item's count of the silo's training interactions; unsupported = at most its `support_quantile` over items.
    Returns (bool per item: unsupported and exposure > `max_exposure`, evidence). The test users are not read.
    """
    users = np.unique(silo.valid[0]) if len(silo.valid[0]) else np.unique(silo.train[0])
    counts = np.zeros(silo.n_items)
    if len(users) == 0:
        return np.zeros(silo.n_items, dtype=bool), {}
    model.eval()
    for batch in ranked_top_k(model.score_all, n_items=silo.n_items, users=users,
                              exclude=[silo.train[:2], *withheld_pairs(users, withheld)], k=k):
        np.add.at(counts, batch.top[batch.shown()].numpy(), 1)
    exposure = counts / len(users)
    support = np.bincount(silo.train[1], minlength=silo.n_items)
    unsupported = support <= np.quantile(support, support_quantile)
    flag = unsupported & (exposure > max_exposure)
    top = float(exposure[unsupported].max()) if unsupported.any() else 0.0
    return flag, {"overexposed": float(flag.sum()), "max_unsupported_exposure": top}
