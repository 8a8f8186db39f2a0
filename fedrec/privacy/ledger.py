"""A silo's privacy budget ledger: authoritative, persisted in the silo, written *before* a release.

The silo, not the coordinator, decides whether it may release: `authorize` composes the would-be release
with everything already spent (via `SiloAccountant`), declines when the silo's budget would be exceeded,
and otherwise records the release on disk (atomically: temp file, fsync, rename) before returning. A
restarted or misbehaving coordinator therefore cannot make a silo spend twice: the ledger survives
restarts, and a second release for the same (run, round) is declined.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from fedrec.privacy.accountant import GaussianSteps, SiloAccountant


@dataclass(frozen=True)
class Release:
    """One approved release: what it cost and where the silo stands after it."""

    run_id: str
    server_round: int
    event: GaussianSteps
    epsilon_after: float
    recorded_at: float


@dataclass(frozen=True)
class Decline:
    """A refused release and why (sent to the coordinator as public metadata)."""

    reason: str
    epsilon_spent: float


class BudgetLedger:
    """The (ε, δ) budget of one silo's users and every release made against it, in one JSON file."""

    def __init__(self, path: Path, *, budget_epsilon: float, delta: float, accountant: str = "pld") -> None:
        if budget_epsilon <= 0:
            raise ConfigError(f"privacy budget epsilon={budget_epsilon} must be > 0")
        self.path = Path(path)
        self.budget_epsilon = budget_epsilon
        self.accountant = SiloAccountant(delta=delta, kind=accountant)
        self.releases: list[Release] = []
        self.plans: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        try:
            state = json.loads(self.path.read_text())
            stored = SiloAccountant.from_state_dict(state["accountant"])
            releases = [Release(run_id=r["run_id"], server_round=int(r["server_round"]),
                                event=GaussianSteps(**r["event"]), epsilon_after=float(r["epsilon_after"]),
                                recorded_at=float(r["recorded_at"])) for r in state["releases"]]
            plans = {str(k): dict(v) for k, v in state.get("plans", {}).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"privacy ledger {self.path} is unreadable ({exc}); it is the silo's record of "
                              "what it has spent: restore it from backup, never delete it to reset") from exc
        if stored.delta != self.accountant.delta or stored.kind != self.accountant.kind:
            raise ConfigError(
                f"privacy ledger {self.path} was kept at delta={stored.delta} ({stored.kind}) but this run asks "
                f"for delta={self.accountant.delta} ({self.accountant.kind}): a silo's budget has one delta")
        self.accountant = stored
        self.releases = releases
        self.plans = plans

    def plan_for(self, run_id: str) -> dict[str, Any] | None:
        """The DP plan (σ, q, steps...) this silo fixed for `run_id`, if any: a restarted silo reuses it."""
        return self.plans.get(run_id)

    def save_plan(self, run_id: str, plan: dict[str, Any]) -> None:
        """Fix a run's plan on disk before its first release (plans are never changed afterwards)."""
        if run_id in self.plans:
            raise ValueError(f"run {run_id} already has a privacy plan in {self.path}")
        self.plans[run_id] = dict(plan)
        try:
            self._write()
        except OSError:
            del self.plans[run_id]
            raise

    def epsilon_spent(self) -> float:
        """ε of everything this silo has released, at its δ."""
        return self.accountant.epsilon()

    def check(self, *, run_id: str, server_round: int, event: GaussianSteps) -> Decline | float:
        """Whether `authorize` would approve (without recording): a `Decline`, or the ε after the release."""
        if any(r.run_id == run_id and r.server_round == server_round for r in self.releases):
            return Decline(f"already released an update for run {run_id} round {server_round}; a silo "
                           "releases at most once per round", self.epsilon_spent())
        after = self.accountant.epsilon_if(event)
        if after > self.budget_epsilon:
            spent = self.epsilon_spent()  # only a decline reports it: each ε is a PLD composition
            return Decline(f"budget exhausted: spent ε={spent:.3f}, this release would make it ε={after:.3f} "
                           f"> budget ε={self.budget_epsilon:g} (δ={self.accountant.delta:g})", spent)
        return after

    def total_steps(self) -> int:
        """DP steps released so far, over every run this ledger has seen."""
        return sum(e.steps for e in self.accountant.events)

    def authorize(self, *, run_id: str, server_round: int, event: GaussianSteps) -> Release | Decline:
        """Record the release on disk and approve it, or decline it with a reason (nothing recorded)."""
        after = self.check(run_id=run_id, server_round=server_round, event=event)
        if isinstance(after, Decline):
            return after
        release = Release(run_id, server_round, event, after, time.time())
        self.accountant.record(event)
        self.releases.append(release)
        try:
            self._write()
        except OSError:
            self.accountant.events.pop()
            self.releases.pop()
            raise
        return release

    def _write(self) -> None:
        state = {"budget_epsilon": self.budget_epsilon, "accountant": self.accountant.state_dict(),
                 "releases": [asdict(r) for r in self.releases], "plans": self.plans}
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: readers see the old or the new ledger, never half of one
