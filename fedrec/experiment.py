"""One experiment end to end: data → per-silo split → federated → bounds and baselines → results.json.

Plain function of a typed config and an output directory: the Hydra CLI, notebooks and tests all call
`run_experiment`. The federation returns what the coordinator saw (`FederationHistory`); what only the
silos know (their metrics under DP, what each region serves and why) is read from the silos' own logs,
which the researcher may do because in a simulation they own every silo (`fedrec.run_records`). A coordinator
never can.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.baselines import run_baselines
from fedrec.baselines.summary import best_local, best_pooled, describe
from fedrec.bounds import local_only_curve, popularity, train_centralized
from fedrec.config import ExperimentConfig
from fedrec.coordinator.history import FederationHistory
from fedrec.coordinator.round_loop import RoundCallback
from fedrec.data.registry import load_dataset
from fedrec.data.schema import Interactions
from fedrec.evaluation import pool
from fedrec.flower.simulation import run_simulation
from fedrec.regime_report import regimes_block
from fedrec.run_records import Block, SiloView, block_of, checked_rounds, coalitions_block, federated_finals
from fedrec.settings import RunSettings
from fedrec.silo.regime import Regimes
from fedrec.world import PreparedWorld, prepare_world

Engine = Callable[..., FederationHistory]
"""Runs the federation for `RunSettings` (keywords `on_round`, `cpus_per_client`, `ray_address`, `regimes`) and
returns its history."""


def final_privacy(privacy_rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each region's last reported DP state: ε spent (at its δ), σ, q, steps, C, budget."""
    final: dict[str, dict[str, float]] = {}
    for entry in privacy_rounds:
        final.update(entry["per_region"])
    return dict(sorted(final.items()))


DataTransform = Callable[[Interactions], Interactions]
"""A change to the loaded data before it is split (the privacy audit plants its canaries with one)."""


def prepare(cfg: ExperimentConfig, out_dir: Path, log: Callable[[str], Any], transform: DataTransform | None = None
            ) -> tuple[Interactions, PreparedWorld]:
    """Load the dataset (then `transform` it), check its regions against the config, split and write the world."""
    data = load_dataset(cfg.dataset.name, cfg.dataset.params)
    if transform is not None:
        data = transform(data)
    if data.report is not None:
        for line in data.report.lines():
            log(line)
    cfg.check_regions(data.regions)
    cfg.check_catalog(data.catalog.n_items)
    world = prepare_world(data, cfg.split, out_dir / "world")
    for r, s in world.silos.items():
        if s.n_train_only_users or s.n_repeats_removed:
            log(f"  {r}: {s.n_train_only_users} users with < {cfg.split.min_user_interactions} interactions are "
                f"train-only (not evaluated); {s.n_repeats_removed} repeated interactions left out of valid/test")
    return data, world


def reference_points(cfg: ExperimentConfig, world: PreparedWorld, rounds: list[dict[str, Any]],
                     timings: dict[str, float]) -> dict[str, Block]:
    """The configured bounds and popularity on the same split; adds `local_only` to each round in place."""
    out: dict[str, Block] = {}
    if "centralized" in cfg.bounds:
        t = time.perf_counter()
        out["centralized"] = block_of(pool(train_centralized(world.silos, cfg.model, cfg.train,
                                                           epochs=cfg.total_epochs, seed=cfg.seed,
                                                           item_features=world.item_features)))
        timings["centralized_s"] = time.perf_counter() - t
    if "local_only" in cfg.bounds:
        t = time.perf_counter()
        le = cfg.federation.local_epochs
        checkpoints = sorted({e["round"] * le for e in rounds} | {cfg.total_epochs})
        curves = {r: local_only_curve(s, cfg.model, cfg.train, epochs=checkpoints, seed=cfg.seed,
                                      item_features=world.item_features)
                  for r, s in world.silos.items()}
        out["local_only"] = block_of(pool({r: c[cfg.total_epochs] for r, c in curves.items()}))
        for entry in rounds:
            entry["local_only"] = pool({r: c[entry["round"] * le] for r, c in curves.items()})[0]
        timings["local_only_s"] = time.perf_counter() - t
    out["popularity"] = block_of(pool({r: popularity(s) for r, s in world.silos.items()}))
    return out


