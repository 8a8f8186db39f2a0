"""The coordinator's checkpoint: where a run stands after each round, so a restarted coordinator resumes.

Written atomically to `<output-dir>/coordinator/` after every round: the run key, the last finished
round, the current global version (its weights are in the registry), the history so far and the server
optimizer's state. A restarted coordinator (`resume=true`, same `run-name`) reloads it and continues with
the next round; a round that was in flight is sent again, and silos answer it with the reply they already
sent (their own state, `silo_state`), so no round is lost, repeated or paid for twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from fedrec.errors import ConfigError
from fedrec.io import atomic_save_arrays, atomic_write_text
from fedrec.versions import ModelVersion

CHECKPOINT_DIR = "coordinator"
STATE_FILE = "checkpoint.json"
STRATEGY_FILE = "strategy_state.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A finished round's state (what `resume` needs beyond the registry)."""

    run_key: str
    round: int
    version: ModelVersion
    last_aggregated: int
    history: dict[str, Any]
    strategy_state: dict[str, np.ndarray]


def save_checkpoint(out_dir: Path, ckpt: Checkpoint) -> None:
    """Write the strategy state, then the checkpoint naming it (each replaced atomically)."""
    root = Path(out_dir) / CHECKPOINT_DIR
    atomic_save_arrays(root / STRATEGY_FILE, ckpt.strategy_state or {"_": np.zeros(0)})
    body = {"run_key": ckpt.run_key, "round": ckpt.round, "version": ckpt.version.to_dict(),
            "last_aggregated": ckpt.last_aggregated, "history": ckpt.history}
    atomic_write_text(root / STATE_FILE, json.dumps(body, default=str))


def load_checkpoint(out_dir: Path, run_key: str) -> Checkpoint | None:
    """The run's last checkpoint (None when there is none); another run's checkpoint is an error."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not (root / STATE_FILE).exists():
        return None
    try:
        body = json.loads((root / STATE_FILE).read_text())
        state = {k: v for k, v in load_file(str(root / STRATEGY_FILE)).items() if k != "_"}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"coordinator checkpoint in {root} is unreadable ({exc}); move it away to start over") \
            from exc
    if body["run_key"] != run_key:
        raise ConfigError(f"the checkpoint in {root} belongs to run {body['run_key']!r}, not {run_key!r}: resume "
                          "with that run-name, or use another output-dir")
    return Checkpoint(run_key=run_key, round=int(body["round"]), version=ModelVersion.from_dict(body["version"]),
                      last_aggregated=int(body["last_aggregated"]), history=body["history"], strategy_state=state)
