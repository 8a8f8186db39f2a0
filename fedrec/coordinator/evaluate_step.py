"""One round's evaluation exchange at the coordinator: send the version, pool what the silos reply.

Each silo evaluates the version on its own test users and reviews it under its own adoption policy; a private
run's silos reply without metrics (they stay in the silos' logs), a plain run's with metric sums, pooled exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedrec.evaluation import SiloEvaluation
from fedrec.messages import (
    COALITION_KEY,
    MODEL_IDENTITY_KEY,
    MODEL_LINEAGE_KEY,
    read_float,
    read_int,
    reply_region,
)
from fedrec.metrics import METRICS
from fedrec.versions import ModelVersion


def reply_evaluations(replies: list[Message]) -> dict[str, SiloEvaluation]:
    """Each region's metric sums from evaluation replies (none from a private run's: they stay in the silos)."""
    evals: dict[str, SiloEvaluation] = {}
    for msg in replies:
        c = msg.content
        if "metrics" not in c.metric_records:  # kept in the silo (private run): nothing to pool
            continue
        explicit = "n-ratings" in c.metric_records["metrics"]
        evals[reply_region(msg)] = SiloEvaluation(
            sums={k: read_float(c, "metrics", f"sum-{k}") for k in METRICS}, n_users=read_int(c, "metrics", "n-users"),
            sq_error=read_float(c, "metrics", "sq-error") if explicit else 0.0,
            n_ratings=read_int(c, "metrics", "n-ratings") if explicit else 0)
    return evals


def evaluate_global(grid: Grid, strategy: Any, rnd: int, arrays: ArrayRecord, timeout: float, version: str = "",
                    line: str = "", sent: ModelVersion | None = None, ancestry: Sequence[ModelVersion] = ()
                    ) -> tuple[dict[str, SiloEvaluation], list[str]]:
    """Ask every silo to evaluate `arrays` (global `version`, of coalition `line`): (metric sums, failure reasons).

    Each silo also reviews the version under its own adoption policy; that stays in the silo. `sent` and its
    `ancestry` are declared as in a training message (a silo with partners serves no line a forbidden region shaped).
    """
    config = ConfigRecord({"server-round": rnd, "model-version": version, **({COALITION_KEY: line} if line else {})})
    if sent is not None:
        config[MODEL_IDENTITY_KEY] = json.dumps(sent.identity(), sort_keys=True)
        config[MODEL_LINEAGE_KEY] = json.dumps([v.identity() for v in ancestry], sort_keys=True)
    replies = list(grid.send_and_receive(strategy.configure_evaluate(rnd, arrays, config, grid), timeout=timeout))
    evals = reply_evaluations(sorted((r for r in replies if not r.has_error()), key=reply_region))
    return evals, [str(r.error.reason)[:500] for r in replies if r.has_error()]
