"""A finished simulation's exposure per region, read from its output directory (`fedrec.exposure`).

Each region's number is what its silo computes at the run's last evaluation: the final global model
(`global_model.safetensors`) with the silo's own users' parameters (`silo-state/<region>/runs/<run key>/`),
the users re-fitted with the silo's seed for that round, scored on the silo's test users (`world/`). Only the
researcher who owns every silo of a simulation can read this; in a real federation each jurisdiction can
compute its own row and nobody else's. The same fitted model is also scored with `evaluate_model`, so a
reader can check it against the silo's own evaluation in `results.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.numpy import load_file

from fedrec.adoption_policy import AdoptionPolicy
from fedrec.config import experiment_from_dict
from fedrec.data.split import SiloData
from fedrec.errors import FedrecError
from fedrec.evaluation import evaluate_model
from fedrec.exposure import Exposure, item_exposure
from fedrec.model_io import load_global_model
from fedrec.settings import RunSettings, read_manifest, silo_state_root
from fedrec.silo.round import silo_seed
from fedrec.silo.serving import RegionServing
from fedrec.silo.state import LOCAL_STATE_KEY
from fedrec.silo.state_dir import StateDir
from fedrec.training import fitted_model


@dataclass(frozen=True)
class RegionExposure:
    """One region at the run's end: the item's exposure among its test users, and the model's NDCG@20 there."""

    exposure: Exposure
    ndcg: float


def run_settings(out_dir: Path) -> RunSettings:
    """The run settings a finished `run_experiment` used (its `results.json` config, its world and output dir)."""
    results = json.loads((out_dir / "results.json").read_text())
    raw: dict[str, Any] = {k: v for k, v in results["config"].items() if k not in ("progress", "experiment", "hydra")}
    cfg = experiment_from_dict(raw)
    data_dir = out_dir / "world"
    return RunSettings.from_experiment(cfg, data_dir=str(data_dir), output_dir=str(out_dir),
                                       n_regions=len(read_manifest(str(data_dir))["regions"]))


def exposure_from_run(out_dir: Path, item: int, *, regions: list[str] | None = None, k: int = 20,
                      served: bool = False) -> dict[str, RegionExposure]:
    """Per region (all of the world's by default): `item`'s top-`k` exposure and NDCG@20 of the final model.

    `served=True`: of the model each region serves at the end instead (its adoption policy's choice, with the
    items its guard withholds kept out of every ranking, `fedrec.silo.guard`); a region that serves nothing
    stored is scored on the final global model.
    """
    out_dir = Path(out_dir)
    settings = run_settings(out_dir)
    history = json.loads((out_dir / "federated_history.json").read_text())
    run_key, last_round = str(history["run_id"]), int(history["rounds"][-1]["round"])
    global_arrays, spec, _ = load_global_model(out_dir / "global_model.safetensors")
    root = silo_state_root(settings)
    if root is None:
        raise FedrecError(f"{out_dir}: the run kept no silo state, so its users' parameters are gone")
    out = {}
    for region in regions or list(read_manifest(settings.data_dir)["regions"]):
        silo = SiloData.load(Path(settings.data_dir) / f"silo_{region}.npz")
        state = StateDir(root / region).run(run_key) / f"{LOCAL_STATE_KEY}.safetensors"
        if not state.exists():
            raise FedrecError(f"{state} is missing: region {region} kept no users' parameters for run {run_key}")
        local = {name: torch.as_tensor(v) for name, v in load_file(str(state)).items()}
        arrays, withheld = global_arrays, None
        if served:
            serving = RegionServing(root / region, AdoptionPolicy())
            stored = serving.served_model()
            if stored is not None:
                arrays, local, withheld = stored[1], stored[2] if stored[2] is not None else local, serving.withheld()
        model = fitted_model(spec, silo, arrays, local, settings.train_config(),
                             seed=silo_seed(settings.seed, region, last_round))
        out[region] = RegionExposure(exposure=item_exposure(model, silo, item, k=k, withheld=withheld),
                                     ndcg=evaluate_model(model, silo, withheld=withheld).means()["ndcg@20"])
    return out
