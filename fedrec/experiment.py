"""One experiment end to end: data → per-silo split → federated (Flower simulation) → bounds → results.json.

Plain function of a typed config and an output directory: the Hydra CLI, notebooks and tests all call
`run_experiment`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.bounds import local_only_curve, popularity, train_centralized
from fedrec.config import ExperimentConfig
from fedrec.coordinator.round_loop import RoundCallback
from fedrec.data.registry import load_dataset
from fedrec.errors import FedrecError
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.flower.simulation import run_simulation
from fedrec.settings import RunSettings, silo_state_root
from fedrec.silo.adoption import ServingRecord
from fedrec.silo.private_round import read_evaluations
from fedrec.silo.state_dir import StateDir
from fedrec.world import prepare_world


def _block(per_region: dict[str, dict[str, float]], overall: dict[str, float]) -> dict[str, Any]:
    return {"overall": overall, "per_region": per_region}


def gather_silo_evaluations(history: dict[str, Any], settings: RunSettings, regions: tuple[str, ...]
                            ) -> list[dict[str, Any]]:
    """Fill the rounds' metrics from the silos' own evaluation logs (private runs keep them in the silo).

    Only the researcher who owns every silo of a simulation can do this; a coordinator cannot.
    """
    root = silo_state_root(settings)
    assert root is not None  # run_experiment always sets output_dir
    logs = {r: {e["round"]: e for e in read_evaluations(root / r, history["run_id"])} for r in regions}
    rounds = []
    for entry in history["rounds"]:
        evals = {r: _evaluation(e) for r in regions if (e := logs[r].get(entry["round"])) is not None}
        per_region, overall = pool(evals)
        rounds.append({**entry, "per_region": per_region, "overall": overall, "metrics_source": "silo logs"})
    return rounds


def _evaluation(e: dict[str, Any]) -> SiloEvaluation:
    return SiloEvaluation(sums=e["sums"], n_users=e["n_users"], sq_error=e["sq_error"], n_ratings=e["n_ratings"])


def gather_serving(history: dict[str, Any], settings: RunSettings, regions: tuple[str, ...]
                   ) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, SiloEvaluation]]:
    """Each region's served model per evaluated round, and its policy and decisions, from the silos' own records.

    Returns (rounds with a `served` block, `adoption` per region, the served models' metric sums at the last
    evaluated round, for pooling). Like `gather_silo_evaluations`, only the researcher owning every silo can
    read these; a coordinator never receives them.
    """
    root = silo_state_root(settings)
    if root is None:
        return history["rounds"], {}, {}
    logs = {r: {e["round"]: e for e in read_evaluations(root / r, history["run_id"]) if "decision" in e}
            for r in regions}
    rounds = []
    served_sums: dict[str, SiloEvaluation] = {}
    for entry in history["rounds"]:
        served: dict[str, Any] = {}
        served_sums = {}
        for r in regions:
            e = logs[r].get(entry["round"])
            if e is not None and e["served"] is not None:
                served_sums[r] = _evaluation(e["served"])
                served[r] = {**served_sums[r].means(), "version": e["decision"]["served_after"],
                             "adopted": e["decision"]["adopted"], "reason": e["decision"]["reason"]}
        rounds.append({**entry, "served": served})
    adoption = {}
    for r in regions:
        decisions = [asdict(d) for d in ServingRecord(StateDir(root / r).serving).decisions()
                     if d.run_id == history["run_id"]]
        logged = next(iter(logs[r].values()), None)  # every line holds the region's policy
        adoption[r] = {"policy": logged["policy"] if logged else asdict(settings.policy_for(r)),
                       "serving": decisions[-1]["served_after"] if decisions else None, "decisions": decisions}
    return rounds, adoption, served_sums


def final_privacy(privacy_rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each region's last reported DP state: ε spent (at its δ), σ, q, steps, C, budget."""
    final: dict[str, dict[str, float]] = {}
    for entry in privacy_rounds:
        final.update(entry["per_region"])
    return dict(sorted(final.items()))


Engine = Callable[..., Path]
"""Runs the federation for `RunSettings` (keywords `on_round`, `cpus_per_client`) and returns its output dir."""


