"""A silo's state dir: one object owns every path in it.

Everything a jurisdiction keeps about a federation lives under the state dir its node config names (in
simulation `<output>/silo-state/<region>`): back it up, never reset it (the privacy ledger is the record of
what was spent).

```
<state-dir>/
  privacy_ledger.json    the budget ledger (file-locked; `.lock` beside it)
  egress_ledger.jsonl    every reply that left, hash-chained (`fedrec audit verify`)
  silo_errors.log        what failed, in full (replies carry only fixed codes)
  evaluations/run-ID.jsonl   the silo's own evaluations (under DP they never leave)
  serving/               what the region serves: pointer, decisions, served arrays, fork
  runs/RUN-KEY/          per run: users' parameters, optimizer moments, the last reply
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


@dataclass(frozen=True)
class StateDir:
    """The paths of one silo's state dir (nothing is created until something is written)."""

    root: Path

    PRIVACY_LEDGER: ClassVar[str] = "privacy_ledger.json"
    EGRESS_LEDGER: ClassVar[str] = "egress_ledger.jsonl"
    ERRORS: ClassVar[str] = "silo_errors.log"

    @property
    def privacy_ledger(self) -> Path:
        """The budget ledger."""
        return self.root / self.PRIVACY_LEDGER

    @property
    def egress_ledger(self) -> Path:
        """The record of every reply that left the silo."""
        return self.root / self.EGRESS_LEDGER

    @property
    def errors_log(self) -> Path:
        """Failures in full (the replies carry fixed codes only)."""
        return self.root / self.ERRORS

    @property
    def serving(self) -> Path:
        """The region's serving state (pointer, decisions, served arrays, fork)."""
        return self.root / "serving"

    def evaluations(self, run_id: str) -> Path:
        """The silo's own evaluation log of one run."""
        return self.root / "evaluations" / f"run-{run_id}.jsonl"

    def run(self, run_key: str) -> Path:
        """Per-run state: users' parameters, optimizer moments, the last reply."""
        return self.root / "runs" / run_key
