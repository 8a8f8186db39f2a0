"""Per-region adoption policies: which global model version a region serves, decided inside the silo.

A region may follow the federation (`always`), follow it only when a new version beats what it serves on
its own validation users (`if_better`), stay on a version (`pin`), or go its own way (`fork`: serve a line
continued by local training only, optionally still contributing DP updates). The decision and its
evidence are appended to the silo's own log and never sent: a jurisdiction's choice of model is its
business. `fedrec.federation.serving` applies a policy inside the ClientApp and keeps the served model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from fedrec.io import atomic_write_text
from fedrec.metrics import METRICS

SERVING_FILE = "serving.json"
DECISIONS_FILE = "adoption.jsonl"


@dataclass(frozen=True)
class AdoptionPolicy:
    """One region's policy; `from_config` validates it with the region and key in the message."""

    kind: str = "always"
    metric: str = "ndcg@20"
    margin: float = 0.0
    version: str | None = None
    from_round: int | None = None
    contribute: bool = True

    @classmethod
    def from_config(cls, region: str, cfg: dict[str, Any]) -> AdoptionPolicy:
        """Parse `{adopt: always}`, `{adopt: if_better, metric:, margin:}`, `{pin: ID}` or `{fork: ID|round}`."""
        where = f"adoption.{region}"
        known = {"adopt", "metric", "margin", "pin", "fork", "contribute"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        chosen = [k for k in ("adopt", "pin", "fork") if k in cfg]
        if len(chosen) != 1:
            raise ConfigError(f"{where}: give exactly one of adopt / pin / fork, got {chosen or 'none'}")
        metric, margin = str(cfg.get("metric", "ndcg@20")), cfg.get("margin", 0.0)
        if metric not in METRICS:
            raise ConfigError(f"{where}.metric={metric!r} is unknown; choose one of {METRICS}")
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) or margin < 0:
            raise ConfigError(f"{where}.margin={margin!r} must be a number >= 0")
        contribute = cfg.get("contribute", True)
        if not isinstance(contribute, bool):
            raise ConfigError(f"{where}.contribute={contribute!r} must be true or false")
        if "adopt" in cfg:
            kind = str(cfg["adopt"])
            if kind not in ("always", "if_better"):
                raise ConfigError(f"{where}.adopt={kind!r}: choose always or if_better (or use pin / fork)")
            return cls(kind=kind, metric=metric, margin=float(margin), contribute=contribute)
        if "pin" in cfg:
            if not isinstance(cfg["pin"], str) or not cfg["pin"]:
                raise ConfigError(f"{where}.pin must be a model version id, got {cfg['pin']!r}")
            return cls(kind="pin", version=cfg["pin"], contribute=contribute)
        start = cfg["fork"]
        if isinstance(start, bool) or not isinstance(start, int | str) or (isinstance(start, int) and start < 0):
            raise ConfigError(f"{where}.fork must be a version id or a round number >= 0, got {start!r}")
        return cls(kind="fork", version=start if isinstance(start, str) else None,
                   from_round=start if isinstance(start, int) else None, contribute=contribute)


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
