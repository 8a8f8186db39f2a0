"""EASE from Gram matrices: each silo sends XᵀX of its binary training matrix, the coordinator solves on the sum.

The Gram of the pooled (stacked) matrix is the sum of the silos' Grams, so the federation's B is pooled EASE's
B. The math is the EASE baseline's (`fedrec.baselines.ease`: `gram`, `ease_weights`); only the precision
differs: counts travel in float32 (exact: a silo's co-occurrence count is at most its number of users, far
below 2²⁴), are summed in float64 (exact) and B is solved in float64, then stored as the model's float32
global array.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.baselines.ease import ease_weights, gram
from fedrec.baselines.matrix import silo_matrix
from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.messages import STAT_PREFIX
from fedrec.models import ModelSpec
from fedrec.models.ease import DEFAULT_LAMBDA, check_catalog, check_lambda
from fedrec.statistics.base import Arrays, StatShapes

GRAM = STAT_PREFIX + "gram"
WEIGHTS = "item_item.weight"
EXACT_COUNTS = 2**24
"""float32 holds every integer below this exactly: the most users a silo may have for exact counts."""
_BLOCK = 1024


def ease_lambda(spec: ModelSpec) -> float:
    """λ from `model.kwargs.lam` (default 300), checked."""
    lam = spec.kwargs.get("lam", DEFAULT_LAMBDA)
    check_lambda(lam)
    return float(lam)


class EaseStatistics:
    """`StatisticsFamily` of `model=ease`: one round, statistic `stat.gram`, global array `item_item.weight`."""

    rounds_needed: int | None = 1

    def statistic_shapes(self, n_items: int, spec: ModelSpec) -> StatShapes:
        del spec
        return {GRAM: ((n_items, n_items), "float32")}

    def local_statistics(self, silo: SiloData, global_arrays: Arrays, spec: ModelSpec) -> Arrays:
        """XᵀX of the silo's binary training matrix (co-occurrence counts of its users); B is not needed."""
        del global_arrays, spec
        if silo.n_users >= EXACT_COUNTS:
            raise ConfigError(f"silo {silo.region!r} has {silo.n_users} users: float32 counts are exact only "
                              f"below {EXACT_COUNTS}")
        return {GRAM: gram(silo_matrix(silo)).numpy()}

    def check(self, stats: Arrays, spec: ModelSpec) -> str | None:
        """What no Gram matrix of a binary matrix of fewer than `EXACT_COUNTS` users looks like.

        XᵀX is symmetric with whole, non-negative counts below `EXACT_COUNTS` (a larger silo refuses to send
        them), and no pair of items co-occurs more often than either item occurs: G[i, j] ≤ G[i, i].
        These are necessary, not sufficient (a Gram is also positive semi-definite, too costly to check here:
        `fedrec.statistics.solve_replies` finds a reply whose statistics break the solve). Row blocks keep
        the temporaries small at 20,000 items.
        """
        del spec
        g = stats[GRAM]
        if not np.array_equal(g, g.T):
            return f"{GRAM}: not symmetric"
        diag = np.diagonal(g)
        for start in range(0, g.shape[0], _BLOCK):
            rows = g[start:start + _BLOCK]
            if bool((rows < 0).any()):
                return f"{GRAM}: negative co-occurrence counts"
            if bool((rows >= EXACT_COUNTS).any()):
                return f"{GRAM}: a count of {EXACT_COUNTS} or more (a silo that large does not send its counts)"
            if not bool((np.floor(rows) == rows).all()):
                return f"{GRAM}: co-occurrence counts must be whole numbers"
            if bool((rows.max(axis=1) > diag[start:start + _BLOCK]).any()):
                return f"{GRAM}: a pair's co-occurrence count is above an item's own count (G[i, j] > G[i, i])"
        return None

    def solve(self, summed: Arrays, global_arrays: Arrays, spec: ModelSpec, n_items: int) -> Arrays:
        """B = I − P·diag(1/diag(P)), P = (G + λI)⁻¹, zero diagonal, solved in float64 and stored as float32."""
        del global_arrays
        g = torch.from_numpy(np.asarray(summed[GRAM], dtype=np.float64))
        if tuple(g.shape) != (n_items, n_items):
            raise ValueError(f"{GRAM} is {tuple(g.shape)}, the catalog has {n_items} items")
        b = ease_weights(g, ease_lambda(spec))
        return {WEIGHTS: b.numpy().astype(np.float32)}

    def check_catalog(self, n_items: int, spec: ModelSpec) -> None:
        del spec
        check_catalog(n_items)
