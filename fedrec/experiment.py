"""One experiment end to end: data → per-silo split → federated → bounds and baselines → results.json.

Plain function of a typed config and an output directory: the Hydra CLI, notebooks and tests all call
`run_experiment`. The federation returns what the coordinator saw (`FederationHistory`); what only the
silos know (their metrics under DP, what each region serves and why) is read from the silos' own logs,
which the researcher may do because in a simulation they own every silo (`SiloView`). A coordinator never can.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from fedrec.errors import FedrecError
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.flower.simulation import run_simulation
from fedrec.regime_report import regimes_block
from fedrec.settings import RunSettings, line_key, silo_state_root
from fedrec.silo.adaptation import served_kind
from fedrec.silo.adoption import ServingRecord
from fedrec.silo.evaluation_log import LoggedEvaluation, read_evaluations
from fedrec.silo.regime import Regimes
from fedrec.silo.state_dir import StateDir
from fedrec.world import PreparedWorld, prepare_world

Engine = Callable[..., FederationHistory]
"""Runs the federation for `RunSettings` (keywords `on_round`, `cpus_per_client`, `ray_address`, `regimes`) and
returns its history."""
Block = dict[str, Any]
"""`{"overall": {metric: value}, "per_region": {region: {metric: value}}}`, as in results.json."""


def _block(pooled: tuple[dict[str, dict[str, float]], dict[str, float]]) -> Block:
    per_region, overall = pooled
    return {"overall": overall, "per_region": per_region}


@dataclass(frozen=True)
class SiloView:
    """What the silos' own records say about one run: their evaluation logs, decisions and policies."""

    logs: dict[str, dict[int, LoggedEvaluation]]
    decisions: dict[str, list[dict[str, Any]]]
    policies: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, settings: RunSettings, regions: tuple[str, ...], run_id: str) -> SiloView:
        """Every region's log for `run_id` (only the researcher who owns every silo of a simulation can)."""
        root = silo_state_root(settings)
        if root is None:
            return cls({r: {} for r in regions}, {r: [] for r in regions},
                       {r: asdict(settings.policy_for(r)) for r in regions})
        logs = {r: {e.round: e for e in read_evaluations(root / r, run_id)} for r in regions}
        decisions = {r: [asdict(d) for d in ServingRecord(StateDir(root / r).serving).decisions() if d.run_id == run_id]
                     for r in regions}
        policies = {}
        for r in regions:
            reviewed = next((e for e in logs[r].values() if e.policy is not None), None)  # each line holds it
            policies[r] = reviewed.policy if reviewed and reviewed.policy else asdict(settings.policy_for(r))
        return cls(logs, decisions, policies)

    def evaluations(self, rnd: int) -> dict[str, SiloEvaluation]:
        """Each region's evaluation of the global model at round `rnd` (the regions that logged one)."""
        return {r: e.evaluation for r, log in self.logs.items() if (e := log.get(rnd)) is not None}

    def valid(self, rnd: int) -> dict[str, SiloEvaluation]:
        """Each region's evaluation of the global model at round `rnd` on its validation users (where logged)."""
        return {r: e.valid for r, log in self.logs.items() if (e := log.get(rnd)) is not None and e.valid is not None}

    def served(self, rnd: int) -> dict[str, tuple[SiloEvaluation, dict[str, Any]]]:
        """Each reviewing region's served model at round `rnd`: its metric sums and the decision."""
        return {r: (e.served, e.decision) for r, log in self.logs.items()
                if (e := log.get(rnd)) is not None and e.decision is not None and e.served is not None}

    def own_lines(self, rnd: int) -> dict[str, SiloEvaluation]:
        """Each `adopt: adapt` region's own local-only line at round `rnd`: its test metric sums."""
        return {r: e.own_line for r, log in self.logs.items()
                if (e := log.get(rnd)) is not None and e.own_line is not None}

    def adoption(self) -> dict[str, Any]:
        """Per region: its policy, the version it serves at the end, and every decision of the run."""
        return {r: {"policy": self.policies[r], "serving": d[-1]["served_after"] if d else None,
                    "serving_kind": served_kind(d[-1]["served_after"] if d else None), "decisions": d}
                for r, d in self.decisions.items()}


def federated_rounds(history: FederationHistory, view: SiloView, *, private: bool) -> list[dict[str, Any]]:
    """The evaluated rounds as results.json reports them: the coordinator's entry, plus what the silos kept.

    Under DP the metrics come from the silos' logs (the coordinator never saw them); every round says which
    model each reviewing region serves after it (`served`: its test metrics, version label and kind: global,
    adapted, own line or fork) and, for `adopt: adapt` regions, their own local-only line (`own_line`), served
    or not.
    """
    rounds = []
    for entry in history.rounds:
        rnd = entry["round"]
        out = dict(entry)
        if private or history.coalitions:  # with lines: the line each region serves, as its silo chose it
            per_region, overall = pool(view.evaluations(rnd))
            out.update(per_region=per_region, overall=overall, metrics_source="silo logs")
        out["served"] = {r: {**ev.means(), "version": d["served_after"], "kind": served_kind(d["served_after"]),
                             "adopted": d["adopted"], "reason": d["reason"]} for r, (ev, d) in view.served(rnd).items()}
        if own := view.own_lines(rnd):
            out["own_line"] = {r: ev.means() for r, ev in own.items()}
        rounds.append(out)
    return rounds


