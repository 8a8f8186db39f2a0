"""The region-side guard: a region holds back item rows of a new global version that moved beyond its own bound.

A silo can make a global version steer other regions' feeds: a crafted change to one item's row (its bias,
its embedding) at a small multiple of the silo's honest update norm puts the item in the top 20 of most users
elsewhere (`simulations/steering.py`). Under SecAgg+ the coordinator cannot see who did it; the receiving
region can still see *what* moved. Before serving a version, the guard compares it with what the region
serves now (before its first adoption: version 0 as the silo builds it from the run's seed), row by row:

    jump_j = |candidate[j] - reference[j]| per row table (every global array with one row per item),
    bound  = k x the region's own scale for that table,

the own scale being the q-quantile of how far the region's *own* training moved that table's rows, summed over
the rounds since its last review (`own_move_scale`, noted when the silo answers a training message). Nothing
another silo or the coordinator sends changes the bound. A row beyond it is *flagged* and served as the
region's own training moved it from the reference (its own data's view of the item; a non-finite row keeps the
reference's), and a flagged item the region's own data does not support is also withheld (not recommended)
while flagged. A supported item is never withheld for moving: withholding what a region's users like would
let a silo (or the coordinator) censor it by pushing it. Without an own scale (a statistics model, a region
that did not train), the bound falls back to k x the q-quantile of the candidate's own jumps, which a push of
many rows at once can inflate (`simulations/README.md`).

Then an exposure cap for what the region's own data does not support (`overexposed`): an item at most
`support_quantile` of the catalog's items beat in the region's training interactions, which the model would put
in the top 20 of more than `max_exposure` of its validation users, is withheld. Such an item is, by the
region's own data, one its users rarely choose, so withholding it costs little.

Left open (measured in `simulations/README.md`): a push on an item the region's users already like, at most
k x the own scale per review, adds up over rounds.
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


def own_move_scale(received: Arrays, sent: Arrays, *, n_items: int, quantile: float = 0.99) -> dict[str, float]:
    """Per item table, the `quantile` of the per-row moves of the region's own training round (sent - received)."""
    out = {}
    for t in item_tables(received, n_items):
        if t in sent and sent[t].shape == received[t].shape:
            moves = _row_norms(sent[t].astype(np.float64) - received[t].astype(np.float64), n_items)
            finite = moves[np.isfinite(moves)]
            if len(finite):
                out[t] = float(np.quantile(finite, quantile))
    return out


@dataclass(frozen=True)
class Guarded:
    """A candidate version as the guard lets a region serve it."""

    arrays: Arrays
    """The candidate's arrays with each flagged item's rows clipped to the bound (a non-finite row: the reference's)."""
    flagged: np.ndarray
    """bool [n_items]: the items whose rows moved beyond the bound."""
    evidence: dict[str, float]
    """Flagged count, the largest jump / bound ratio, and each table's bound (kept in the silo's decision log)."""


def guard_version(reference: Arrays, candidate: Arrays, *, n_items: int, k: float = 3.0, quantile: float = 0.99,
                  scale: dict[str, float] | None = None, own: Arrays | None = None) -> Guarded:
    """Flag the candidate's item rows that moved beyond `k` x the region's own scale; serve them the region's way.

    `scale`: per table, the region's own move scale (`own_move_scale`, summed over the rounds since the
    reference); a table without one is bounded by the `quantile` of the candidate's own non-zero jumps.
    A flagged row is served as the reference's row moved by the region's own training (`own`: its moves since
    the reference, per table), or without one clipped to the bound; a non-finite row keeps the reference's.
    """
    tables = [t for t in item_tables(candidate, n_items) if t in reference and reference[t].shape == candidate[t].shape]
    ratio = np.zeros(n_items)
    deltas: dict[str, np.ndarray] = {}
    evidence: dict[str, float] = {}
    for t in tables:
        deltas[t] = candidate[t].astype(np.float64) - reference[t].astype(np.float64)
        jump = _row_norms(deltas[t], n_items)
        jump[~np.isfinite(jump)] = np.inf
        own_scale = (scale or {}).get(t, 0.0)
        if own_scale > 0:
            bound = k * own_scale
        else:
            moved = jump[np.isfinite(jump) & (jump > 0)]
            bound = k * float(np.quantile(moved, quantile)) if len(moved) else 0.0
            evidence[f"fallback/{t}"] = 1.0
        evidence[f"bound/{t}"] = bound
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(jump > 0, jump / bound, 0.0) if bound > 0 else np.where(jump > 0, np.inf, 0.0)
        ratio = np.maximum(ratio, r)
    flagged = ratio > 1.0
    out = dict(candidate)
    if flagged.any():
        keep = 1.0 / ratio[flagged]  # 0 for a non-finite row: the reference's row
        for t in tables:
            rows = reference[t].astype(np.float64)[flagged]
            if own is not None and t in own and own[t].shape == deltas[t].shape:
                step = own[t][flagged].astype(np.float64)  # what the region's own data says of the item
            else:
                step = deltas[t][flagged] * keep.reshape(-1, *([1] * (deltas[t].ndim - 1)))
            step[~np.isfinite(step)] = 0.0
            step[~np.isfinite(ratio[flagged])] = 0.0
            clipped = candidate[t].copy()
            clipped[flagged] = (rows + step).astype(candidate[t].dtype)
            out[t] = clipped
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
