"""The coordinator's round loop over a Flower `Grid`: train, aggregate, evaluate per region, record.

It sees only what silos reply (global parameters, public metadata, metric sums) and never a user id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedrec.federation.egress import read_float, read_int, read_region
from fedrec.federation.settings import RunSettings, read_manifest
from fedrec.federation.silo import initial_global_arrays
from fedrec.federation.strategies import build_strategy
from fedrec.metrics import METRICS
from fedrec.model_io import save_global_model

RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class FederationHistory:
    """Per-region evaluation of the global model after each evaluated round, and the final parameters.

    Rounds are evaluated at round 1, every `eval_every` rounds and at the last round.
    """

    rounds: list[dict[str, Any]] = field(default_factory=list)
    final_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (without the arrays)."""
        return {"rounds": self.rounds, "wall_time_s": self.wall_time_s}


def _region(msg: Message) -> str:
    return read_region(msg.content)


def pool_evaluations(replies: list[Message]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-region means and the user-weighted overall mean from evaluation replies' metric sums."""
    per_region: dict[str, dict[str, float]] = {}
    totals = dict.fromkeys(METRICS, 0.0)
    n_total, sq, n_r = 0, 0.0, 0
    for msg in replies:
        c = msg.content
        n = read_int(c, "metrics", "n-users")
        sums = {k: read_float(c, "metrics", f"sum-{k}") for k in METRICS}
        region_metrics = {k: sums[k] / n if n else float("nan") for k in METRICS}
        if "n-ratings" in c.metric_records["metrics"]:
            sq_r, n_ratings = read_float(c, "metrics", "sq-error"), read_int(c, "metrics", "n-ratings")
            region_metrics["rmse"] = float(np.sqrt(sq_r / max(1, n_ratings)))
            sq += sq_r
            n_r += n_ratings
        per_region[_region(msg)] = region_metrics
        for k in METRICS:
            totals[k] += sums[k]
        n_total += n
    overall = {k: totals[k] / n_total if n_total else float("nan") for k in METRICS}
    if n_r:
        overall["rmse"] = float(np.sqrt(sq / n_r))
    return dict(sorted(per_region.items())), overall


def run_federation(grid: Grid, s: RunSettings, *, on_round: RoundCallback | None = None,
                   timeout: float = 3600.0) -> FederationHistory:
    """Run `s.num_rounds` rounds of train → aggregate → evaluate; write outputs when `s.output_dir` is set."""
    start = time.perf_counter()
    manifest = read_manifest(s.data_dir)
    init = initial_global_arrays(s.model_spec, n_items=int(manifest["n_items"]), seed=s.seed)
    arrays = ArrayRecord({k: Array(v) for k, v in init.items()})
    strategy = build_strategy(s)
    history = FederationHistory()
    for rnd in range(1, s.num_rounds + 1):
        t0 = time.perf_counter()
        config = ConfigRecord({"server-round": rnd})
        replies = grid.send_and_receive(strategy.configure_train(rnd, arrays, config, grid), timeout=timeout)
        ok = sorted((r for r in replies if not r.has_error()), key=_region)
        failed = [r for r in replies if r.has_error()]
        aggregated, _ = strategy.aggregate_train(rnd, ok)
        if aggregated is not None:
            arrays = aggregated
        evaluate = rnd == 1 or rnd == s.num_rounds or rnd % s.eval_every == 0
        eval_replies: list[Message] = []
        per_region: dict[str, dict[str, float]] = {}
        overall: dict[str, float] = {}
        if evaluate:
            eval_replies = list(grid.send_and_receive(strategy.configure_evaluate(
                rnd, arrays, ConfigRecord({"server-round": rnd}), grid), timeout=timeout))
            per_region, overall = pool_evaluations(sorted((r for r in eval_replies if not r.has_error()), key=_region))
        entry = {
            "round": rnd,
            "evaluated": evaluate,
            "per_region": per_region,
            "overall": overall,
            "participants": [_region(r) for r in ok],
            "failures": [str(r.error.reason)[:500] for r in failed]
            + [str(r.error.reason)[:500] for r in eval_replies if r.has_error()],
            "round_time_s": time.perf_counter() - t0,
        }
        if evaluate:
            history.rounds.append(entry)
        if on_round is not None:
            on_round(entry)
    history.final_arrays = {k: v.numpy() for k, v in arrays.items()}
    history.wall_time_s = time.perf_counter() - start
    if s.output_dir:
        out = Path(s.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "federated_history.json").write_text(json.dumps(history.to_json(), indent=1))
        save_global_model(out / "global_model.safetensors", history.final_arrays, spec=s.model_spec,
                          metadata={"rounds": s.num_rounds, "strategy": s.strategy})
    return history
