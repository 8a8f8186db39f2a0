"""Training matrices, item scorers and the silo evaluation shared by every baseline.

A baseline learns one thing from a binary user × item training matrix: item-item weights W (EASE, ItemKNN:
a user's scores are x_u · W) or one score per item (popularity). Scoring a silo's users needs only that
silo's own rows, so a pooled model scores each region with the region's own matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.evaluation import SiloEvaluation
from fedrec.metrics import METRICS, evaluate_full_ranking

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
SPLITS = ("valid", "test")


def count_matrix(users: np.ndarray, items: np.ndarray, *, n_users: int, n_items: int) -> sp.csr_matrix:
    """User × item matrix of interaction counts (float32; a repeated pair counts twice)."""
    data = np.ones(len(users), dtype=np.float32)
    return sp.coo_matrix((data, (users, items)), shape=(n_users, n_items)).tocsr()


def binary(x: sp.csr_matrix) -> sp.csr_matrix:
    """1 where a count is positive: what EASE, ItemKNN and every user's history use."""
    out = x.copy()
    out.data[:] = 1.0
    return out


def silo_matrix(silo: SiloData) -> sp.csr_matrix:
    """A silo's training counts over its own (local) user ids."""
    return count_matrix(silo.train[0], silo.train[1], n_users=silo.n_users, n_items=silo.n_items)


def pooled_matrix(silos: Mapping[str, SiloData]) -> sp.csr_matrix:
    """Every silo's training counts stacked in sorted region order, users kept distinct.

    Region r's user u is row u + (users of the regions sorted before r), as in `fedrec.bounds.train_centralized`.
    """
    return sp.vstack([silo_matrix(silos[r]) for r in sorted(silos)], format="csr")


@dataclass(frozen=True)
class ItemModel:
    """What a baseline learned: item-item weights [n_items, n_items] (dense or sparse) or item scores [n_items]."""

    weights: np.ndarray | sp.csr_matrix

    def scorer(self, x: sp.csr_matrix) -> ScoreFn:
        """Scores of the users (rows of `x`, their training history) against every item."""
        history = binary(x)

        def score_all(users: torch.Tensor) -> torch.Tensor:
            if self.weights.ndim == 1:
                return torch.as_tensor(self.weights, dtype=torch.float32).expand(len(users), -1).clone()
            s = history[users.numpy()] @ self.weights
            return torch.as_tensor(s.toarray() if sp.issparse(s) else np.asarray(s), dtype=torch.float32)

        return score_all


def evaluate_scores(score_all: ScoreFn, silo: SiloData, *, split: str) -> SiloEvaluation:
    """Full-ranking metrics on `split`, with `fedrec.evaluation.evaluate_model`'s targets and exclusions.

    Test excludes train+valid items, valid excludes train items. No RMSE: these scores are not ratings.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is unknown; choose one of {SPLITS}")
    target = silo.test if split == "test" else silo.valid
    exclude = [silo.train[:2]] + ([silo.valid[:2]] if split == "test" else [])
    if len(target[0]) == 0:
        return SiloEvaluation(sums=dict.fromkeys(METRICS, 0.0), n_users=0)
    per_user = evaluate_full_ranking(score_all, n_items=silo.n_items, targets=target[:2], exclude=exclude)
    return SiloEvaluation(sums={m: float(per_user[m].sum()) for m in METRICS}, n_users=len(per_user["users"]))
