"""A silo's own evaluation log: every evaluation it ran, and what it serves and why (never sent).

`<state-dir>/evaluations/run-<id>.jsonl`, one line per evaluated round. Under DP this is the only place a
silo's metrics exist; with an adoption review it also holds the region's policy, its decision and the
served model's metrics. In a simulation the researcher owns every silo and may read all the logs
(`read_evaluations`); a coordinator never can.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedrec.evaluation import SiloEvaluation
from fedrec.silo.policy import SiloIdentity
from fedrec.silo.review import Review
from fedrec.silo.state_dir import StateDir


@dataclass(frozen=True)
class LoggedEvaluation:
    """One line of a silo's evaluation log."""

    round: int
    region: str
    evaluation: SiloEvaluation
    policy: dict[str, Any] | None = None
    """The region's adoption policy (with a review only)."""
    decision: dict[str, Any] | None = None
    """What the region serves after this round and why (with a review only)."""
    served: SiloEvaluation | None = None
    """The served model's test metrics (with a review, when the region serves a model)."""
    own_line: SiloEvaluation | None = None
    """`adopt: adapt`: the region's own local-only line's test metrics, served or not."""
    valid: SiloEvaluation | None = None
    """The received version's metrics on the region's validation users (the run's last round, and every round a
    review needed them): what a tuning study may select on, never the test split."""


def _sums(ev: SiloEvaluation) -> dict[str, Any]:
    return {"sums": ev.sums, "n_users": ev.n_users, "sq_error": ev.sq_error, "n_ratings": ev.n_ratings}


def _evaluation(d: dict[str, Any]) -> SiloEvaluation:
    return SiloEvaluation(sums=d["sums"], n_users=d["n_users"], sq_error=d["sq_error"], n_ratings=d["n_ratings"])


def log_evaluation(ident: SiloIdentity, *, run_id: str, server_round: int, ev: SiloEvaluation,
                   review: Review | None = None, valid: SiloEvaluation | None = None) -> Path:
    """Append an evaluation (and, with a `review`, the region's serving decision) to the silo's log.

    `valid`: the same version's metrics on the region's validation users, when they were computed.
    """
    path = StateDir(ident.require_state_dir()).evaluations(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    line: dict[str, Any] = {"round": server_round, "region": ident.region, **_sums(ev)}
    if valid is not None:
        line["valid"] = _sums(valid)
    if review is not None:
        line["policy"] = asdict(ident.policy)
        line["decision"] = asdict(review.decision)
        line["served"] = _sums(review.served) if review.served is not None else None
        if review.own_line is not None:
            line["own_line"] = _sums(review.own_line)
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return path


def read_evaluations(state_dir: Path, run_id: str) -> list[LoggedEvaluation]:
    """A silo's evaluation log for one run, oldest first (empty when it evaluated nothing)."""
    path = StateDir(Path(state_dir)).evaluations(run_id)
    if not path.exists():
        return []
    out = []
    for text in path.read_text().splitlines():
        if text.strip():
            d = json.loads(text)
            out.append(LoggedEvaluation(
                round=int(d["round"]), region=str(d["region"]), evaluation=_evaluation(d), policy=d.get("policy"),
                decision=d.get("decision"), served=_evaluation(d["served"]) if d.get("served") else None,
                own_line=_evaluation(d["own_line"]) if d.get("own_line") else None,
                valid=_evaluation(d["valid"]) if d.get("valid") else None))
    return out