def baseline_points(cfg: ExperimentConfig, world: PreparedWorld, timings: dict[str, float]
                    ) -> tuple[dict[str, Block], dict[str, Any]]:
    """The strong simple baselines, pooled and local-only: their blocks for `final`, and what was chosen.

    `final` gets `baselines.NAME.{centralized,local_only}` (or `{skipped: why}`), `local_baseline` (per region
    the baseline that region's own validation picks: what it could deploy alone) and `pooled_baseline` (the
    one pooled validation picks). Nothing is chosen on test.
    """
    if not cfg.baselines:
        return {}, {}
    t = time.perf_counter()
    ran = run_baselines(world.silos, cfg.baselines)
    final: dict[str, Any] = {"baselines": {
        name: {"skipped": r.skipped} if r.skipped is not None else
        {"centralized": block_of(pool(r.centralized)), "local_only": block_of(pool(r.local_only))}
        for name, r in ran.items()}}
    facts: dict[str, Any] = {name: describe(r) for name, r in ran.items()}
    for key, pick in (("local_baseline", best_local(ran)), ("pooled_baseline", best_pooled(ran))):
        if pick is not None:
            final[key] = block_of(pool(pick.test))
            facts[key] = pick.names
    timings["baselines_s"] = time.perf_counter() - t
    return final, facts


def dataset_facts(cfg: ExperimentConfig, data: Interactions, world: PreparedWorld) -> dict[str, Any]:
    """The `dataset` block of results.json: catalog, load report and each region's size."""
    return {
        "name": cfg.dataset.name,
        "n_items": world.n_items,
        "catalog": data.catalog.source,
        "item_features": list(data.catalog.feature_names or ()),  # public; world/catalog_features.npy
        "load_report": data.report.lines() if data.report else [],
        "regions": {r: {"users": s.n_users, "test_users": int(np.unique(s.test[0]).size),
                        "train_interactions": len(s.train[0]), "train_only_users": s.n_train_only_users}
                    for r, s in world.silos.items()},
    }


def run_experiment(cfg: ExperimentConfig, out_dir: Path, *, on_round: RoundCallback | None = None,
                   resolved_config: dict[str, Any] | None = None, log: Any = print,
                   engine: Engine = run_simulation, transform: DataTransform | None = None) -> dict[str, Any]:
    """Run federated training and the bounds on the same split; write and return `results.json`'s content.

    `engine` runs the federation: Flower's simulation engine (default), or any function with its signature
    (the tests' in-process grid). `transform` changes the loaded data before the split (`fedrec.privacy_audit`).
    """
    start = time.perf_counter()
    regimes = Regimes.parse(cfg.regime)  # each jurisdiction's own policy: checked before any data is loaded
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    data, world = prepare(cfg, out_dir, log, transform)
    regimes.check_regions(world.regions)
    timings = {"prepare_s": time.perf_counter() - t}

    t = time.perf_counter()
    settings = RunSettings.from_experiment(cfg, data_dir=str(world.data_dir), output_dir=str(out_dir),
                                          n_regions=len(world.regions) - len(cfg.federation.exclude_regions))
    history = engine(settings, on_round=on_round, cpus_per_client=cfg.federation.cpus_per_client,
                     ray_address=cfg.federation.ray_address, regimes=regimes)
    timings["federated_s"] = time.perf_counter() - t
    private = settings.privacy_settings().enabled
    view = SiloView.read(settings, world.regions, history.run_id)
    rounds = checked_rounds(history, view, private=private)
    final = federated_finals(rounds, view)
    final.update(reference_points(cfg, world, rounds, timings))
    baseline_final, baseline_facts = baseline_points(cfg, world, timings)
    final.update(baseline_final)

    results: dict[str, Any] = {
        "config": resolved_config if resolved_config is not None else asdict(cfg),
        "wall_time_s": time.perf_counter() - start,
        "timings": timings,
        "dataset": dataset_facts(cfg, data, world),
        "rounds": rounds,
        "final": final,
        "privacy": final_privacy(history.privacy_rounds) if private else {},
        "privacy_rounds": history.privacy_rounds,
        "model_versions": history.versions,
        "round_log": history.round_log,
        "adoption": view.adoption(),
        "regimes": regimes_block(settings, regimes, history.run_id),
        "baselines": baseline_facts,
        "stopped_early": history.stopped_early,
        "artifacts": {"global_model": "global_model.safetensors", "world": "world/",
                      "registry": settings.registry_dir or "registry/"},
    }
    if valid := view.valid(rounds[-1]["round"]):  # what a tuning study selects on (fedrec.commands.run.objective)
        results["validation"] = {"federated": block_of(pool(valid)), "round": rounds[-1]["round"]}
    if history.coalitions:
        results["coalitions"] = coalitions_block(history, settings, private=private)
        results["artifacts"]["global_model"] = {name: f"coalitions/{name}/global_model.safetensors"
                                                for name in history.coalitions}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
