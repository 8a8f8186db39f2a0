"""ItemKNN: cosine item-item similarity on the binary training matrix, top-k neighbours kept per item.

For each target item j, W[:, j] keeps the k other items most cosine-similar to j (positive similarities
only); a user's scores are x_u · W. Similarities are computed in column blocks of the sparse co-occurrence
matrix, so memory stays O(n_items · block) and no dense n_items² matrix is ever built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.baselines.matrix import ItemModel, binary
from fedrec.errors import ConfigError

KS = (10, 25, 50, 100, 200, 400, 800)  # the upper end matters: validation often still improves past 200
BLOCK_ELEMENTS = 2**24  # dense similarity entries per column block (64 MiB in float32)


def neighbours(x: sp.csr_matrix, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """For each item j, its `k_max` most cosine-similar other items, most similar first.

    Returns (index, similarity), both [n_items, min(k_max, n_items - 1)]; an item's own entry never appears.
    """
    xb = binary(x)
    n = xb.shape[1]
    k = min(k_max, n - 1)
    norms = np.sqrt(np.asarray(xb.sum(axis=0), dtype=np.float64).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    xt, xc = xb.T.tocsr(), xb.tocsc()
    index, sim = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    block = max(1, BLOCK_ELEMENTS // n)
    for a in range(0, n, block):
        b = min(n, a + block)
        co = (xt @ xc[:, a:b]).toarray()  # co-occurrence counts [n, b - a]
        s = torch.from_numpy((co * inv[:, None] * inv[None, a:b]).astype(np.float32))
        s[torch.arange(a, b), torch.arange(b - a)] = -torch.inf  # not its own neighbour
        top_s, top_i = torch.topk(s, k, dim=0)
        index[a:b], sim[a:b] = top_i.T.numpy(), top_s.T.numpy()
    return index, sim


def knn_weights(index: np.ndarray, sim: np.ndarray, k: int) -> sp.csr_matrix:
    """Sparse W with W[i, j] = cos(i, j) for the first `k` neighbours i of each item j (positive ones only)."""
    n, kk = index.shape[0], min(k, index.shape[1])
    rows, vals = index[:, :kk].ravel(), sim[:, :kk].ravel()
    cols = np.repeat(np.arange(n), kk)
    keep = vals > 0
    return sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))


def fit_itemknn(x: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """ItemKNN weights W [n_items, n_items] (sparse, at most k nonzeros per column) of a training matrix."""
    return knn_weights(*neighbours(x, k), k)


def itemknn_path(x: sp.csr_matrix, grid: Sequence[float]) -> Iterator[tuple[float | None, ItemModel]]:
    """ItemKNN for each k of `grid`, from one neighbour search with the largest k."""
    index, sim = neighbours(x, int(max(grid)))
    for k in grid:
        yield k, ItemModel(knn_weights(index, sim, int(k)))


def check_k(value: float) -> None:
    """The neighbour count k must be a positive whole number."""
    if value != int(value) or value < 1:
        raise ConfigError(f"ItemKNN k={value} must be a whole number >= 1 (e.g. one of {KS})")
