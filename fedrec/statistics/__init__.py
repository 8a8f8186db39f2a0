"""Models fitted from sums of silos' sufficient statistics (`model=ease`), Flower-free and below both sides.

The silo computes `local_statistics` and sends them as `stat.*` arrays (`silo/egress.py`: only in a
non-private run); the coordinator sums the accepted replies and `solve`s for the new global arrays, which
become a version like any other (adoption, pins, forks, `fedrec models`). The bounds use the same two
functions on pooled or single-silo data (`solve_silos`).
"""

from __future__ import annotations

from collections.abc import Iterable

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.models import ModelSpec, build_model
from fedrec.statistics.base import Arrays, StatisticsFamily, StatShapes, sum_statistics
from fedrec.statistics.ease import EaseStatistics
from fedrec.training import initial_global_arrays

__all__ = [
    "Arrays",
    "StatShapes",
    "StatisticsFamily",
    "check_model_catalog",
    "check_statistics_run",
    "is_statistics_model",
    "register_statistics",
    "solve_silos",
    "statistics_family",
    "sum_statistics",
]

_FAMILIES: dict[str, StatisticsFamily] = {"ease": EaseStatistics()}


def register_statistics(name: str, family: StatisticsFamily, *, force: bool = False) -> None:
    """Fit the registered model `name` from summed statistics; refuses to overwrite unless `force`."""
    if name in _FAMILIES and not force:
        raise ValueError(f"statistics for model {name!r} are already registered; pass force=True to replace them")
    _FAMILIES[name] = family


def is_statistics_model(spec: ModelSpec) -> bool:
    """True for a model fitted from summed statistics (no SGD rounds, no update averaging)."""
    return spec.name in _FAMILIES


def statistics_family(spec: ModelSpec) -> StatisticsFamily:
    """The statistics protocol of a statistics model."""
    if spec.name not in _FAMILIES:
        raise ConfigError(f"model {spec.name!r} is trained by SGD, not solved from statistics")
    return _FAMILIES[spec.name]


def solve_silos(spec: ModelSpec, silos: Iterable[SiloData], *, n_items: int, seed: int) -> Arrays:
    """The global arrays these silos' data give when pooled: `rounds_needed` times solve(Σ local statistics).

    With every silo this is the centralized bound (for EASE, the federation's own solve); with one silo,
    that silo alone. Starts from the federation's initial global arrays.
    """
    family, regions = statistics_family(spec), list(silos)
    arrays = initial_global_arrays(spec, n_items=n_items, seed=seed)
    for _ in range(family.rounds_needed):
        current = arrays
        summed = sum_statistics(family.local_statistics(silo, current, spec) for silo in regions)
        arrays = family.solve(summed, current, spec, n_items)
    return arrays


def check_model_catalog(spec: ModelSpec, n_items: int) -> None:
    """Refuse a catalog the model cannot handle (EASE: above 20,000 items), before anything is built."""
    if is_statistics_model(spec):
        statistics_family(spec).check_catalog(n_items)


def check_statistics_run(spec: ModelSpec, *, private: bool, strategy: str, secure_aggregation: str,
                         weighting: str, loss: str) -> None:
    """Refuse, saying why, run settings that make no sense for a statistics model (no-op for other models)."""
    if not is_statistics_model(spec):
        return
    build_model(spec, n_users=1, n_items=1)  # its own kwargs (EASE's λ), checked now rather than in round 1
    name = f"model={spec.name}"
    problems = [why for bad, why in [
        (private, f"{name} sends each silo's exact sufficient statistics (EASE: XᵀX, its users' co-occurrence "
                  "counts), which under privacy=user_dp would have to be noised and accounted; that DP variant is "
                  "not implemented yet: use privacy=none, or model=mf / model=twotower with privacy=user_dp"),
        (strategy != "fedavg", f"{name} sums the silos' statistics and solves in closed form: strategy={strategy} "
                               "(a server optimizer) has no update to step; use strategy=fedavg"),
        (secure_aggregation != "none", f"{name} needs the exact sum of statistics; secure-aggregation="
                                       f"{secure_aggregation} here averages clipped, quantized updates"),
        (weighting != "uniform", f"{name} sums statistics unweighted; weighting={weighting} would only reveal "
                                 "each silo's size"),
        (loss == "mse", f"{name} ranks and predicts no ratings: train.loss=mse (RMSE) does not apply"),
    ] if bad]
    if problems:
        raise ConfigError("; ".join(problems))
