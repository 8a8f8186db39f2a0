"""Pooled and local-only baselines on the federation's own split, tuned on validation only.

Pooled ("centralized"): one model fit on every silo's training data stacked (users kept distinct), its
hyperparameter chosen by the pooled (user-weighted) validation NDCG@20 over all silos. Local-only: each silo
fits alone and picks its own value on its own validation split. Ties go to the first grid value.

Both the validation fits and the final model are fit on `silo.train` only, exactly the data the federated
models train on; validation interactions are not folded back in before testing (that would give the
baselines more data than the federation sees). The test split is read once, for the chosen value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import scipy.sparse as sp

from fedrec.baselines.ease import DEFAULT_MAX_ITEMS, LAMBDAS, check_lambda, ease_path, too_many_items
from fedrec.baselines.itemknn import KS, check_k, itemknn_path
from fedrec.baselines.matrix import ItemModel, evaluate_scores, pooled_matrix, silo_matrix
from fedrec.baselines.popularity import popularity_path
from fedrec.data.split import SiloData
from fedrec.errors import ConfigError, DataError
from fedrec.evaluation import SiloEvaluation, pool

SELECT_BY = "ndcg@20"
FitPath = Callable[[sp.csr_matrix, Sequence[float]], Iterator[tuple[float | None, ItemModel]]]


@dataclass(frozen=True)
class BaselineSpec:
    """A baseline: how to fit it along a grid, its default grid, and when it must be skipped."""

    name: str
    hyperparameter: str  # "" when it has none
    grid: tuple[float, ...]
    default: float | None  # used only when no silo has a validation split to choose with
    path: FitPath
    check_value: Callable[[float], None] | None = None
    refuse: Callable[[int, int], str | None] | None = None  # (n_items, max_items) -> why skipped


BASELINES: dict[str, BaselineSpec] = {
    "ease": BaselineSpec("ease", "lambda", LAMBDAS, 300.0, ease_path, check_lambda, too_many_items),
    "itemknn": BaselineSpec("itemknn", "k", tuple(float(k) for k in KS), 50.0, itemknn_path, check_k),
    "popularity": BaselineSpec("popularity", "", (), None, popularity_path),
}


@dataclass(frozen=True)
class Choice:
    """The chosen hyperparameter and the validation NDCG@20 of every grid value (empty: no validation data)."""

    value: float | None
    valid_ndcg: dict[float | None, float]


@dataclass(frozen=True)
class BaselineResult:
    """One baseline, pooled and local-only, evaluated on every silo's test split."""

    name: str
    hyperparameter: str
    centralized: dict[str, SiloEvaluation]
    local_only: dict[str, SiloEvaluation]
    centralized_choice: Choice | None
    local_choice: dict[str, Choice]
    seconds: dict[str, float]  # centralized_fit, local_only_fit (all grid values, all silos) and total
    skipped: str | None = None


def run_baselines(silos: Mapping[str, SiloData], names: Sequence[str], *, max_items: int = DEFAULT_MAX_ITEMS,
                  grids: Mapping[str, Sequence[float]] | None = None) -> dict[str, BaselineResult]:
    """Fit, tune on validation and test each named baseline, pooled and local-only, on every silo.

    `grids` overrides a baseline's hyperparameter grid (e.g. {"ease": [100, 300]}). A baseline that cannot
    run on this catalog (EASE above `max_items` items) comes back with `skipped` set, not an exception.
    """
    specs = [_spec(n) for n in dict.fromkeys(names)]
    chosen = _grids(specs, grids or {})
    if max_items < 1:
        raise ConfigError(f"max_items={max_items} must be >= 1")
    n_items = _catalog_size(silos)
    return {s.name: _run_one(s, chosen[s.name], silos, n_items=n_items, max_items=max_items) for s in specs}


def _spec(name: str) -> BaselineSpec:
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; available: {', '.join(sorted(BASELINES))}")
    return BASELINES[name]


