"""The global/local parameter split every fedrec model follows.

Every parameter under the model's `user` submodule is **local**: per-user state that stays in the silo
across rounds and is never put in a message. Everything else (item embeddings, shared towers) is
**global**: the only parameters a silo may release. Keeping the rule structural (one submodule, one name
prefix) means one function decides what may leave, and a new model cannot leak by forgetting a list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

LOCAL_PREFIX = "user."


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild a model: its registered name and constructor arguments."""

    name: str = "mf"
    dim: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, stored next to weights so checkpoints describe themselves."""
        return asdict(self)


class UserState(nn.Module):
    """A silo's private parameters: an embedding (and optionally a bias) per user. Always local.

    `private_item_bias_items > 0` adds a per-silo item bias: the silo's own correction of item popularity,
    learnt from its users and kept at home like the user parameters (one row per catalog item). `tower` is
    a network that only ever sees this silo's user embeddings (e.g. a two-tower model's user tower): those
    embeddings live in a coordinate frame of their own, so the network stays with them.
    """

    def __init__(self, n_users: int, dim: int, *, bias: bool, private_item_bias_items: int = 0,
                 tower: nn.Module | None = None) -> None:
        super().__init__()
        self.tower = tower
        self.emb = nn.Embedding(n_users, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.bias = nn.Embedding(n_users, 1) if bias else None
        if self.bias is not None:
            nn.init.zeros_(self.bias.weight)
        self.item_bias = nn.Embedding(private_item_bias_items, 1) if private_item_bias_items else None
        if self.item_bias is not None:
            nn.init.zeros_(self.item_bias.weight)


PER_USER_KEYS = ("user.emb.weight", "user.bias.weight")
"""Local tensors with one row per user (the others, like a private item bias, have one row per item)."""


class RecModel(nn.Module):
    """Base class: subclasses define `user` (a `UserState`), `score_pairs` and `score_all`."""

    user: UserState

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs, shape [N]; `items` may be [N] or [N, K] (then [N, K])."""
        raise NotImplementedError

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of the given users against every catalog item, shape [B, n_items]."""
        raise NotImplementedError

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of every user against every item of a shared item set, shape [B, K] (one matmul)."""
        raise NotImplementedError

    def attach_history(self, users: np.ndarray, items: np.ndarray) -> None:
        """Give the model its silo's training (user, item) pairs; a no-op for models that learn their user state.

        A model whose per-user state *is* the history (EASE: x_u) keeps it here, as local state.
        """
        del users, items

    def regularizer(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """L2 penalty on the embedding rows a batch touched (untouched rows stay untouched)."""
        reg = self.user.emb(users).pow(2).sum()
        return reg + self.item_rows(items).pow(2).sum()

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        """Raw item embedding rows (for the regularizer)."""
        raise NotImplementedError


def is_local(name: str) -> bool:
    """True for parameter names that must never leave the silo."""
    return name.startswith(LOCAL_PREFIX)


def global_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a silo may release: everything outside the `user` submodule (detached copies)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not is_local(k)}


def local_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per-user parameters: kept in the silo's state, never sent."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if is_local(k)}


def load_global_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Overwrite the global parameters; refuses local names or missing/mis-shaped tensors."""
    own = {k: v for k, v in model.state_dict().items() if not is_local(k)}
    bad = [k for k in state if is_local(k)]
    if bad:
        raise ValueError(f"refusing to load local (per-user) parameters from a global state: {bad}")
    if set(state) != set(own):
        raise ValueError(f"global state keys {sorted(state)} do not match the model's {sorted(own)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"global parameter {k!r} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
