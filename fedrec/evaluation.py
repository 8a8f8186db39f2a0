"""How a model is scored on a silo: full-ranking metric sums that pool exactly across silos.

Silos (federated evaluation), the bounds (centralized, local-only, popularity) and the experiment all use
these, so every column of a results table is scored the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.data.split import SiloData
from fedrec.metrics import METRICS, evaluate_full_ranking, rmse, withheld_pairs
from fedrec.models import RecModel


@dataclass(frozen=True)
class SiloEvaluation:
    """Metric sums over a silo's evaluated users, so regions pool exactly into a user-weighted mean."""

    sums: dict[str, float]
    n_users: int
    sq_error: float = 0.0
    n_ratings: int = 0
    per_user: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Each evaluated user's metrics ("users": their ids, sorted), for paired tests inside the silo. Never sent
    and never logged: replies and logs carry only the sums."""

    def means(self) -> dict[str, float]:
        """Per-user means of each metric (and RMSE when ratings are explicit)."""
        out = {m: self.sums[m] / self.n_users if self.n_users else float("nan") for m in METRICS}
        if self.n_ratings:
            out["rmse"] = float(np.sqrt(self.sq_error / self.n_ratings))
        return out


def evaluate_model(model: RecModel, silo: SiloData, *, split: str = "test", rmse_too: bool = False,
                   withheld: np.ndarray | None = None) -> SiloEvaluation:
    """Full-ranking metrics on `split` (test excludes train+valid items; valid excludes train items).

    `withheld` (bool per item): items the region does not recommend to anyone (its guard's, `fedrec.silo.guard`).

    `rmse_too`: also the squared rating error on explicit ratings, for a model trained to predict them
    (`loss=mse`); a model trained to rank does not predict ratings, so its RMSE would mean nothing.
    """
    model.eval()
    target = silo.test if split == "test" else silo.valid
    exclude = [silo.train[:2]] + ([silo.valid[:2]] if split == "test" else [])
    exclude += withheld_pairs(np.unique(target[0]), withheld)
    if len(target[0]) == 0:
        return SiloEvaluation(sums=dict.fromkeys(METRICS, 0.0), n_users=0)
    per_user = evaluate_full_ranking(model.score_all, n_items=silo.n_items, targets=target[:2], exclude=exclude)
    sums = {m: float(per_user[m].sum()) for m in METRICS}
    sq, n = rmse(model.score_pairs, target) if silo.explicit and rmse_too else (0.0, 0)
    return SiloEvaluation(sums=sums, n_users=len(per_user["users"]), sq_error=sq, n_ratings=n, per_user=per_user)


def pool(evals: dict[str, SiloEvaluation]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-region means and the user-weighted overall mean of silos' metric sums (exact pooling)."""
    per_region = {r: e.means() for r, e in sorted(evals.items())}
    n = sum(e.n_users for e in evals.values())
    overall = {m: sum(e.sums[m] for e in evals.values()) / n if n else float("nan") for m in METRICS}
    n_r = sum(e.n_ratings for e in evals.values())
    if n_r:
        overall["rmse"] = float(np.sqrt(sum(e.sq_error for e in evals.values()) / n_r))
    return per_region, overall
