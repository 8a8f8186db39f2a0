"""What a region could build alone, and what pooling buys, from the baselines: chosen on validation only.

`best_local`: per region, the baseline (with its own tuned hyperparameter) whose validation NDCG@20 on that
region's own validation users is highest: what a jurisdiction outside the federation would deploy.
`best_pooled`: the baseline whose pooled validation NDCG@20 is highest. Neither looks at the test split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedrec.baselines.run import BaselineResult, Choice
from fedrec.evaluation import SiloEvaluation


@dataclass(frozen=True)
class Pick:
    """A baseline picked on validation, and its test evaluation per region."""

    names: dict[str, str]
    """region -> the baseline picked for it (one name for every region when pooled)."""
    test: dict[str, SiloEvaluation]


def _valid_score(choice: Choice | None) -> float | None:
    if choice is None or not choice.valid_ndcg:
        return None
    return choice.valid_ndcg[choice.value]


def _ran(results: Mapping[str, BaselineResult]) -> list[BaselineResult]:
    return [r for r in results.values() if r.skipped is None]


def best_local(results: Mapping[str, BaselineResult]) -> Pick | None:
    """Per region, the local-only baseline with the best validation NDCG@20 (ties: the order given)."""
    ran = _ran(results)
    if not ran:
        return None
    names, test = {}, {}
    for region in sorted(ran[0].local_only):
        scored = [(_valid_score(r.local_choice.get(region)), r) for r in ran]
        best = max(scored, key=lambda sr: -1.0 if sr[0] is None else sr[0])[1]
        names[region], test[region] = best.name, best.local_only[region]
    return Pick(names, test)


def best_pooled(results: Mapping[str, BaselineResult]) -> Pick | None:
    """The pooled baseline with the best pooled validation NDCG@20 (ties: the order given)."""
    ran = _ran(results)
    if not ran:
        return None
    best = max(ran, key=lambda r: -1.0 if (v := _valid_score(r.centralized_choice)) is None else v)
    return Pick({region: best.name for region in best.centralized}, dict(best.centralized))


def _choice_json(choice: Choice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return {"value": choice.value, "valid_ndcg@20": {str(k): v for k, v in choice.valid_ndcg.items()}}


def describe(result: BaselineResult) -> dict[str, Any]:
    """JSON-ready facts of one baseline run: its hyperparameter, the choices on validation, timings, or why skipped."""
    if result.skipped is not None:
        return {"skipped": result.skipped}
    return {"hyperparameter": result.hyperparameter, "centralized": _choice_json(result.centralized_choice),
            "local_only": {r: _choice_json(c) for r, c in sorted(result.local_choice.items())},
            "seconds": result.seconds}
