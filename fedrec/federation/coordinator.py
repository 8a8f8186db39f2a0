"""The coordinator's round loop over a Flower `Grid`: train, aggregate, evaluate per region, record.

It sees only what silos reply (global parameters, public metadata, and metric sums when the run is not
private) and never a user id.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid

from fedrec.errors import ConfigError
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.federation.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedrec.federation.egress import TRAIN_LOSS_KEY, read_decline, read_float, read_int, read_privacy, read_region
from fedrec.federation.preflight import preflight_failure, run_preflight
from fedrec.federation.secure_aggregation import secure_train_round
from fedrec.federation.settings import RunSettings, read_manifest
from fedrec.federation.strategies import build_strategy, restore_strategy_state, strategy_state
from fedrec.federation.update_screen import ScreenRules, metadata_problem, screen
from fedrec.metrics import METRICS
from fedrec.model_io import save_global_model
from fedrec.model_registry import ModelRegistry, ModelVersion, describe_version
from fedrec.training import initial_global_arrays

RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class FederationHistory:
    """Per-region evaluation of the global model after each evaluated round, and the final parameters.

    Rounds are evaluated at round 1, every `eval_every` rounds and at the last round.
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

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (without the arrays)."""
        return {"run_id": self.run_id, "rounds": self.rounds, "privacy_rounds": self.privacy_rounds,
                "model_versions": self.versions, "round_log": self.round_log, "resumed_at": self.resumed_at,
                "stopped_early": self.stopped_early, "wall_time_s": self.wall_time_s}


def _region(msg: Message) -> str:
    return read_region(msg.content)


def pool_evaluations(replies: list[Message]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-region means and the user-weighted overall mean from evaluation replies' metric sums."""
    evals: dict[str, SiloEvaluation] = {}
    for msg in replies:
        c = msg.content
        if "metrics" not in c.metric_records:  # kept in the silo (private run): nothing to pool
            continue
        explicit = "n-ratings" in c.metric_records["metrics"]
        evals[_region(msg)] = SiloEvaluation(
            sums={k: read_float(c, "metrics", f"sum-{k}") for k in METRICS}, n_users=read_int(c, "metrics", "n-users"),
            sq_error=read_float(c, "metrics", "sq-error") if explicit else 0.0,
            n_ratings=read_int(c, "metrics", "n-ratings") if explicit else 0)
    return pool(evals)


def evaluate_global(grid: Grid, strategy: Any, rnd: int, arrays: ArrayRecord, timeout: float, version: str = ""
                    ) -> tuple[dict[str, dict[str, float]], dict[str, float], list[str]]:
    """Ask every silo to evaluate `arrays` (global `version`): (per-region metrics, overall, failure reasons).

    Each silo also reviews the version under its own adoption policy; that stays in the silo.
    """
    replies = list(grid.send_and_receive(strategy.configure_evaluate(
        rnd, arrays, ConfigRecord({"server-round": rnd, "model-version": version}), grid), timeout=timeout))
    per_region, overall = pool_evaluations(sorted((r for r in replies if not r.has_error()), key=_region))
    return per_region, overall, [str(r.error.reason)[:500] for r in replies if r.has_error()]


@dataclass
class TrainStep:
    """A round's training replies, sorted out: what to aggregate, from whom, and who declined or was rejected."""

    answered: list[Message]
    to_aggregate: list[Message]
    contributors: list[str]
    declined: dict[str, str]
    rejected: dict[str, str]
    privacy: dict[str, dict[str, float]]
    failures: list[str]
    train_loss: dict[str, float] = field(default_factory=dict)


