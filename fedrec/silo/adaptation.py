"""`adopt: adapt`: a region serves the global version, that version adapted to its own data, or its own line.

Whichever scores best on the silo's own validation users, decided in the silo and never sent; adaptation
uses the region's own training data only and puts nothing in a reply, so it costs no privacy.

Two hooks, called by the ClientApp (`fedrec.silo.handlers`):
- `advance_own_line` on every training message: the region's own line, a local-only model started from the
  run's version 0 as the silo builds it itself from the run's seed (never the received arrays, which a hostile
  coordinator could craft; except a model initialised from catalog features) and trained one local round on its data per
  training message (a statistics model, whose local round is one cheap solve: `adapt_rounds` of them, so its
  own line converges even when a DP federation runs few rounds), exactly like a fork that never adopts
  (`<state-dir>/serving/own.safetensors`). A training
  message it already trained for (a replay) trains nothing.
- `review_adapted` on every evaluation message: the candidate's adapted variants (`adapted_variants`: an SGD
  model fine-tuned for `adapt_rounds` local rounds from the candidate and the silo's users; iALS's MAP item
  solve with the candidate as prior for each μ of the policy, `adapt_rounds` alternating sweeps,
  `fedrec.adaptation`; EASE none), scored with the
  candidate and the own line on the validation users (never test). With the policy's `confidence` c > 0 (the
  default, 0.95) the own line is served unless another model beats it on the validation users by a one-sided
  paired t-test on their per-user metric at level (1 - c) / (number of other models) (Bonferroni: the chance
  of serving any model that is not better than the own line on validation's population is at most 1 - c), so a
  region with a few dozen validation users does not trade its own line for a noisy win. Among the models that
  pass (c = 0: among all), the simplest wins ties (global, then adapted with the strongest prior or fewest
  rounds first, then the own line), and a less simple model must beat the best simpler one by more than the
  policy's `margin`. The decision and every score (and p-value) are recorded
  (`adoption.jsonl`), the served model is kept (`served.safetensors`, so a restarted silo serves the same
  thing), and its test metrics go to the silo's evaluation log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import stats

from fedrec.adaptation import adapt_statistics_model
from fedrec.adoption_policy import AdoptionPolicy
from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation
from fedrec.models import ModelSpec
from fedrec.silo.adoption import Decision
from fedrec.silo.fork_line import Fork, train_line
from fedrec.silo.review import Review
from fedrec.silo.round import evaluate_splits, silo_seed, train_round
from fedrec.silo.serving import FORK_PREFIX, OWN_FILE, RegionServing
from fedrec.statistics import is_statistics_model
from fedrec.training import Arrays, Tensors, TrainConfig, initial_global_arrays

OWN_PREFIX = "own:"
ADAPTED_PREFIX = "adapted:"


def served_kind(label: str | None) -> str:
    """What kind of model a serving pointer names: global, adapted, own line, fork (or "-" for nothing)."""
    if not label:
        return "-"
    if label.startswith(ADAPTED_PREFIX):
        return "adapted"
    if label.startswith(OWN_PREFIX):
        return "own line"
    return "fork" if label.startswith(FORK_PREFIX) else "global"


@dataclass(frozen=True)
class Option:
    """One model a region could serve: its name in the evidence, its serving label, arrays and own users."""

    name: str
    label: str
    global_arrays: Arrays
    users: Tensors | None
    """The model's own users; None: served with the silo's current users (a global version)."""


def advance_own_line(serving: RegionServing, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, server_round: int,
                     received_version: str, received_arrays: Arrays, seed: int, run_id: str,
                     run_seed: int | None = None) -> Fork:
    """Training-message hook: start the own line from the first version of the run, then one local round.

    With `run_seed` (the ClientApp gives the run's seed) the line starts from the model the silo builds itself
    from that seed (`own_start`: what an honest coordinator sends as version 0), not from the received
    arrays: a coordinator that crafts its first version cannot seed the region's fallback.
    A training message of this run for a round the line already trained for (a replay by a restarted or
    hostile coordinator) changes nothing; any other round trains it once, so one message from a far round
    cannot freeze it for the rest of the run. A new run starts a new line (local-only is a per-run bound).
    Nothing of the line ever feeds a reply.
    """
    line = serving.line(OWN_FILE)
    done: list[str] = []
    if line is not None:
        run, _, trained = line.last_trained.rpartition("/")
        done = line.trained_rounds.split(",") if line.trained_rounds else [trained]
        if run == run_id and str(server_round) in done:
            return line
        if run != run_id:
            line, done = None, []
    if line is None:
        start = own_start(spec, silo.n_items, run_seed) if run_seed is not None else None
        line = Fork(base=received_version, since_round=server_round - 1, rounds=0,
                    global_arrays=dict(received_arrays if start is None else start), local={}, optimizer={})
    for _ in range(serving.policy.adapt_rounds if is_statistics_model(spec) else 1):
        line = train_line(line, silo, spec, cfg, seed=seed, key=f"{run_id}/{server_round}")
    line = replace(line, trained_rounds=",".join([*done, str(server_round)]))
    serving.save_line(OWN_FILE, line)
    return line


def own_start(spec: ModelSpec, n_items: int, run_seed: int) -> Arrays | None:
    """The own line's first model, built in the silo from the run's seed (None for a features-initialised model).

    A model whose first item factors come from the catalog's features (which a deployed silo may not hold)
    starts from the received arrays. The process's torch random state is left as it was (replies must not
    depend on the own line).
    """
    if spec.kwargs.get("init") == "features":
        return None
    with torch.random.fork_rng(devices=[]):
        return initial_global_arrays(spec, n_items=n_items, seed=run_seed)


def adapted_variants(silo: SiloData, spec: ModelSpec, cfg: TrainConfig, policy: AdoptionPolicy, *, candidate: str,
                     candidate_arrays: Arrays, local: Tensors | None, seed: int) -> list[Option]:
    """The candidate adapted to the silo's own training data, simplest first (computed here, never sent).

    SGD models: after each of `adapt_rounds` local rounds from the candidate and the silo's own users (a fresh
    optimizer; the silo's federated state is not touched). Statistics models: `fedrec.adaptation`, strongest
    prior first.
    """
    if is_statistics_model(spec):
        by_mu = adapt_statistics_model(silo, candidate_arrays, spec, sorted(policy.mu, reverse=True),
                                       sweeps=policy.adapt_rounds)
        return [Option(f"{ADAPTED_PREFIX}mu={mu:g}", f"{ADAPTED_PREFIX}mu={mu:g}:{candidate}", arrays, None)
                for mu, arrays in by_mu.items()]
    out, arrays, users, optimizer = [], candidate_arrays, local, None
    for k in range(1, policy.adapt_rounds + 1):
        step = train_round(silo, spec, arrays, users, cfg, seed=silo_seed(seed, "adapt", k), optimizer_state=optimizer)
        arrays, users, optimizer = step.global_after, step.local_after, step.optimizer_after
        out.append(Option(f"{ADAPTED_PREFIX}rounds={k}", f"{ADAPTED_PREFIX}rounds={k}:{candidate}", arrays, users))
    return out


def choose(scores: Sequence[tuple[str, float]], margin: float = 0.0) -> str:
    """The option to serve from (name, validation score) pairs listed simplest first.

    A less simple option replaces the pick only when it beats it by more than `margin`: ties go to the simpler,
    and a NaN score (no validation users) never wins.
    """
    best, best_score = scores[0]
    for name, score in scores[1:]:
        if score > best_score + margin or (best_score != best_score and score == score):
            best, best_score = name, score
    return best


def paired_p_value(option: SiloEvaluation, own: SiloEvaluation, metric: str) -> float:
    """One-sided paired t-test p-value that `option` beats `own` on the same users' `metric` (1.0: no evidence).

    No per-user values, different users, fewer than two users or no difference at all give 1.0.
    """
    a, b = option.per_user, own.per_user
    if a is None or b is None or len(a["users"]) < 2 or not np.array_equal(a["users"], b["users"]):
        return 1.0
    diff = np.asarray(a[metric], dtype=np.float64) - np.asarray(b[metric], dtype=np.float64)
    if not diff.any():
        return 1.0
    if np.ptp(diff) <= 1e-6:  # every user gains (or loses) the same, to float32 precision: no variance to test
        return 0.0 if diff[0] > 0 else 1.0
    p = float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue)
    return p if p == p else 1.0


def choose_confident(scores: Sequence[tuple[str, float]], p_values: dict[str, float], *, own: str,
                     confidence: float, margin: float = 0.0) -> str:
    """`own` unless some option beats it at `confidence` (Bonferroni over the others); then `choose` among those.

    `scores` lists (name, validation score) simplest first and includes `own`; `p_values` holds each other
    option's `paired_p_value` against `own`.
    """
    others = [(n, v) for n, v in scores if n != own]
    level = (1.0 - confidence) / max(len(others), 1)
    passed = [(n, v) for n, v in others if p_values.get(n, 1.0) < level]
    return choose(passed, margin) if passed else own


def review_adapted(serving: RegionServing, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, server_round: int,
                   candidate: str, candidate_arrays: Arrays, local: Tensors | None, candidate_valid: SiloEvaluation,
                   candidate_test: SiloEvaluation, seed: int, adapt_seed: int, run_id: str = "") -> Review:
    """Evaluation-message hook: the own line, unless the candidate or an adapted variant passes the paired test.

    Among those that pass at the policy's `confidence`, the validation-best (`confidence` 0: among all).

    `candidate_valid` / `candidate_test` come from one re-fit of the silo's users to the candidate; every other
    option is re-fitted and scored with the same `seed`. An evaluation message already reviewed (same run,
    round and candidate: a replay) records nothing new: the stored served model is evaluated again.
    """
    policy, record = serving.policy, serving.record
    past = record.decisions()
    own = serving.line(OWN_FILE)
    if past and (past[-1].run_id, past[-1].round, past[-1].candidate) == (run_id, server_round, candidate):
        own_test = None if own is None else evaluate_splits(silo, spec, own.global_arrays, own.local, cfg, seed=seed,
                                                            splits=("test",))["test"]
        return Review(past[-1], evaluate_served(serving, silo, spec, cfg, local=local, seed=seed), own_line=own_test)
    options = [Option("global", candidate, candidate_arrays, None)]
    options += adapted_variants(silo, spec, cfg, policy, candidate=candidate, candidate_arrays=candidate_arrays,
                                local=local, seed=adapt_seed)
    if own is not None:
        options.append(Option("own", f"{OWN_PREFIX}{own.base}", own.global_arrays, own.local))
    evals = {"global": {"valid": candidate_valid, "test": candidate_test}}
    for o in options[1:]:
        evals[o.name] = evaluate_splits(silo, spec, o.global_arrays, o.users if o.users is not None else local, cfg,
                                        seed=seed, splits=("valid", "test"))
    scores = {o.name: evals[o.name]["valid"].means()[policy.metric] for o in options}
    ranked = [(o.name, scores[o.name]) for o in options]
    evidence = dict(scores)
    if own is not None and policy.confidence > 0:
        p_values = {o.name: paired_p_value(evals[o.name]["valid"], evals["own"]["valid"], policy.metric)
                    for o in options if o.name != "own"}
        pick = choose_confident(ranked, p_values, own="own", confidence=policy.confidence, margin=policy.margin)
        evidence.update({f"p:{n}": p for n, p in p_values.items()})
        rule = ("; one-sided paired p vs own line: " + ", ".join(f"{n} {p:.3g}" for n, p in p_values.items())
                + f" (needs < {(1 - policy.confidence) / max(len(p_values), 1):.3g} at confidence "
                f"{policy.confidence:g})")
    else:
        pick, rule = choose(ranked, policy.margin), ""
    chosen = next(o for o in options if o.name == pick)
    serving.store_served(chosen.label, chosen.global_arrays, chosen.users)
    reason = (f"{policy.metric} on validation users: " + ", ".join(f"{n} {v:.4f}" for n, v in scores.items())
              + rule + f"; serves {pick}" + (f" (margin {policy.margin:g})" if policy.margin else ""))
    decision = Decision(server_round, candidate, record.served(), chosen.label, pick != "own", reason, evidence,
                        run_id=run_id)
    record.record(decision)
    return Review(decision, evals[pick]["test"], own_line=evals["own"]["test"] if own is not None else None)


def evaluate_served(serving: RegionServing, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *,
                    local: Tensors | None, seed: int) -> SiloEvaluation | None:
    """The stored served model's test metrics (with its own users, else the silo's), None if nothing is stored."""
    served = serving.served_model()
    if served is None:
        return None
    _, arrays, users = served
    return evaluate_splits(silo, spec, arrays, users if users is not None else local, cfg, seed=seed,
                           splits=("test",))["test"]
