"""The region-side guard: a region does not serve item rows of a new global version that moved like no others.

A silo can make a global version steer other regions' feeds: a crafted change to one item's row (its bias,
its embedding) at a small multiple of the silo's honest update norm puts the item in the top 20 of most users
elsewhere (`simulations/steering.py`). Under SecAgg+ the coordinator cannot see who did it; the receiving
region can still see *what* moved. Before serving a version, the guard compares it with what the region
serves now (before its first adoption: version 0 as the silo builds it from the run's seed), row by row:

    jump_j = |candidate[j] - reference[j] - common| per row table (every global array with one row per item;
             common: the coordinate-wise median over items of the change, a move that changes no ranking),
    bound  = k x the median over items of jump_j,

and a row beyond the bound is *flagged*. The median moves only if more than half of the catalog's rows are pushed,
so neither a few crafted rows (one silo boosting several items at once) nor a version in which only a few rows
moved at all (a hostile coordinator's edit: median 0, every moved row flagged) set their own bound. In clean runs
the largest row jump is 1.5-2.6x the median on ML-100K and up to 6.1x on the default world
(`simulations/README.md`), so k = 10 flags none. A flagged row is served as the region's *own* training moved it
from the reference (`own`: the silo's own replies since its last review, its own data's view of the item, capped
at the bound so extra training messages cannot drag it; a non-finite row keeps the reference's), and a flagged
item the region's own data does not support is also withheld (not recommended) while flagged. A supported item is
never withheld for moving: withholding what a region's users like would let a silo (or the coordinator) censor it
by pushing it.

Then an exposure cap for what the region's own data does not support (`overexposed`): an item at most
`support_quantile` of the catalog's items beat in the region's training interactions, which the model would put
in the top 20 of more than `max_exposure` of its validation users, is withheld. Such an item is, by the
region's own data, one its users rarely choose, so withholding it costs little.

Left open (`simulations/README.md`): a push spread over more than half of the catalog's rows raises the median;
a push below k x the median per review adds up over rounds on an item the region supports.
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


def _row_norms(delta: np.ndarray, n_items: int) -> np.ndarray:
    return np.sqrt(np.sum(delta.reshape(n_items, -1).astype(np.float64) ** 2, axis=1))


@dataclass(frozen=True)
class Guarded:
    """A candidate version as the guard lets a region serve it."""

    arrays: Arrays
    """The candidate's arrays with each flagged item's rows as the region's own training moved them."""
    flagged: np.ndarray
    """bool [n_items]: the items whose rows moved beyond the bound."""
    evidence: dict[str, float]
    """Flagged count, the largest jump / bound ratio, and each table's bound (kept in the silo's decision log)."""


def guard_version(reference: Arrays, candidate: Arrays, *, n_items: int, k: float = 10.0,
                  own: Arrays | None = None) -> Guarded:
    """Flag the candidate's item rows that moved beyond `k` x the median row's move; serve them the region's way.

    Moves are measured after taking out each table's common move (the coordinate-wise median over items of the
    rows' changes): adding one constant to every item bias, or one vector to every item embedding, changes no
    user's ranking, so it must not buy a push its own bound. A flagged row is served as the reference's row plus
    that common move plus the region's own training move of the row beyond its own common move (`own`: its
    moves since the reference, per table), capped at the bound; without `own`, the row's move capped at the
    bound. A non-finite row keeps the reference's.
    """
    tables = [t for t in item_tables(candidate, n_items) if t in reference and reference[t].shape == candidate[t].shape]
    ratio = np.zeros(n_items)
    deltas: dict[str, np.ndarray] = {}
    common: dict[str, np.ndarray] = {}
    bounds: dict[str, float] = {}
    evidence: dict[str, float] = {}
    for t in tables:
        d = (candidate[t].astype(np.float64) - reference[t].astype(np.float64)).reshape(n_items, -1)
        finite_rows = np.isfinite(d).all(axis=1)
        common[t] = np.median(d[finite_rows], axis=0) if finite_rows.any() else np.zeros(d.shape[1])
        deltas[t] = d - common[t]
        jump = np.sqrt(np.sum(deltas[t] ** 2, axis=1))
        jump[~finite_rows] = np.inf
        bound = k * float(np.median(jump))  # inf rows count as large: they cannot lower it
        bounds[t] = bound if np.isfinite(bound) else 0.0
        evidence[f"bound/{t}"] = bounds[t]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(jump > 0, jump / bound, 0.0) if 0 < bound < np.inf else np.where(jump > 0, np.inf, 0.0)
        ratio = np.maximum(ratio, r)
    flagged = ratio > 1.0
    out = dict(candidate)
    if flagged.any():
        keep = 1.0 / ratio[flagged]  # 0 for a non-finite row
        for t in tables:
            shape = candidate[t].shape
            if own is not None and t in own and own[t].shape == shape:
                mine = own[t].astype(np.float64).reshape(n_items, -1)
                mine = np.where(np.isfinite(mine), mine, 0.0)
                step = (mine - np.median(mine, axis=0))[flagged]  # what the region's own data says of the item
                size = np.sqrt(np.sum(step**2, axis=1))
                step *= np.minimum(1.0, bounds[t] / np.maximum(size, 1e-300)).reshape(-1, 1)  # capped at the bound
            else:
                step = deltas[t][flagged] * keep.reshape(-1, 1)
            step[~np.isfinite(step)] = 0.0
            rows = reference[t].astype(np.float64).reshape(n_items, -1)[flagged] + common[t] + step
            rows[~np.isfinite(ratio[flagged])] = reference[t].astype(np.float64).reshape(n_items, -1)[flagged][
                ~np.isfinite(ratio[flagged])]
            served = candidate[t].copy()
            served[flagged] = rows.reshape((-1, *shape[1:])).astype(candidate[t].dtype)
            out[t] = served
    evidence["flagged"] = float(flagged.sum())
    finite = ratio[np.isfinite(ratio)]
    evidence["max_ratio"] = float(finite.max()) if len(finite) else 0.0
    evidence["non_finite_rows"] = float(np.sum(~np.isfinite(ratio)))
    return Guarded(arrays=out, flagged=flagged, evidence=evidence)


def unsupported(silo: SiloData, support_quantile: float) -> np.ndarray:
    """Items with at most the `support_quantile` (over items) of the silo's own training interactions (bool each)."""
    support = np.bincount(silo.train[1], minlength=silo.n_items)
    return support <= np.quantile(support, support_quantile)


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
    rare = unsupported(silo, support_quantile)
    flag = rare & (exposure > max_exposure)
    top = float(exposure[rare].max()) if rare.any() else 0.0
    return flag, {"overexposed": float(flag.sum()), "max_unsupported_exposure": top}
