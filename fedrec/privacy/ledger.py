"""A silo's privacy budget ledger: authoritative, persisted in the silo, written *before* a release.

The silo, not the coordinator, decides whether it may release: `authorize` composes the would-be release
with everything already spent (via `SiloAccountant`), declines when the silo's budget would be exceeded,
and otherwise records the release on disk (atomically: temp file, fsync, rename) before returning. A
restarted or misbehaving coordinator therefore cannot make a silo spend twice: the ledger survives
restarts, and a second release for the same (run, round) is declined.

Several processes may hold a ledger on the same file at once (two runs on one silo, or a restarted
SuperNode next to one still finishing). Every read-modify-write — `authorize` and `save_plan` — therefore
runs under an exclusive OS advisory lock (`fcntl.flock` on the sibling file `<ledger>.lock`), re-reads the
ledger from disk under it, decides against that fresh state, writes, and only then unlocks. The lock
protects the ledger from lost updates: without it, two processes that loaded the same state before their
(seconds-long) DP training could both approve, and the second write would erase the first's release, so
the ledger would under-count what the silo spent. Reads need no lock (writes are atomic renames), so
`check` and a constructed object's attributes are a snapshot that may be stale; `authorize` never trusts
them. The lock file is empty and must be left in place (deleting it while a process waits on it would let
two writers in).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from fedrec.io import atomic_write_text
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
    """The (ε, δ) budget of one silo's users and every release made against it, in one JSON file.

    The attributes (`accountant`, `releases`, `plans`) hold the state read at construction and are
    refreshed from disk, under the file lock, by every `authorize` and `save_plan`.
    """

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

    @property
    def lock_path(self) -> Path:
        """The sibling file `<ledger>.lock` that `authorize` and `save_plan` hold an exclusive flock on."""
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive lock and re-read the ledger from disk (another process may have written it).

        Blocks until no other process holds the lock; the kernel drops a flock when its holder dies, so a
        crashed process cannot leave the ledger locked.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.path.exists():  # missing: nothing written yet, keep what this object holds
                self._load()
            yield
        finally:
            os.close(fd)  # releases the flock (this is the only descriptor of its open file description)

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

    def save_plan(self, run_id: str, plan: dict[str, Any]) -> dict[str, Any]:
        """Fix a run's plan on disk before its first release (plans are never changed afterwards).

        Under the lock, against the ledger as it is on disk: if the run has no plan yet, `plan` is stored;
        if another process already stored the very same plan (both calibrated it from the same state), that
        is no conflict and nothing is written; a *different* stored plan is kept and a `ValueError` raised,
        since the caller would otherwise train with a σ the ledger does not hold for the run (`plan_for`
        then returns the stored plan). Returns the plan on disk for `run_id`.
        """
        wanted: dict[str, Any] = json.loads(json.dumps(plan))  # as it reads back from the ledger
        with self._locked():
            stored = self.plans.get(run_id)
            if stored is not None:
                if stored == wanted:
                    return stored
                raise ValueError(f"run {run_id} already has a different privacy plan in {self.path} (stored "
                                 f"{stored}, not {wanted}); a run keeps the plan it started with: use plan_for")
            self.plans[run_id] = wanted
            try:
                self._write()
            except OSError:
                del self.plans[run_id]
                raise
            return wanted

    def epsilon_spent(self) -> float:
        """ε of everything this silo has released, at its δ."""
        return self.accountant.epsilon()

    def check(self, *, run_id: str, server_round: int, event: GaussianSteps) -> Decline | float:
        """Whether `authorize` would approve (without recording): a `Decline`, or the ε after the release.

        A pre-check on this object's snapshot, taken without the lock: another process may have released
        since, so `authorize` checks again under the lock against the ledger on disk.
        """
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
        """Record the release on disk and approve it, or decline it with a reason (nothing recorded).

        Re-reads, checks, records and writes under the ledger's exclusive lock, so releases approved by
        concurrent processes compose instead of overwriting one another.
        """
        with self._locked():
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
        """Replace the ledger on disk atomically and durably; the caller holds the lock."""
        state = {"budget_epsilon": self.budget_epsilon, "accountant": self.accountant.state_dict(),
                 "releases": [asdict(r) for r in self.releases], "plans": self.plans}
        atomic_write_text(self.path, json.dumps(state, indent=1))  # readers see the old or the new ledger