def run_experiment(cfg: ExperimentConfig, out_dir: Path, *, on_round: RoundCallback | None = None,
                   resolved_config: dict[str, Any] | None = None, log: Any = print,
                   engine: Engine = run_simulation) -> dict[str, Any]:
    """Run federated training and the bounds on the same split; write and return `results.json`'s content.

    `engine` runs the federation: Flower's simulation engine (default), or any function with its signature
    (the tests' in-process grid).
    """
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data = load_dataset(cfg.dataset.name, cfg.dataset.params)
    if data.report is not None:
        for line in data.report.lines():
            log(line)
    cfg.check_regions(data.regions)
    world = prepare_world(data, cfg.split, out_dir / "world")
    for r, s in world.silos.items():
        if s.n_train_only_users or s.n_repeats_removed:
            log(f"  {r}: {s.n_train_only_users} users with < {cfg.split.min_user_interactions} interactions are "
                f"train-only (not evaluated); {s.n_repeats_removed} repeated interactions left out of valid/test")
    timings["prepare_s"] = time.perf_counter() - t

    t = time.perf_counter()
    settings = RunSettings.from_experiment(cfg, data_dir=str(world.data_dir), output_dir=str(out_dir),
                                          n_regions=len(world.regions))
    engine(settings, on_round=on_round, cpus_per_client=cfg.federation.cpus_per_client)
    history = json.loads((out_dir / "federated_history.json").read_text())
    timings["federated_s"] = time.perf_counter() - t
    privacy: dict[str, Any] = {}
    if settings.privacy_settings().enabled:
        history["rounds"] = gather_silo_evaluations(history, settings, world.regions)
        privacy = final_privacy(history["privacy_rounds"])
    history["rounds"], adoption, served_last = gather_serving(history, settings, world.regions)
    if not history["rounds"]:
        raise FedrecError(f"the federation trained no round ({history.get('stopped_early') or 'no silo replied'}); "
                          "a silo whose privacy budget is spent needs a larger privacy.epsilon or a fresh "
                          "privacy.state_dir (budgets are meant to persist: never reset a real silo's ledger)")
    last = history["rounds"][-1]
    final: dict[str, Any] = {"federated": _block(last["per_region"], last["overall"])}
    if served_last:
        final["served"] = _block(*pool(served_last))

    if "centralized" in cfg.bounds:
        t = time.perf_counter()
        final["centralized"] = _block(*pool(train_centralized(
            world.silos, cfg.model, cfg.train, epochs=cfg.total_epochs, seed=cfg.seed)))
        timings["centralized_s"] = time.perf_counter() - t
    if "local_only" in cfg.bounds:
        t = time.perf_counter()
        le = cfg.federation.local_epochs
        checkpoints = sorted({e["round"] * le for e in history["rounds"]} | {cfg.total_epochs})
        curves = {r: local_only_curve(s, cfg.model, cfg.train, epochs=checkpoints, seed=cfg.seed)
                  for r, s in world.silos.items()}
        final["local_only"] = _block(*pool({r: c[cfg.total_epochs] for r, c in curves.items()}))
        for entry in history["rounds"]:
            entry["local_only"] = pool({r: c[entry["round"] * le] for r, c in curves.items()})[0]
        timings["local_only_s"] = time.perf_counter() - t
    final["popularity"] = _block(*pool({r: popularity(s) for r, s in world.silos.items()}))

    results = {
        "config": resolved_config if resolved_config is not None else asdict(cfg),
        "wall_time_s": time.perf_counter() - start,
        "timings": timings,
        "dataset": {
            "name": cfg.dataset.name,
            "n_items": world.n_items,
            "catalog": data.catalog.source,
            "load_report": data.report.lines() if data.report else [],
            "regions": {r: {"users": s.n_users, "test_users": int(np.unique(s.test[0]).size),
                            "train_interactions": len(s.train[0]), "train_only_users": s.n_train_only_users}
                        for r, s in world.silos.items()},
        },
        "rounds": history["rounds"],
        "final": final,
        "privacy": privacy,
        "privacy_rounds": history.get("privacy_rounds", []),
        "model_versions": history.get("model_versions", []),
        "round_log": history.get("round_log", []),
        "adoption": adoption,
        "stopped_early": history.get("stopped_early", ""),
        "artifacts": {"global_model": "global_model.safetensors", "world": "world/",
                      "registry": settings.registry_dir or "registry/"},
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
