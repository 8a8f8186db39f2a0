"""Models fitted from sums of silos' sufficient statistics (`model=ease`, `model=ials`), Flower-free, below both sides.

The silo computes `local_statistics` and sends them as `stat.*` arrays (`silo/egress.py`: only in a
non-private run); the coordinator sums the accepted replies and `solve`s for the new global arrays, which
become a version like any other (adoption, pins, forks, `fedrec models`). The bounds use the same two
functions on pooled or single-silo data (`solve_silos`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.messages import MAX_ABS_RECEIVED
from fedrec.models import ModelSpec, build_model
from fedrec.statistics.base import Arrays, StatisticsFamily, StatShapes, sum_statistics
from fedrec.statistics.dp_ials import DpIalsStatistics
from fedrec.statistics.ease import EaseStatistics
from fedrec.statistics.ials import IalsStatistics
from fedrec.training import initial_global_arrays

__all__ = [
    "Arrays",
    "StatShapes",
    "StatisticsFamily",
    "check_model_catalog",
    "check_statistics_run",
    "is_statistics_model",
    "register_statistics",
    "solve_curve",
    "solve_replies",
    "solve_silos",
    "statistics_family",
    "sum_statistics",
]

_FAMILIES: dict[str, StatisticsFamily] = {"ease": EaseStatistics(), "ials": IalsStatistics()}
_DP_FAMILIES: dict[str, StatisticsFamily] = {"ials": DpIalsStatistics()}
"""The families with a user-level DP release (`privacy=user_dp`): what the coordinator screens and solves."""


def register_statistics(name: str, family: StatisticsFamily, *, force: bool = False) -> None:
    """Fit the registered model `name` from summed statistics; refuses to overwrite unless `force`."""
    if name in _FAMILIES and not force:
        raise ValueError(f"statistics for model {name!r} are already registered; pass force=True to replace them")
    _FAMILIES[name] = family


def is_statistics_model(spec: ModelSpec) -> bool:
    """True for a model fitted from summed statistics (no SGD rounds, no update averaging)."""
    return spec.name in _FAMILIES


def statistics_family(spec: ModelSpec, *, private: bool = False) -> StatisticsFamily:
    """The statistics protocol of a statistics model (`private`: its user-level DP release's)."""
    if spec.name not in _FAMILIES:
        raise ConfigError(f"model {spec.name!r} is trained by SGD, not solved from statistics")
    if private:
        if spec.name not in _DP_FAMILIES:
            raise ConfigError(f"model={spec.name} has no user-level DP release: use privacy=none, or model=ials, "
                              "model=mf or model=twotower with privacy=user_dp")
        return _DP_FAMILIES[spec.name]
    return _FAMILIES[spec.name]


def solve_silos(spec: ModelSpec, silos: Iterable[SiloData], *, n_items: int, seed: int, rounds: int = 1,
                item_features: np.ndarray | None = None) -> Arrays:
    """The global arrays these silos' data give when pooled after `rounds` rounds of solve(Σ local statistics).

    With every silo this is the centralized bound (the federation's own solves); with one silo, that silo
    alone. Starts from the federation's initial global arrays.
    """
    return solve_curve(spec, silos, n_items=n_items, seed=seed, rounds=[rounds], item_features=item_features)[rounds]


def solve_curve(spec: ModelSpec, silos: Iterable[SiloData], *, n_items: int, seed: int,
                rounds: Sequence[int], item_features: np.ndarray | None = None) -> dict[int, Arrays]:
    """`solve_silos` after each of `rounds`, from one run of solves.

    A model that converges in `rounds_needed` rounds (EASE: 1) stops there: later checkpoints are the same.
    """
    family, regions = statistics_family(spec), list(silos)
    if any(r < 1 for r in rounds):
        raise ValueError(f"rounds {list(rounds)} must be >= 1")
    arrays = initial_global_arrays(spec, n_items=n_items, seed=seed, item_features=item_features)
    out: dict[int, Arrays] = {}
    done = 0
    for target in sorted(set(rounds)):
        stop = target if family.rounds_needed is None else min(target, family.rounds_needed)
        for _ in range(done, stop):
            summed = sum_statistics(family.local_statistics(silo, arrays, spec) for silo in regions)
            arrays = family.solve(summed, arrays, spec, n_items)
        done = max(done, stop)
        out[target] = arrays
    return out


def _acceptable(family: StatisticsFamily, summed: Arrays, current: Arrays, spec: ModelSpec, n_items: int
                ) -> tuple[Arrays | None, str]:
    """The solve of `summed` when it is a model every silo accepts (finite, within ±`MAX_ABS_RECEIVED`)."""
    try:
        solved = family.solve(summed, current, spec, n_items)
    except (RuntimeError, ValueError) as exc:  # torch.linalg.LinAlgError is a RuntimeError
        return None, f"cannot be solved ({type(exc).__name__})"
    bad = [k for k, v in solved.items()
           if v.size and not (np.isfinite(v).all() and float(np.abs(v).max()) <= MAX_ABS_RECEIVED)]
    if bad:
        return None, f"solve to {bad} not finite or beyond ±{MAX_ABS_RECEIVED:g}, which every silo refuses"
    return solved, ""


def solve_replies(family: StatisticsFamily, parts: Sequence[tuple[str, Arrays]], current: Arrays, spec: ModelSpec,
                  n_items: int) -> tuple[Arrays | None, dict[str, str]]:
    """(the solve of Σ parts, {region: why} for the parts left out); None when no part can be kept.

    A statistic that passed the screen (`family.check`) can still break the solve: EASE's needs Σ G + λI
    positive definite, which a symmetric, non-negative but indefinite "Gram" breaks, and a well-conditioned one
    can still give a B that every silo refuses (beyond ±`MAX_ABS_RECEIVED`), which would stop the federation.
    Honest replies solve in one go. Otherwise each part is tried alone, scaled by the number of parts (for a
    sum of positive semi-definite statistics plus a ridge, n·G_s + λI is positive definite for every honest
    part, and the sum of such parts is too); parts that fail are left out and the rest solved again.
    """
    summed = sum_statistics(p for _, p in parts)
    solved, _ = _acceptable(family, summed, current, spec, n_items)
    if solved is not None:
        return solved, {}
    n, left_out = len(parts), {}
    for region, part in parts:
        _, why = _acceptable(family, {k: v.astype(np.float64) * n for k, v in part.items()}, current, spec, n_items)
        if why:
            left_out[region] = f"statistics that {why} (tried alone, x{n})"
    kept = [(r, p) for r, p in parts if r not in left_out]
    if not left_out or not kept:  # no single part to blame, or every part to blame: no model this round
        why = "the round's summed statistics give no model the silos accept"
        return None, {r: left_out.get(r, why) for r, _ in parts}
    solved, why = _acceptable(family, sum_statistics(p for _, p in kept), current, spec, n_items)
    if solved is None:
        return None, {**left_out, **{r: f"the others' statistics {why}" for r, _ in kept}}
    return solved, left_out


def check_model_catalog(spec: ModelSpec, n_items: int) -> None:
    """Refuse a catalog the model cannot handle (EASE: above 20,000 items), before anything is built."""
    if is_statistics_model(spec):
        statistics_family(spec).check_catalog(n_items, spec)


def check_statistics_run(spec: ModelSpec, *, private: bool, strategy: str, secure_aggregation: str,
                         weighting: str, loss: str, local_epochs: int = 1) -> None:
    """Refuse, saying why, run settings that make no sense for a statistics model (no-op for other models)."""
    if not is_statistics_model(spec):
        return
    build_model(spec, n_users=1, n_items=1)  # its own kwargs (EASE's λ), checked now rather than in round 1
    name = f"model={spec.name}"
    problems = [why for bad, why in [
        (private and spec.name not in _DP_FAMILIES,
         f"{name} sends each silo's exact sufficient statistics (EASE: XᵀX, its users' co-occurrence counts), "
         "which under privacy=user_dp would have to be noised and accounted; no DP variant exists for it: use "
         "privacy=none, or model=ials / model=mf / model=twotower with privacy=user_dp"),
        (strategy != "fedavg", f"{name} sums the silos' statistics and solves in closed form: strategy={strategy} "
                               "(a server optimizer) has no update to step; use strategy=fedavg"),
        (secure_aggregation != "none", f"{name} needs the exact sum of statistics; secure-aggregation="
                                       f"{secure_aggregation} here averages clipped, quantized updates"),
        (weighting != "uniform", f"{name} sums statistics unweighted; weighting={weighting} would only reveal "
                                 "each silo's size"),
        (loss == "mse", f"{name} ranks and predicts no ratings: train.loss=mse (RMSE) does not apply"),
        (local_epochs != 1, f"{name} takes one solve per round: federation.local_epochs={local_epochs} has no "
                            "meaning for it (set 1; more rounds = more solves)"),
    ] if bad]
    if problems:
        raise ConfigError("; ".join(problems))