def collect_train(grid: Grid, strategy: Any, s: RunSettings, rnd: int, arrays: ArrayRecord, config: ConfigRecord,
                  version: str, rules: ScreenRules, timeout: float, context: Context | None) -> TrainStep:
    """Send the round's training messages and screen the replies (plain, or through SecAgg+)."""
    messages = list(strategy.configure_train(rnd, arrays, config, grid))
    secure = None
    if s.secure_aggregation == "secaggplus":
        if context is None:
            raise ConfigError("secure-aggregation=secaggplus needs the ServerApp's context")
        secure = secure_train_round(grid, context, messages, timeout=timeout,
                                    clipping_range=s.secagg_clipping_range,
                                    quantization_range=s.secagg_quantization_range,
                                    min_contributors=s.secagg_min_contributors)
        replies, failures = secure.replies, list(secure.failures)
    else:
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        failures = [str(r.error.reason)[:500] for r in replies if r.has_error()]
    answered = sorted((r for r in replies if not r.has_error()), key=_region)
    declined = {_region(r): str(read_decline(r.content)) for r in answered if read_decline(r.content)}
    privacy = {_region(r): p for r in answered if (p := read_privacy(r.content)) is not None}
    contributing = [r for r in answered if _region(r) not in declined]
    if secure is None:
        ok, rejected = screen(contributing, {k: v.numpy() for k, v in arrays.items()}, version=version, rules=rules)
        losses = {_region(r): read_float(r.content, "metrics", TRAIN_LOSS_KEY) for r in ok
                  if TRAIN_LOSS_KEY in r.content.metric_records.get("metrics", {})}
        return TrainStep(answered, ok, [_region(r) for r in ok], declined, rejected, privacy, failures, losses)
    # SecAgg+: only the mean is visible; a bad reply cannot be taken out of it, so it voids the round
    rejected = {_region(r): why for r in contributing if (why := metadata_problem(r, version=version))}
    mean_ok = secure.arrays is not None and all(np.isfinite(a.numpy()).all() for a in secure.arrays.values())
    if secure.arrays is not None and not mean_ok:
        failures.append("SecAgg+ mean holds NaN or Inf: round not aggregated")
    if rejected or not mean_ok:
        return TrainStep(answered, [], [], declined, rejected, privacy, failures)
    return TrainStep(answered, [secure.as_reply()], [_region(r) for r in contributing], declined, {}, privacy,
                     failures)


def write_history(s: RunSettings, history: FederationHistory) -> None:
    """`<output-dir>/federated_history.json` (nothing without an output dir)."""
    if s.output_dir:
        out = Path(s.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "federated_history.json").write_text(json.dumps(history.to_json(), indent=1))


