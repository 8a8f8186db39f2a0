"""Popularity: every user gets the items with the most training interactions (as `fedrec.bounds.popularity`).

Counts are interactions, a repeated (user, item) pair counting each time, exactly as the bound counts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from fedrec.baselines.matrix import ItemModel


def item_counts(x: sp.csr_matrix) -> np.ndarray:
    """Training interactions per item (float32 [n_items]) of a count matrix."""
    return np.asarray(x.sum(axis=0), dtype=np.float32).ravel()


def popularity_path(x: sp.csr_matrix, grid: Sequence[float]) -> Iterator[tuple[float | None, ItemModel]]:
    """The one popularity model (it has no hyperparameter: `grid` is empty)."""
    del grid
    yield None, ItemModel(item_counts(x))
