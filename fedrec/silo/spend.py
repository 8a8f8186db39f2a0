"""What a silo has spent, read from its own ledgers (never from the coordinator's history).

The budget ledger (`privacy_ledger.json`) holds every DP release: its Gaussian steps, the run it belongs to and
ε after it, at the ledger's δ. From it: ε spent in all (every run composed), and per run its releases, ε of that
run alone and ε after its last release. The egress ledger (`egress_ledger.jsonl`) adds how many replies left and
when the last did, from which a jurisdiction's `ledger-retention-days` gives the earliest day it may drop them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from fedrec.privacy.accountant import GaussianSteps, SiloAccountant, epsilon_of
from fedrec.silo.egress_ledger import EgressLedger
from fedrec.silo.state_dir import StateDir


@dataclass(frozen=True)
class SiloSpend:
    """One silo's spending as its ledgers record it (`epsilon` None: no budget ledger, nothing spent under DP)."""

    epsilon: float | None = None
    delta: float | None = None
    budget_epsilon: float | None = None
    accountant: str | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    replies: int = 0
    last_reply_at: float | None = None

    def keep_until(self, retention_days: int | None) -> str | None:
        """The earliest date (UTC, ISO) the jurisdiction's retention lets it drop its ledgers (None: no rule)."""
        if retention_days is None or self.last_reply_at is None:
            return None
        return (datetime.fromtimestamp(self.last_reply_at, UTC) + timedelta(days=retention_days)).date().isoformat()

    def to_dict(self, retention_days: int | None = None) -> dict[str, Any]:
        """JSON-ready, with `keep_until` for the given retention."""
        return {"epsilon": self.epsilon, "delta": self.delta, "budget_epsilon": self.budget_epsilon,
                "accountant": self.accountant, "runs": self.runs, "replies": self.replies,
                "last_reply_at": self.last_reply_at, "keep_until": self.keep_until(retention_days)}


def read_spend(state_dir: Path) -> SiloSpend:
    """What the silo at `state_dir` has spent; a `ConfigError` naming the file when a ledger is unreadable."""
    paths = StateDir(Path(state_dir))
    try:
        entries = EgressLedger(paths.egress_ledger).entries()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    last = max((e.recorded_at for e in entries), default=None)
    if not paths.privacy_ledger.exists():
        return SiloSpend(replies=len(entries), last_reply_at=last)
    try:
        state = json.loads(paths.privacy_ledger.read_text())
        accountant = SiloAccountant.from_state_dict(state["accountant"])
        releases = [(str(r["run_id"]), GaussianSteps(**r["event"]), float(r["epsilon_after"]), float(r["recorded_at"]))
                    for r in state["releases"]]
        budget = float(state["budget_epsilon"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"privacy ledger {paths.privacy_ledger} is unreadable ({exc})") from exc
    runs: dict[str, dict[str, Any]] = {}
    for run_id in dict.fromkeys(r[0] for r in releases):
        mine = [r for r in releases if r[0] == run_id]
        runs[run_id] = {"releases": len(mine),
                        "epsilon": epsilon_of([r[1] for r in mine], delta=accountant.delta, kind=accountant.kind),
                        "epsilon_after": mine[-1][2]}
    last = max([t for t in (last,) if t is not None] + [r[3] for r in releases], default=None)
    return SiloSpend(epsilon=accountant.epsilon(), delta=accountant.delta, budget_epsilon=budget,
                     accountant=accountant.kind, runs=runs, replies=len(entries), last_reply_at=last)
