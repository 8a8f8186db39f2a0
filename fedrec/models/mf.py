"""Biased matrix factorization: score = global + item (+ silo-private item) + user bias + <p_u, q_i>."""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.base import RecModel, UserState


class BiasedMF(RecModel):
    """The classic baseline; user factors and biases are local, item factors and biases global."""

    def __init__(self, n_users: int, n_items: int, dim: int = 32, *, private_item_bias: bool = True) -> None:
        super().__init__()
        self.user = UserState(n_users, dim, bias=True, private_item_bias_items=n_items if private_item_bias else 0)
        self.item_emb = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def _user_bias(self, users: torch.Tensor) -> torch.Tensor:
        assert self.user.bias is not None
        return self.user.bias(users).squeeze(-1)

    def _item_bias(self, items: torch.Tensor) -> torch.Tensor:
        """Shared item bias plus the silo's private correction (when enabled)."""
        b = self.item_bias(items).squeeze(-1)
        if self.user.item_bias is not None:
            b = b + self.user.item_bias(items).squeeze(-1)
        return b

    def _item_bias_all(self) -> torch.Tensor:
        b = self.item_bias.weight.T
        return b + self.user.item_bias.weight.T if self.user.item_bias is not None else b

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        p = self.user.emb(users)
        q = self.item_emb(items)
        if items.dim() == 2:
            dot = (p.unsqueeze(1) * q).sum(-1)
            return dot + self._item_bias(items) + self._user_bias(users).unsqueeze(1) + self.global_bias
        return (p * q).sum(-1) + self._item_bias(items) + self._user_bias(users) + self.global_bias

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        p = self.user.emb(users)
        out = p @ self.item_emb.weight.T + self._item_bias_all()
        return out + self._user_bias(users).unsqueeze(1) + self.global_bias

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        out = self.user.emb(users) @ self.item_emb(items).T + self._item_bias(items).unsqueeze(0)
        return out + self._user_bias(users).unsqueeze(1) + self.global_bias

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_emb(items)
