"""Two-tower model: a user tower and an item tower (shared MLPs) meet in a dot product.

The towers and item embeddings are global; only the user id embedding feeding the user tower is local,
so a silo learns its users' representation while the federation learns what the towers do with it.
"""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.base import RecModel, UserState


def _tower(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


class TwoTower(RecModel):
    """Two MLP towers over id embeddings; residual connection keeps early training close to MF."""

    def __init__(self, n_users: int, n_items: int, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.user = UserState(n_users, dim, bias=False)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self.user_tower = _tower(dim, hidden, dim)
        self.item_tower = _tower(dim, hidden, dim)

    def _u(self, users: torch.Tensor) -> torch.Tensor:
        e = self.user.emb(users)
        return e + self.user_tower(e)

    def _i(self, items: torch.Tensor) -> torch.Tensor:
        e = self.item_emb(items)
        return e + self.item_tower(e)

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u = self._u(users)
        v = self._i(items)
        if items.dim() == 2:
            u = u.unsqueeze(1)
        return (u * v).sum(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        w = self.item_emb.weight
        return self._u(users) @ (w + self.item_tower(w)).T

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._u(users) @ self._i(items).T

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb(items)
