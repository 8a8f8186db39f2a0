"""Per-region adoption policies: which global model version a region serves, decided inside the silo.

A region may follow the federation (`always`), follow it only when a new version beats what it serves on
its own validation users (`if_better`), stay on a version (`pin`), or go its own way (`fork`: serve a line
continued by local training only, optionally still contributing DP updates). The decision and its
evidence are appended to the silo's own log and never sent: a jurisdiction's choice of model is its
business. `fedrec.silo.serving` applies a policy inside the ClientApp and keeps the served model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedrec.config import AdoptionPolicy
from fedrec.errors import ConfigError
from fedrec.io import atomic_write_text

SERVING_FILE = "serving.json"
DECISIONS_FILE = "adoption.jsonl"


@dataclass(frozen=True)
class Decision:
    """What a region serves after seeing a candidate version, and why (kept in the silo)."""

    round: int
    candidate: str
    served_before: str | None
    served_after: str | None
    adopted: bool
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)
    run_id: str = ""


def decide(policy: AdoptionPolicy, *, round: int, candidate: str, served: str | None,
           candidate_score: float | None = None, served_score: float | None = None) -> Decision:
    """Apply `policy` to a new global version; scores are the silo's own validation metric (if_better only)."""
    def keep(reason: str, **evidence: float) -> Decision:
        return Decision(round, candidate, served, served, False, reason, dict(evidence))

    def adopt(reason: str, **evidence: float) -> Decision:
        return Decision(round, candidate, served, candidate, True, reason, dict(evidence))

    if policy.kind == "always":
        return adopt("policy always adopts")
    if policy.kind == "pin":
        if candidate == policy.version or (policy.version and candidate.startswith(policy.version)):
            return adopt(f"the pinned version {policy.version} arrived")
        return keep(f"pinned to {policy.version}")
    if policy.kind == "fork":  # called only before the fork starts (`federation.serving` serves the fork after)
        return adopt("follows the federation until its fork point")
    # if_better
    if served is None:
        return adopt("nothing served yet")
    if candidate_score is None or served_score is None:
        raise ValueError("if_better needs the candidate's and the served version's validation scores")
    if candidate_score > served_score + policy.margin:
        return adopt(f"{policy.metric} {candidate_score:.4f} > served {served_score:.4f} + margin {policy.margin:g}",
                     candidate=candidate_score, served=served_score)
    return keep(f"{policy.metric} {candidate_score:.4f} <= served {served_score:.4f} + margin {policy.margin:g}",
                candidate=candidate_score, served=served_score)


class ServingRecord:
    """A silo's serving pointer (`serving.json`, replaced atomically) and decision log (`adoption.jsonl`)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def served(self) -> str | None:
        """The version this region serves now (None before its first decision)."""
        path = self.state_dir / SERVING_FILE
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())["version"]
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"serving pointer {path} is unreadable ({exc}); restore it from the decision log "
                              f"{self.state_dir / DECISIONS_FILE}") from exc

    def record(self, decision: Decision) -> None:
        """Append the decision (with its evidence), then move the pointer: the log is never behind the pointer."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / DECISIONS_FILE, "a") as f:
            f.write(json.dumps(asdict(decision), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        atomic_write_text(self.state_dir / SERVING_FILE,
                          json.dumps({"version": decision.served_after, "since_round": decision.round}))

    def decisions(self) -> list[Decision]:
        """Every decision this region made, in order."""
        path = self.state_dir / DECISIONS_FILE
        if not path.exists():
            return []
        return [Decision(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
