"""The coordinator's round loop over a Flower `Grid`: train, aggregate, evaluate per region, record.

It sees only what silos reply (global parameters, public metadata, and metric sums when the run is not
private) and never a user id.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid

from fedrec.coordinator.aggregate_step import Contribution, average_step, solve_step
from fedrec.coordinator.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedrec.coordinator.contributions import ContributionLedger, contributions_problem
from fedrec.coordinator.evaluate_step import evaluate_global
from fedrec.coordinator.history import FederationHistory
from fedrec.coordinator.line_start import load_start
from fedrec.coordinator.preflight import preflight_or_stop
from fedrec.coordinator.round_record import RoundRecord, record_round
from fedrec.coordinator.screen import ScreenRules, StatisticsScreen
from fedrec.coordinator.strategies import aggregation_rule, build_strategy, restore_strategy_state, strategy_state
from fedrec.coordinator.train_step import collect_train
from fedrec.errors import ConfigError
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.messages import COALITION_KEY
from fedrec.model_io import save_global_model
from fedrec.run_lines import coalition_members, divestment_record
from fedrec.settings import RunSettings, read_manifest, save_run_config
from fedrec.statistics import Arrays, is_statistics_model, statistics_family
from fedrec.statistics.dp_ials import DpIalsStatistics, declared_noise_problem
from fedrec.training import initial_global_arrays
from fedrec.versions import ModelRegistry, ModelVersion, describe_version
from fedrec.world import load_catalog_features

RoundCallback = Callable[[dict[str, Any]], None]


class CoordinatorRun:
    """The coordinator's state through one run: strategy, current global arrays and version, history, registry."""

    def __init__(self, grid: Grid, s: RunSettings, *, timeout: float | None, run_id: str,
                 context: Context | None, history: FederationHistory | None, line: str = "") -> None:
        self.grid, self.s, self.run_id, self.context, self.line = grid, s, run_id, context, line
        self.evaluations: dict[int, dict[str, SiloEvaluation]] = {}  # round -> each region's metric sums
        self.manifest = read_manifest(s.data_dir)
        self.n_items = int(self.manifest["n_items"])
        features = load_catalog_features(s.data_dir)  # public: the catalog's item features, if it has any
        self.init = initial_global_arrays(s.model_spec, n_items=self.n_items, seed=s.seed,
                                          item_features=None if features is None else features.features)
        self.arrays = ArrayRecord({k: Array(v) for k, v in self.init.items()})
        self.strategy = build_strategy(s)
        self.timeout = s.round_timeout if timeout is None else timeout
        self.family = (statistics_family(s.model_spec, private=s.privacy_settings().enabled)
                       if is_statistics_model(s.model_spec) else None)
        private = s.privacy_settings()
        report = (functools.partial(declared_noise_problem, max_per_user=private.cap("dp_statistics"))
                  if isinstance(self.family, DpIalsStatistics) else None)
        stats = (StatisticsScreen(self.family.statistic_shapes(self.n_items, s.model_spec),
                                  functools.partial(self.family.check, spec=s.model_spec), report)
                 if self.family else None)
        self.rules = ScreenRules(norm_factor=s.update_norm_factor, max_norm=s.max_update_norm,
                                 uniform_weight=s.privacy_settings().enabled or s.weighting == "uniform",
                                 statistics=stats)
        self.history = history if history is not None else FederationHistory()
        self.history.run_id = run_id
        self.last_aggregated = 0
        root = s.registry_root()
        self.registry = ModelRegistry(root) if root else None
        self.config_hash = hashlib.sha256(json.dumps(s.model_config(), sort_keys=True, default=str).encode()
                                          ).hexdigest()
        self.rule = aggregation_rule(s, statistics=self.family is not None)
        self.round_robust: dict[str, Any] = {}
        self.divestment = divestment_record(s)
        self.node_regions: dict[int, str] = {}  # node id -> region, as preflight learnt it
        self.ancestry: list[ModelVersion] = []  # the current version's ancestors, parent first (to the root)
        if s.start_version:  # continue a registered line (`fedrec.coordinator.line_start`)
            start, self.current = load_start(self.registry, s, self.init)
            self.arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
            assert self.registry is not None  # load_start refuses a run without one
            self.ancestry = self.registry.lineage(self.current.id)[1:]
        else:
            self.current = self.name_version(0, None, [], {})  # version 0: forks and pins may start there
        self.contributions: ContributionLedger | None = None
        self.pending_contribution: Contribution | None = None
        if s.keep_contributions:
            if why := contributions_problem(strategy=s.strategy, robust=s.robust, statistics=self.family is not None,
                                            secure_aggregation=s.secure_aggregation):
                raise ConfigError(f"federation.keep_contributions=true cannot be kept here: {why}; fast divestment "
                                  "is not available for such a run (exact divestment is)")
            self.contributions = ContributionLedger(
                server_lr=s.server_lr, momentum=s.server_momentum if s.strategy == "fedavgm" else 0.0,
                start=self.current.id)

    def name_version(self, rnd: int, parent: str | None, contributors: list[str], epsilon: dict[str, float]
                     ) -> ModelVersion:
        """The content id of the current global arrays (what silos adopt, pin or fork from)."""
        version, _ = describe_version({k: v.numpy() for k, v in self.arrays.items()}, spec=self.s.model_spec,
                                      parent=parent, round=rnd, contributors=contributors, epsilon=epsilon,
                                      strategy=self.rule, config_hash=self.config_hash, divestment=self.divestment,
                                      coalition=self.line)
        return version

    def register(self, version: ModelVersion, metrics: dict[str, float]) -> None:
        if self.registry is not None:
            self.registry.add({k: v.numpy() for k, v in self.arrays.items()}, spec=self.s.model_spec,
                              parent=version.parent, round=version.round, contributors=version.contributors,
                              strategy=version.strategy, epsilon=version.epsilon, config_hash=self.config_hash,
                              metrics={k: v for k, v in metrics.items() if v == v},  # NaN: metrics kept in silos
                              influence=self.round_robust, divestment=version.divestment, coalition=self.line)
        self.history.versions.append({"round": version.round, "id": version.id})

    def start(self) -> int:
        """Preflight, then a fresh start (version 0 registered) or a resume from the checkpoint: the first round."""
        save_run_config(self.s)  # what was proposed, beside what came of it (divestment rebuilds from it)
        self.node_regions = preflight_or_stop(self.grid, self.s, self.history, timeout=self.timeout,
                                              statistics=self.family is not None)
        return self.begin()

    def begin(self) -> int:
        """A fresh start (version 0 registered) or a resume from the checkpoint (after preflight): the first round."""
        ckpt = load_checkpoint(Path(self.s.output_dir), self.run_id) if self.s.resume else None
        if ckpt is None:
            if self.s.start_version:
                self.history.versions.append({"round": self.current.round, "id": self.current.id})
                return self.current.round + 1
            self.register(self.current, {})
            return 1
        if self.registry is None:  # a restarted coordinator: continue after the last finished round
            raise ConfigError("resume needs the registry (output-dir or registry-dir) that holds the run's versions")
        loaded, self.current = self.registry.load(ckpt.version.id)
        self.ancestry = self.registry.lineage(self.current.id)[1:]
        # the model's order (FedAvgM's momentum is a list)
        self.arrays = ArrayRecord({k: Array(loaded[k]) for k in self.init})
        restore_strategy_state(self.strategy, ckpt.strategy_state, list(self.init))
        self.last_aggregated = ckpt.last_aggregated
        h, first = ckpt.history, ckpt.round + 1
        self.history.rounds, self.history.privacy_rounds = h["rounds"], h["privacy_rounds"]
        self.history.versions, self.history.round_log = h["model_versions"], h["round_log"]
        self.history.resumed_at.extend([*h.get("resumed_at", []), first])
        if self.contributions is not None:
            self.contributions = ContributionLedger.load(Path(self.s.output_dir))
            if self.contributions.head != self.current.id:
                raise ConfigError(f"the kept contributions end at version {self.contributions.head[:16]}, the "
                                  f"checkpoint at {self.current.short_id}: resume with "
                                  "federation.keep_contributions=false (fast divestment is then not available)")
        return first

    def round(self, rnd: int) -> RoundRecord:
        """Train → screen → aggregate (a new version) → evaluate at the evaluation rounds."""
        s, t0 = self.s, time.perf_counter()
        self.round_robust = {}
        config = ConfigRecord({"server-round": rnd, "model-version": self.current.id,
                               **({COALITION_KEY: self.line} if self.line else {})})
        step = collect_train(self.grid, self.strategy, s, rnd, self.arrays, config, self.current, self.node_regions,
                             self.rules, self.timeout, self.context, self.ancestry)
        solved = (solve_step(self.family, step, {k: v.numpy() for k, v in self.arrays.items()}, s.model_spec,
                             self.n_items) if self.family is not None and step.to_aggregate else None)
        ok, too_few = step.to_aggregate, ""
        if ok and len(step.contributors) < s.min_replies:
            too_few = (f"only {len(step.contributors)} acceptable update(s), min-replies is {s.min_replies}: "
                       "round not aggregated")
            ok = []
        if ok:
            self.aggregate(rnd, ok, solved)
            self.last_aggregated = rnd
            self.ancestry = [self.current, *self.ancestry]
            self.current = self.name_version(rnd, self.current.id, step.contributors,
                                             {r: p["epsilon"] for r, p in step.privacy.items()
                                              if r not in step.declined})
            if self.contributions is not None and self.pending_contribution is not None:
                self.contributions.record(rnd, *self.pending_contribution, head=self.current.id)
        first = rnd == 1 and not s.start_version  # a continued line was evaluated at its start already
        evaluate = bool(ok) and (first or rnd == s.num_rounds or rnd % s.eval_every == 0)
        per_region, overall, eval_failures = self.evaluate(rnd) if evaluate else ({}, {}, [])
        if ok:
            self.register(self.current, overall)
        stopped = ""
        if step.answered and not ok and not step.rejected and not too_few:
            stopped = f"round {rnd}: every silo declined ({'; '.join(sorted(set(step.declined.values())))})"
        elif not step.answered and step.failures:
            stopped = f"round {rnd}: every silo failed (first: {step.failures[0][:300]})"
        return RoundRecord(round=rnd, model_version=self.current.id if ok else None, evaluated=evaluate,
                           per_region=per_region, overall=overall, participants=step.contributors if ok else [],
                           declined=step.declined, rejected=step.rejected, privacy=step.privacy,
                           failures=step.failures + eval_failures + ([too_few] if too_few else []),
                           train_loss=step.train_loss, round_time_s=time.perf_counter() - t0, stopped=stopped,
                           robust=self.round_robust, metric_sums=self.line_sums(rnd) if evaluate else {})

    def aggregate(self, rnd: int, replies: list[Message], solved: Arrays | None = None) -> None:
        """The new global arrays: the strategy's average (`average_step`), or a statistics model's solve (`solved`)."""
        if self.family is not None:
            assert solved is not None
            self.arrays = ArrayRecord({k: Array(np.ascontiguousarray(solved[k])) for k in self.init})
            return
        averaged = average_step(self.strategy, self.s, rnd, self.arrays, self.init, replies, n_items=self.n_items,
                                keep_contributions=self.contributions is not None)
        self.round_robust = averaged.robust
        if averaged.contribution is not None:
            self.pending_contribution = averaged.contribution
        if averaged.arrays is not None:
            self.arrays = averaged.arrays

    def evaluate(self, rnd: int) -> tuple[dict[str, dict[str, float]], dict[str, float], list[str]]:
        evals, failures = evaluate_global(self.grid, self.strategy, rnd, self.arrays, self.timeout, self.current.id,
                                          self.line, self.current, self.ancestry)
        self.evaluations[rnd] = evals
        return *pool(evals), failures

    def line_sums(self, rnd: int) -> dict[str, dict[str, Any]]:
        """A coalition line's metric sums of round `rnd` per region, JSON-ready ({} for a run of one line)."""
        if not self.line:
            return {}
        return {r: {"sums": e.sums, "n_users": e.n_users, "sq_error": e.sq_error, "n_ratings": e.n_ratings}
                for r, e in self.evaluations.get(rnd, {}).items()}

    def checkpoint(self, rnd: int) -> None:
        """Everything a restarted coordinator needs to continue after round `rnd` (with an output dir)."""
        if self.s.output_dir:
            if self.contributions is not None:
                self.contributions.save(Path(self.s.output_dir))
            save_checkpoint(Path(self.s.output_dir), Checkpoint(
                run_key=self.run_id, round=rnd, version=self.current, last_aggregated=self.last_aggregated,
                history=self.history.to_json(), strategy_state=strategy_state(self.strategy, list(self.init))))

    def stop(self, why: str) -> None:
        """Every silo declined: end here, evaluating the last aggregated model if no round did yet."""
        h = self.history
        h.stopped_early = why
        if self.last_aggregated and (not h.rounds or h.rounds[-1]["round"] < self.last_aggregated):
            per_region, overall, failures = self.evaluate(self.last_aggregated)
            sums = self.line_sums(self.last_aggregated)
            h.rounds.append({"round": self.last_aggregated, "evaluated": True, "per_region": per_region,
                             "overall": overall, "failures": failures, **({"metric_sums": sums} if sums else {})})

    def finish(self, started: float) -> FederationHistory:
        """The final arrays and wall time; `federated_history.json` and the global model when there is an output."""
        h = self.history
        h.final_arrays = {k: v.numpy() for k, v in self.arrays.items()}
        h.wall_time_s = time.perf_counter() - started
        h.save(self.s.output_dir)
        if self.s.output_dir:
            save_global_model(Path(self.s.output_dir) / "global_model.safetensors", h.final_arrays,
                              spec=self.s.model_spec,
                              metadata={"rounds": self.s.num_rounds, "strategy": self.rule,
                                        "privacy": self.s.privacy})
        return h


