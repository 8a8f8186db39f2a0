"""Each jurisdiction's regime and what it spent: the `regimes` block of results.json and `fedrec regimes`.

The policy is the silo's effective one for the run (`SiloIdentity.describe`: its regime entry read as a node
config, within the run's proposal); the spending comes from the silo's own ledgers (`fedrec.silo.spend`), which
only the researcher who owns every silo of a simulation (or the jurisdiction itself) can read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from fedrec.settings import RunSettings, read_manifest
from fedrec.silo.policy import SiloIdentity
from fedrec.silo.regime import Regimes
from fedrec.silo.spend import SiloSpend, read_spend


def regimes_block(settings: RunSettings, regimes: Regimes, run_id: str) -> dict[str, dict[str, Any]]:
    """Per region: `policy`, `state_dir`, `spent` (every run its ledgers hold) and `this_run` (`run_id`'s spend)."""
    out: dict[str, dict[str, Any]] = {}
    for pid, region in enumerate(read_manifest(settings.data_dir)["regions"]):
        ident = SiloIdentity.from_node_config(regimes.node_config({"partition-id": pid}, settings), settings)
        spend = read_spend(ident.state_dir) if ident.state_dir is not None else SiloSpend()
        out[str(region)] = {"policy": ident.describe(settings),
                            "state_dir": str(ident.state_dir) if ident.state_dir is not None else None,
                            "spent": spend.to_dict(ident.ledger_retention_days),
                            "this_run": spend.runs.get(run_id)}
    return out


def _results(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}): give the output directory of a finished run") from exc


def run_regimes(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The `regimes` block a finished run wrote to its results.json."""
    results = _results(run_dir)
    if "regimes" not in results:
        raise ConfigError(f"{Path(run_dir) / 'results.json'} has no regimes block (a run from before `fedrec "
                          "regimes`): run it again")
    return dict(results["regimes"])


def run_registry(run_dir: Path) -> Path:
    """Where a finished run registered its versions (`artifacts.registry`, relative to the run or absolute)."""
    where = Path(str(_results(run_dir).get("artifacts", {}).get("registry", "registry/")))
    return where if where.is_absolute() else Path(run_dir) / where