def run_federation(grid: Grid, s: RunSettings, *, on_round: RoundCallback | None = None,
                   timeout: float | None = None, run_id: str = "", context: Context | None = None
                   ) -> FederationHistory:
    """Run `s.num_rounds` rounds of train → aggregate → evaluate; write outputs when `s.output_dir` is set.

    Silos that decline a round (a spent privacy budget, a repeated round) are left out of its aggregate
    and reported; when every silo declines, the run stops there and says why. Replies that fail the
    update screen (`update_screen`) are rejected and reported; a round with fewer than `min_replies`
    acceptable updates is not aggregated. Silos that do not answer within `round_timeout` are left out.
    """
    start = time.perf_counter()
    manifest = read_manifest(s.data_dir)
    init = initial_global_arrays(s.model_spec, n_items=int(manifest["n_items"]), seed=s.seed)
    arrays = ArrayRecord({k: Array(v) for k, v in init.items()})
    strategy = build_strategy(s)
    timeout = s.round_timeout if timeout is None else timeout
    rules = ScreenRules(norm_factor=s.update_norm_factor, max_norm=s.max_update_norm,
                        uniform_weight=s.privacy_settings().enabled)
    history = FederationHistory(run_id=run_id)
    last_aggregated = 0
    registry = ModelRegistry(s.registry_dir or Path(s.output_dir) / "registry") if (s.registry_dir or s.output_dir) \
        else None
    config_hash = hashlib.sha256(json.dumps(s.model_config(), sort_keys=True, default=str).encode()).hexdigest()

    def name_version(rnd: int, parent: str | None, contributors: list[str], epsilon: dict[str, float]
                     ) -> ModelVersion:
        """The content id of the current global arrays (what silos adopt, pin or fork from)."""
        version, _ = describe_version({k: v.numpy() for k, v in arrays.items()}, spec=s.model_spec, parent=parent,
                                      round=rnd, contributors=contributors, epsilon=epsilon, strategy=s.strategy,
                                      config_hash=config_hash)
        return version

    def register(version: ModelVersion, metrics: dict[str, float]) -> None:
        if registry is not None:
            registry.add({k: v.numpy() for k, v in arrays.items()}, spec=s.model_spec, parent=version.parent,
                         round=version.round, contributors=version.contributors, strategy=version.strategy,
                         epsilon=version.epsilon, config_hash=config_hash,
                         metrics={k: v for k, v in metrics.items() if v == v})  # NaN: metrics kept in silos
        history.versions.append({"round": version.round, "id": version.id})

    problems = run_preflight(grid, s, list(manifest["regions"]), timeout=timeout)
    if problems:
        history.stopped_early = "preflight failed: " + "; ".join(problems)
        write_history(s, history)
        raise preflight_failure(problems, s.output_dir)
    ckpt = load_checkpoint(Path(s.output_dir), run_id) if s.resume else None
    if ckpt is not None:  # a restarted coordinator: continue after the last finished round
        if registry is None:
            raise ConfigError("resume needs the registry (output-dir or registry-dir) that holds the run's versions")
        loaded, current = registry.load(ckpt.version.id)
        arrays = ArrayRecord({k: Array(loaded[k]) for k in init})  # the model's order (FedAvgM's momentum is a list)
        restore_strategy_state(strategy, ckpt.strategy_state, list(init))
        last_aggregated, first_round = ckpt.last_aggregated, ckpt.round + 1
        h = ckpt.history
        history.rounds, history.privacy_rounds = h["rounds"], h["privacy_rounds"]
        history.versions, history.round_log = h["model_versions"], h["round_log"]
        history.resumed_at.extend([*h.get("resumed_at", []), first_round])
    else:
        current = name_version(0, None, [], {})  # the initial model is version 0: forks and pins may start there
        register(current, {})
        first_round = 1
    for rnd in range(first_round, s.num_rounds + 1):
        t0 = time.perf_counter()
        config = ConfigRecord({"server-round": rnd, "model-version": current.id})
        step = collect_train(grid, strategy, s, rnd, arrays, config, current.id, rules, timeout, context)
        answered, declined, rejected, privacy = step.answered, step.declined, step.rejected, step.privacy
        ok = step.to_aggregate
        too_few = ""
        if ok and len(step.contributors) < s.min_replies:
            too_few = (f"only {len(step.contributors)} acceptable update(s), min-replies is {s.min_replies}: "
                       "round not aggregated")
            ok = []
        if ok:
            aggregated, _ = strategy.aggregate_train(rnd, ok)
            if aggregated is not None:
                arrays = aggregated
            last_aggregated = rnd
            current = name_version(rnd, current.id, step.contributors,
                                   {r: p["epsilon"] for r, p in privacy.items() if r not in declined})
        evaluate = bool(ok) and (rnd == 1 or rnd == s.num_rounds or rnd % s.eval_every == 0)
        per_region, overall, eval_failures = evaluate_global(grid, strategy, rnd, arrays, timeout, current.id) \
            if evaluate else ({}, {}, [])
        if ok:
            register(current, overall)
        version = current if ok else None
        entry = {
            "round": rnd,
            "model_version": version.id if version else None,
            "evaluated": evaluate,
            "per_region": per_region,
            "overall": overall,
            "participants": step.contributors if ok else [],
            "declined": declined,
            "rejected": rejected,
            "privacy": privacy,
            "failures": step.failures + eval_failures + ([too_few] if too_few else []),
            "train_loss": step.train_loss,
            "round_time_s": time.perf_counter() - t0,
        }
        if evaluate:
            history.rounds.append(entry)
        history.round_log.append({k: entry[k] for k in ("round", "model_version", "participants", "declined",
                                                        "rejected", "failures", "train_loss", "round_time_s")})
        if privacy or declined:
            history.privacy_rounds.append({"round": rnd, "per_region": privacy, "declined": declined})
        if on_round is not None:
            on_round(entry)
        if s.output_dir:
            save_checkpoint(Path(s.output_dir), Checkpoint(
                run_key=run_id, round=rnd, version=current, last_aggregated=last_aggregated,
                history=history.to_json(), strategy_state=strategy_state(strategy, list(init))))
        if answered and not ok and not rejected and not too_few:
            history.stopped_early = f"round {rnd}: every silo declined ({'; '.join(sorted(set(declined.values())))})"
            if last_aggregated and (not history.rounds or history.rounds[-1]["round"] < last_aggregated):
                per_region, overall, eval_failures = evaluate_global(grid, strategy, last_aggregated, arrays, timeout,
                                                                     current.id)
                history.rounds.append({"round": last_aggregated, "evaluated": True, "per_region": per_region,
                                       "overall": overall, "failures": eval_failures})
            break
    history.final_arrays = {k: v.numpy() for k, v in arrays.items()}
    history.wall_time_s = time.perf_counter() - start
    write_history(s, history)
    if s.output_dir:
        save_global_model(Path(s.output_dir) / "global_model.safetensors", history.final_arrays, spec=s.model_spec,
                          metadata={"rounds": s.num_rounds, "strategy": s.strategy, "privacy": s.privacy})
    return history
