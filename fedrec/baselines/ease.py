"""EASE (Steck, WWW 2019): a closed-form item-item linear autoencoder with a zero diagonal.

B = I - P · diag(1/diag(P)), P = (XᵀX + λI)⁻¹, on the binary training matrix X; a user's scores are x_u · B.
The Gram matrix is computed once per training matrix and reused across the λ grid; each λ costs one
Cholesky factorisation and inverse in float32 (co-occurrence counts are exact in float32 and λ keeps
XᵀX + λI positive definite; `simulations/baselines.py` prints how far B and the top-20 lists are from float64).
Dense item-item matrices cost O(n_items²) memory, so catalogs above `max_items` are refused, with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import scipy.sparse as sp
import torch

from fedrec.baselines.matrix import ItemModel, binary
from fedrec.errors import ConfigError
from fedrec.models.ease import MAX_ITEMS

DEFAULT_MAX_ITEMS = MAX_ITEMS  # the same limit as the federated model=ease
LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
PEAK_MATRICES = 4  # n_items² float32 matrices alive at once while fitting (Gram, factor/inverse, kept model)


def gram(x: sp.csr_matrix) -> torch.Tensor:
    """XᵀX of the binary matrix as a dense float32 tensor (co-occurrence counts)."""
    xb = binary(x)
    return torch.from_numpy((xb.T @ xb).toarray().astype("float32", copy=False))


def ease_weights(g: torch.Tensor, lam: float) -> torch.Tensor:
    """B = I - P·diag(1/diag(P)) with P = (G + λI)⁻¹ and a zero diagonal, from a Gram matrix G."""
    a = g.clone()
    a.diagonal().add_(lam)
    factor = torch.linalg.cholesky(a)
    a.zero_()
    a.diagonal().fill_(1.0)  # reused as the identity: no extra n² matrix
    # cholesky_solve against I, not cholesky_inverse: similar medians, but cholesky_inverse's time spiked to
    # several seconds whenever other processes kept the 2 cores busy (`benchmarks/ease_solve.py`)
    p = torch.cholesky_solve(a, factor)
    del a, factor
    p.div_(p.diagonal().clone())  # column j divided by P_jj
    p.neg_()
    p.diagonal().zero_()
    return p


def fit_ease(x: sp.csr_matrix, lam: float) -> torch.Tensor:
    """EASE weights B [n_items, n_items] of a training matrix (counts are binarised)."""
    return ease_weights(gram(x), lam)


def ease_path(x: sp.csr_matrix, grid: Sequence[float]) -> Iterator[tuple[float | None, ItemModel]]:
    """EASE fitted for each λ of `grid`, sharing one Gram matrix."""
    g = gram(x)
    for lam in grid:
        yield lam, ItemModel(ease_weights(g, lam).numpy())


def check_lambda(value: float) -> None:
    """λ must be positive (it is what makes XᵀX + λI invertible)."""
    if not value > 0:
        raise ConfigError(f"EASE λ={value} must be > 0 (e.g. one of {LAMBDAS})")


def too_many_items(n_items: int, max_items: int) -> str | None:
    """Why EASE is skipped for this catalog, or None when it fits under `max_items`."""
    if n_items <= max_items:
        return None
    gib = PEAK_MATRICES * n_items**2 * 4 / 2**30
    return (f"EASE needs dense {n_items} × {n_items} item-item matrices (about {gib:.1f} GiB in float32) and "
            f"n_items={n_items} > max_items={max_items}: skipped. Raise max_items if the machine has the "
            "memory, or use itemknn (sparse).")
