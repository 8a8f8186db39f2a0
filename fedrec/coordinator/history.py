"""What a federation did, as the coordinator saw it: evaluated rounds, round log, DP reports, versions.

The coordinator fills one `FederationHistory` through a run (`run_federation`), writes it to
`<output-dir>/federated_history.json`, and returns it; in-process callers (the simulation, the experiment)
take the object itself, and other processes read the file back with `FederationHistory.load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HISTORY_FILE = "federated_history.json"


@dataclass
class FederationHistory:
    """Per-region evaluation of the global model after each evaluated round, and the final parameters.

    Rounds are evaluated at round 1, every `eval_every` rounds and at the last round. Each entry of `rounds`
    and `round_log` is a plain dict in the JSON layout of `federated_history.json` (and `results.json`).
    """

    rounds: list[dict[str, Any]] = field(default_factory=list)
    privacy_rounds: list[dict[str, Any]] = field(default_factory=list)
    final_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    wall_time_s: float = 0.0
    run_id: str = ""
    stopped_early: str = ""
    versions: list[dict[str, Any]] = field(default_factory=list)
    round_log: list[dict[str, Any]] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    coalitions: dict[str, Any] = field(default_factory=dict)
    """A run with coalitions (`fedrec.coordinator.coalition_lines`): per line, its regions and its own history."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (without the arrays)."""
        return {"run_id": self.run_id, "rounds": self.rounds, "privacy_rounds": self.privacy_rounds,
                "model_versions": self.versions, "round_log": self.round_log, "resumed_at": self.resumed_at,
                "stopped_early": self.stopped_early, "wall_time_s": self.wall_time_s,
                **({"coalitions": self.coalitions} if self.coalitions else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FederationHistory:
        """The history `to_json` wrote (the arrays are in the global model file, not here)."""
        return cls(rounds=list(d["rounds"]), privacy_rounds=list(d["privacy_rounds"]),
                   wall_time_s=float(d["wall_time_s"]), run_id=str(d["run_id"]),
                   stopped_early=str(d["stopped_early"]), versions=list(d["model_versions"]),
                   round_log=list(d["round_log"]), resumed_at=list(d.get("resumed_at", [])),
                   coalitions=dict(d.get("coalitions") or {}))

    def save(self, output_dir: str | Path) -> None:
        """`<output_dir>/federated_history.json` (nothing when `output_dir` is empty)."""
        if output_dir:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / HISTORY_FILE).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, output_dir: str | Path) -> FederationHistory:
        """The history a coordinator in another process wrote to `output_dir`."""
        return cls.from_json(json.loads((Path(output_dir) / HISTORY_FILE).read_text()))
