"""EASE (Steck, WWW 2019) as a fedrec model: a global item-item matrix, solved in closed form, never trained.

Global (travels): `item_item.weight`, B [n_items, n_items] with a zero diagonal, the coordinator's solve of
the silos' summed Gram matrices (`fedrec.statistics`). Local (stays): `user.rows`, the silo's binary training
history [n_users, n_items], which the silo rebuilds from its own data (`attach_history`). A user's scores
are x_u · B. Both are buffers, not parameters: there is nothing for SGD to move, so the training loop refuses
this model and the user re-fit before evaluation has nothing to do.

B is dense, so catalogs above `MAX_ITEMS` are refused (the same limit as the EASE baseline).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.errors import ConfigError
from fedrec.models.base import RecModel

MAX_ITEMS = 20_000
DEFAULT_LAMBDA = 300.0
DENSE_MATRICES = 3
"""n_items² float64 matrices the coordinator holds at once while solving (the summed Gram, then two of its copy,
its Cholesky factor and the inverse)."""


def check_catalog(n_items: int) -> None:
    """EASE's dense item-item matrices must fit: refuse catalogs above `MAX_ITEMS`, saying why."""
    if n_items > MAX_ITEMS:
        gib = DENSE_MATRICES * n_items**2 * 8 / 2**30
        raise ConfigError(f"model=ease solves a dense {n_items} × {n_items} item-item system (about {gib:.0f} GiB at "
                          f"the coordinator in float64) and this catalog has n_items={n_items} > {MAX_ITEMS}: use "
                          "model=mf or model=twotower for catalogs this large")


def check_lambda(lam: float) -> None:
    """λ makes XᵀX + λI invertible: it must be a number > 0."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not lam > 0:
        raise ConfigError(f"model.kwargs.lam={lam!r} is invalid: EASE's λ must be a number > 0 "
                          f"(e.g. {DEFAULT_LAMBDA:g})")


class History(nn.Module):
    """A silo's users' binary training history, one row per user: local, and rebuilt from the silo's data."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.register_buffer("rows", torch.zeros(n_users, n_items))
        self.rows: torch.Tensor


class ItemItem(nn.Module):
    """The global item-item weights B (a buffer: solved, not trained)."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(n_items, n_items))
        self.weight: torch.Tensor


class EASE(RecModel):
    """Scores x_u · B; `dim` is accepted for the common model signature and unused."""

    user: History  # type: ignore[assignment]  # per-user state of another kind than the embedding models'

    def __init__(self, n_users: int, n_items: int, dim: int = 32, *, lam: float = DEFAULT_LAMBDA) -> None:
        super().__init__()
        del dim
        check_lambda(lam)
        check_catalog(n_items)
        self.lam = float(lam)
        self.user = History(n_users, n_items)
        self.item_item = ItemItem(n_items)

    def attach_history(self, users: np.ndarray, items: np.ndarray) -> None:
        """Set each user's row to 1 on the items of their training interactions (repeats count once)."""
        rows = self.user.rows
        rows.zero_()
        rows[torch.as_tensor(users, dtype=torch.long), torch.as_tensor(items, dtype=torch.long)] = 1.0

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """x_u · B for each user; a user's row is sparse, so this costs O(interactions × n_items), not n_items²."""
        return torch.sparse.mm(self.user.rows[users].to_sparse(), self.item_item.weight)

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.user.rows[users].to_sparse(), self.item_item.weight[:, items])

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        rows = self.user.rows[users]
        if items.dim() == 2:
            return torch.einsum("ni,nik->nk", rows, self.item_item.weight[:, items].permute(1, 0, 2))
        return (rows * self.item_item.weight[:, items].T).sum(-1)

    def regularizer(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.zeros(())

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_item.weight[items]
