"""The sufficient-statistics protocol: models fitted from sums of per-silo statistics instead of averaged updates.

A round of such a model: each silo computes statistics of its own training data (`local_statistics`, e.g.
EASE's XᵀX), the coordinator sums them over the accepted replies (no weights, no server optimizer) and
solves for the new global arrays (`solve`). When the model's solve depends only on the data (EASE) the sum
over silos equals the statistic of the pooled data, so the federation reproduces the pooled model exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from fedrec.data.split import SiloData
from fedrec.models import ModelSpec

Arrays = dict[str, np.ndarray]
StatShapes = dict[str, tuple[tuple[int, ...], str]]
"""Statistic name → (shape, dtype name) a reply must hold."""


class StatisticsFamily(Protocol):
    """How one model is fitted from summed statistics; registered by model name in `fedrec.statistics`."""

    rounds_needed: int | None
    """Rounds after which another round gives the same model (EASE: 1); None: every round is another step of
    an alternating solver (iALS), and a bound runs as many as the federation."""

    def statistic_shapes(self, n_items: int, spec: ModelSpec) -> StatShapes:
        """The `stat.*` arrays every silo sends: names, shapes and dtypes (public: they depend on the catalog)."""
        ...

    def local_statistics(self, silo: SiloData, global_arrays: Arrays, spec: ModelSpec) -> Arrays:
        """The silo's statistics of its own training split, given the round's global arrays."""
        ...

    def check(self, stats: Arrays, spec: ModelSpec) -> str | None:
        """What is wrong with a well-shaped, finite reply's statistics (None: they can be summed).

        `spec` (public: the run's model) bounds what honest statistics can hold (iALS: its users' factors).
        """
        ...

    def solve(self, summed: Arrays, global_arrays: Arrays, spec: ModelSpec, n_items: int) -> Arrays:
        """The new global arrays (float32, the model's global names and shapes) from the summed statistics."""
        ...

    def check_catalog(self, n_items: int, spec: ModelSpec) -> None:
        """Raise `ConfigError` when the model cannot be solved for a catalog this large."""
        ...


def sum_statistics(parts: Iterable[Arrays]) -> Arrays:
    """Σ of silos' statistics, name by name, in float64 and in the order given (one part in memory at a time)."""
    total: Arrays = {}
    for part in parts:
        if total and set(part) != set(total):
            raise ValueError(f"statistics {sorted(part)} do not match {sorted(total)}")
        for name, value in part.items():
            if name in total:
                np.add(total[name], value, out=total[name])
            else:
                total[name] = np.array(value, dtype=np.float64)
    if not total:
        raise ValueError("no statistics to sum")
    return total
