"""Two-tower model: a user tower and an item tower meet in a dot product, plus item biases.

Global (travels): item embeddings, the item tower and item biases. Local (stays): user id embeddings, the
user tower and the silo's private item-bias correction. The user tower only ever transforms this silo's
private user embeddings, which are not aligned across silos; averaging one shared user tower over five
silos' different coordinate frames measurably hurt (the figures are in simulations/README.md), so it is local
by design.
"""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.base import RecModel, UserState


def _tower(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))


class TwoTower(RecModel):
    """Residual MLP towers over id embeddings (e + MLP(e)), scores = <user, item> + item biases."""

    def __init__(self, n_users: int, n_items: int, dim: int = 32, hidden: int = 64, *,
                 private_item_bias: bool = True) -> None:
        super().__init__()
        self.user = UserState(n_users, dim, bias=False, private_item_bias_items=n_items if private_item_bias else 0,
                              tower=_tower(dim, hidden, dim))
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self.item_tower = _tower(dim, hidden, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.item_bias.weight)

    def _u(self, users: torch.Tensor) -> torch.Tensor:
        e = self.user.emb(users)
        assert self.user.tower is not None
        return e + self.user.tower(e)

    def _i(self, items: torch.Tensor) -> torch.Tensor:
        e = self.item_emb(items)
        return e + self.item_tower(e)

    def _bias(self, items: torch.Tensor) -> torch.Tensor:
        b = self.item_bias(items).squeeze(-1)
        if self.user.item_bias is not None:
            b = b + self.user.item_bias(items).squeeze(-1)
        return b

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u = self._u(users)
        v = self._i(items)
        if items.dim() == 2:
            u = u.unsqueeze(1)
        return (u * v).sum(-1) + self._bias(items)

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._u(users) @ self._i(items).T + self._bias(items).unsqueeze(0)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        all_items = torch.arange(self.item_emb.num_embeddings)
        return self._u(users) @ self._i(all_items).T + self._bias(all_items).unsqueeze(0)

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb(items)