def _grids(specs: list[BaselineSpec], overrides: Mapping[str, Sequence[float]]) -> dict[str, tuple[float, ...]]:
    by_name = {s.name: s for s in specs}
    for name, grid in overrides.items():
        spec = by_name.get(name)
        if spec is None or spec.check_value is None:
            tunable = sorted(s.name for s in specs if s.check_value is not None)
            raise ConfigError(f"grids[{name!r}]: not a requested baseline with a hyperparameter; tunable: {tunable}")
        if not grid:
            raise ConfigError(f"grids[{name!r}] is empty; give at least one {spec.hyperparameter} value")
        for value in grid:
            spec.check_value(value)
    return {s.name: tuple(float(v) for v in overrides.get(s.name, s.grid)) for s in specs}


def _catalog_size(silos: Mapping[str, SiloData]) -> int:
    if not silos:
        raise DataError("no silos to evaluate baselines on")
    sizes = {s.n_items for s in silos.values()}
    if len(sizes) != 1:
        raise DataError(f"silos disagree on the catalog size {sorted(sizes)}: they must share one item catalog")
    return sizes.pop()


def _run_one(spec: BaselineSpec, grid: tuple[float, ...], silos: Mapping[str, SiloData], *, n_items: int,
             max_items: int) -> BaselineResult:
    reason = spec.refuse(n_items, max_items) if spec.refuse else None
    if reason is not None:
        return BaselineResult(spec.name, spec.hyperparameter, {}, {}, None, {}, {}, skipped=reason)
    start = time.perf_counter()
    regions = sorted(silos)
    mats = {r: silo_matrix(silos[r]) for r in regions}
    c_choice, centralized, c_fit = _select_and_test(spec, grid, pooled_matrix(silos),
                                                    {r: (silos[r], mats[r]) for r in regions})
    local_choice, local_only, l_fit = {}, {}, 0.0
    for r in regions:
        local_choice[r], tested, fit_s = _select_and_test(spec, grid, mats[r], {r: (silos[r], mats[r])})
        local_only[r], l_fit = tested[r], l_fit + fit_s
    seconds = {"centralized_fit": c_fit, "local_only_fit": l_fit, "total": time.perf_counter() - start}
    return BaselineResult(spec.name, spec.hyperparameter, centralized, local_only, c_choice, local_choice, seconds)


def _select_and_test(spec: BaselineSpec, grid: tuple[float, ...], x_fit: sp.csr_matrix,
                     targets: dict[str, tuple[SiloData, sp.csr_matrix]]
                     ) -> tuple[Choice, dict[str, SiloEvaluation], float]:
    """Fit on `x_fit` for each grid value, keep the best pooled validation NDCG@20 over `targets`, test it.

    `targets` maps a region to its silo and its own training matrix (the users' histories to score from).
    Returns the choice, the test evaluation per region, and the seconds spent fitting.
    """
    has_valid = any(len(silo.valid[0]) for silo, _ in targets.values())
    if not has_valid:
        grid = (spec.default,) if spec.default is not None else ()
    curve: dict[float | None, float] = {}
    best: tuple[float | None, ItemModel] | None = None
    fit_s = 0.0
    for value, model, seconds in _timed(spec.path(x_fit, grid)):
        fit_s += seconds
        if has_valid:
            valid = {r: evaluate_scores(model.scorer(x), silo, split="valid") for r, (silo, x) in targets.items()}
            curve[value] = pool(valid)[1][SELECT_BY]
        if best is None or curve.get(value, 0.0) > curve.get(best[0], 0.0):
            best = (value, model)
    if best is None:
        raise AssertionError("a baseline's fit path yielded no model")
    test = {r: evaluate_scores(best[1].scorer(x), silo, split="test") for r, (silo, x) in targets.items()}
    return Choice(best[0], curve), test, fit_s


def _timed(models: Iterator[tuple[float | None, ItemModel]]) -> Iterator[tuple[float | None, ItemModel, float]]:
    """Each (value, model) of a fit path with the seconds spent producing it (the fit, not the evaluation)."""
    while True:
        start = time.perf_counter()
        try:
            value, model = next(models)
        except StopIteration:
            return
        yield value, model, time.perf_counter() - start
