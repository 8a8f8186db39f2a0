"""What one coordinator round did, and how it enters the run's history (`FederationHistory`).

Every round goes into the round log; an evaluated round also into the evaluated rounds, and a round in which a
silo reported privacy spending or declined into the privacy rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedrec.coordinator.history import FederationHistory


@dataclass(frozen=True)
class RoundRecord:
    """What one round did: the version it made (if any), its evaluation, who took part, declined or failed."""

    round: int
    model_version: str | None
    evaluated: bool
    per_region: dict[str, dict[str, float]]
    overall: dict[str, float]
    participants: list[str]
    declined: dict[str, str]
    rejected: dict[str, str]
    privacy: dict[str, dict[str, float]]
    failures: list[str]
    train_loss: dict[str, float]
    round_time_s: float
    stopped: str = ""
    """Why the run stops after this round ("" when it goes on)."""
    robust: dict[str, Any] = field(default_factory=dict)
    """What robust aggregation did (`clipped_rows` per region) and who moved what (`top_moved`), when the
    coordinator saw each update (`fedrec.coordinator.robust`)."""
    metric_sums: dict[str, dict[str, Any]] = field(default_factory=dict)
    """A coalition line's evaluated round: each region's metric sums as its reply carried them (what the run's
    history pools per served line, `coalition_lines.combine`, also after a resume). Empty otherwise."""

    LOG_KEYS = ("round", "model_version", "participants", "declined", "rejected", "failures", "train_loss",
                "round_time_s", "robust")

    def entry(self) -> dict[str, Any]:
        """The round as `federated_history.json` and the progress callback see it."""
        out = {k: getattr(self, k) for k in ("round", "model_version", "evaluated", "per_region", "overall",
                                              "participants", "declined", "rejected", "privacy", "failures")}
        return {**out, "train_loss": self.train_loss, "round_time_s": self.round_time_s, "robust": self.robust,
                **({"metric_sums": self.metric_sums} if self.metric_sums else {})}


def record_round(h: FederationHistory, r: RoundRecord) -> dict[str, Any]:
    """Put the round in the history; returns the round's history entry."""
    entry = r.entry()
    if r.evaluated:
        h.rounds.append(entry)
    h.round_log.append({k: entry[k] for k in RoundRecord.LOG_KEYS})
    if r.privacy or r.declined:
        h.privacy_rounds.append({"round": r.round, "per_region": r.privacy, "declined": r.declined})
    return entry
