"""The region-side guard applied to one candidate version in the silo's review (`fedrec.silo.review.review`).

`fedrec.silo.guard` holds the guard's arithmetic; this module puts it to work on a candidate: it compares the
candidate with the region's reference, serves flagged rows the region's own way, withholds what the region's data
does not support, and re-fits the guarded model once so the review can score it. It knows nothing of where the
silo keeps its serving state: the caller passes the reference and the region's own moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.adoption_policy import AdoptionPolicy
from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation, evaluate_model
from fedrec.models import ModelSpec, RecModel
from fedrec.silo.guard import guard_version, overexposed, unsupported
from fedrec.silo.round import evaluate_round
from fedrec.training import Arrays, Tensors, TrainConfig, fitted_model


def same_shapes(a: Arrays, b: Arrays) -> bool:
    """Whether two sets of arrays have the same names and shapes (one model's)."""
    return a.keys() == b.keys() and all(np.shape(a[k]) == np.shape(b[k]) for k in a)


@dataclass(frozen=True)
class GuardedCandidate:
    """A candidate as the region's guard would serve it (`guard_candidate`)."""

    arrays: Arrays
    withheld: np.ndarray
    changed: bool
    """Whether anything differs from the candidate (a flagged row or a withheld item)."""
    model: RecModel | None
    """The guarded model re-fitted with the silo's users, when the guard built it (None: the candidate's)."""
    evidence: dict[str, float]


def guard_candidate(policy: AdoptionPolicy, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, candidate: Arrays,
                    local: Tensors | None, *, reference: Arrays | None, own: Arrays, seed: int,
                    fitted: RecModel | None = None) -> GuardedCandidate:
    """The region-side guard on a candidate version (`fedrec.silo.guard`): what would be served and withheld.

    `reference`: what the region serves (before any, the silo's own version 0; None: nothing to compare with);
    `own`: the region's own training moves since its last review. Rows that moved like no other (beyond k x the
    median row's move) are served as the region's own training moved them, and withheld when the region's data
    does not support the item; then items the region's data does not support that the guarded model would show
    to too many of its validation users are withheld too. `fitted`: the candidate re-fitted as the caller
    evaluated it, reused when the guard keeps every row of the candidate.
    """
    if reference is not None and not same_shapes(reference, candidate):
        reference = None  # another run's model (its shape changed): no reference to compare with
    evidence: dict[str, float] = {}
    withheld = flagged = np.zeros(silo.n_items, dtype=bool)
    if reference is not None:
        g = guard_version(reference, candidate, n_items=silo.n_items, k=policy.guard_k, own=own)
        candidate, flagged, evidence = g.arrays, g.flagged, dict(g.evidence)
        withheld = flagged & unsupported(silo, policy.guard_support)  # a supported item is never hidden
    model = None
    if policy.guard_max_exposure < 1:
        model = fitted if fitted is not None and not flagged.any() else fitted_model(spec, silo, candidate, local,
                                                                                    cfg, seed=seed)
        over, more = overexposed(model, silo, withheld=withheld, max_exposure=policy.guard_max_exposure,
                                 support_quantile=policy.guard_support)
        withheld, evidence = withheld | over, {**evidence, **more}
    evidence = {f"guard/{k}": v for k, v in evidence.items()}
    return GuardedCandidate(candidate, withheld, bool(withheld.any() or flagged.any()), model, evidence)


def guarded_eval(g: GuardedCandidate, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, local: Tensors | None,
                 *, seed: int, split: str) -> SiloEvaluation:
    """The guarded model's metrics on `split` (its withheld items kept out of every ranking)."""
    if g.model is not None:
        return evaluate_model(g.model, silo, split=split, rmse_too=cfg.loss == "mse", withheld=g.withheld)
    return evaluate_round(silo, spec, g.arrays, local, cfg, seed=seed, split=split, withheld=g.withheld)