def run_federation(grid: Grid, s: RunSettings, *, on_round: RoundCallback | None = None,
                   timeout: float | None = None, run_id: str = "", context: Context | None = None,
                   history: FederationHistory | None = None) -> FederationHistory:
    """Run `s.num_rounds` rounds of train → aggregate → evaluate; write outputs when `s.output_dir` is set.

    Silos that decline a round (a spent privacy budget, a repeated round) are left out of its aggregate
    and reported; when every silo declines, the run stops there and says why. Replies that fail the
    update screen (`update_screen`) are rejected and reported; a round with fewer than `min_replies`
    acceptable updates is not aggregated. Silos that do not answer within `round_timeout` are left out.
    `history`, when given, is filled in place (so a caller holds what happened even when the run stops
    with an error, e.g. a failed preflight) and returned.
    """
    if coalition_members(s):  # one line per coalition, in one run (`fedrec.coordinator.coalition_lines`)
        from fedrec.coordinator.coalition_lines import run_lines
        return run_lines(grid, s, on_round=on_round, timeout=timeout, run_id=run_id, context=context,
                         history=history)
    started = time.perf_counter()
    run = CoordinatorRun(grid, s, timeout=timeout, run_id=run_id, context=context, history=history)
    for rnd in range(run.start(), s.num_rounds + 1):
        record = run.round(rnd)
        entry = record_round(run.history, record)
        if on_round is not None:
            on_round(entry)  # before the checkpoint: a crash here replays the round, answered from silo caches
        run.checkpoint(rnd)
        if record.stopped:
            run.stop(record.stopped)
            break
    return run.finish(started)