def coalitions_block(history: FederationHistory, settings: RunSettings, *, private: bool) -> dict[str, Any]:
    """Per coalition line: its regions, its head version and its last evaluation per region (every member's).

    `federated` in results.json shows each region the line it serves (read from its silo's log); this shows every
    line. Under DP the metrics come from the silos' logs: another line's under the line's key (`settings.line_key`),
    the served line's under the run's.
    """
    out: dict[str, Any] = {}
    root = silo_state_root(settings)
    served = served_lines(history, root)
    for name, line in history.coalitions.items():
        h = FederationHistory.from_json(line["history"])
        last = h.rounds[-1] if h.rounds else None
        block: dict[str, Any] = {"regions": line["regions"], "head": h.versions[-1]["id"] if h.versions else None,
                                 "rounds_trained": sum(1 for e in h.round_log if e.get("model_version")),
                                 "stopped_early": h.stopped_early, "round": last["round"] if last else None}
        per_region, overall = (last["per_region"], last["overall"]) if last else ({}, {})
        if private and last is not None and root is not None:
            evals = {}
            for r in line["regions"]:  # another line's log is under its key, the served line's under the run's
                logged = {e.round: e for e in read_evaluations(root / r, line_key(history.run_id, name))}
                if not logged and served.get(r) == name:
                    logged = {e.round: e for e in read_evaluations(root / r, history.run_id)}
                if (e := logged.get(last["round"])) is not None:
                    evals[r] = e.evaluation
            per_region, overall = pool(evals)
        out[name] = {**block, "overall": overall, "per_region": per_region,
                     "served_by": sorted(r for r, n in served.items() if n == name)}
    return out


def served_lines(history: FederationHistory, root: Path | None) -> dict[str, str]:
    """Region → the coalition line it serves, as its silo's logs show (simulation; {} without state dirs).

    A silo logs the line it serves under the run's key and its other lines under theirs (`settings.line_key`): the
    served line is the one of its lines without a log of its own. (A silo whose partners forbid every line serves
    none.)
    """
    if root is None:
        return {}
    out = {}
    for name, line in history.coalitions.items():
        for r in line["regions"]:
            if not read_evaluations(root / r, line_key(history.run_id, name)) and read_evaluations(root / r,
                                                                                                    history.run_id):
                out[r] = name
    return out


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
        out["centralized"] = _block(pool(train_centralized(world.silos, cfg.model, cfg.train,
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
        out["local_only"] = _block(pool({r: c[cfg.total_epochs] for r, c in curves.items()}))
        for entry in rounds:
            entry["local_only"] = pool({r: c[entry["round"] * le] for r, c in curves.items()})[0]
        timings["local_only_s"] = time.perf_counter() - t
    out["popularity"] = _block(pool({r: popularity(s) for r, s in world.silos.items()}))
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
        {"centralized": _block(pool(r.centralized)), "local_only": _block(pool(r.local_only))}
        for name, r in ran.items()}}
    facts: dict[str, Any] = {name: describe(r) for name, r in ran.items()}
    for key, pick in (("local_baseline", best_local(ran)), ("pooled_baseline", best_pooled(ran))):
        if pick is not None:
            final[key] = _block(pool(pick.test))
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


def checked_rounds(history: FederationHistory, view: SiloView, *, private: bool) -> list[dict[str, Any]]:
    """`federated_rounds`, or a clear error when the federation trained nothing or its last model went unevaluated."""
    rounds = federated_rounds(history, view, private=private)
    if not rounds:
        raise FedrecError(f"the federation trained no round ({history.stopped_early or 'no silo replied'}); "
                          "a silo whose privacy budget is spent needs a larger privacy.epsilon or a fresh "
                          "privacy.state_dir (budgets are meant to persist: never reset a real silo's ledger)")
    if not rounds[-1]["per_region"]:
        failed = [f for r in history.rounds for f in r.get("failures", [])]
        raise FedrecError(f"no silo could evaluate the federation's last model (round {rounds[-1]['round']}): "
                          f"{(failed or [history.stopped_early or 'no reply'])[-1][:500]}")
    return rounds


def federated_finals(rounds: list[dict[str, Any]], view: SiloView) -> dict[str, Block]:
    """`final`'s federation blocks at the last evaluated round: the global model, what regions serve, own lines."""
    last = rounds[-1]["round"]
    final: dict[str, Block] = {"federated": {"overall": rounds[-1]["overall"], "per_region": rounds[-1]["per_region"]}}
    if served_last := {r: ev for r, (ev, _) in view.served(last).items()}:
        final["served"] = _block(pool(served_last))
    if own_last := view.own_lines(last):
        final["own_line"] = _block(pool(own_last))
    return final


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
        results["validation"] = {"federated": _block(pool(valid)), "round": rounds[-1]["round"]}
    if history.coalitions:
        results["coalitions"] = coalitions_block(history, settings, private=private)
        results["artifacts"]["global_model"] = {name: f"coalitions/{name}/global_model.safetensors"
                                                for name in history.coalitions}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
