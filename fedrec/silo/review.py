"""A region's two serving hooks, run in its silo: `advance_fork` (training messages), `review` (evaluations).

`advance_fork` starts the fork when its base version arrives, then trains it one round on local data only (the line
itself: `fedrec.silo.fork_line`). `review` applies the region's adoption policy to the new version (scored on its
validation users, never its test users; guarded by `fedrec.silo.guarded_review`) and evaluates what the region then
serves on its test users. The state both read and write is `fedrec.silo.serving.RegionServing`; `adopt: adapt` has
its own two hooks (`fedrec.silo.adaptation`). Nothing here is ever put in a reply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedrec.config import AdoptionPolicy
from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation
from fedrec.models import ModelSpec, RecModel
from fedrec.silo.adoption import Decision, decide
from fedrec.silo.fork_line import Fork, evaluate_fork, train_line
from fedrec.silo.guarded_review import GuardedCandidate, guard_candidate, guarded_eval, same_shapes
from fedrec.silo.round import evaluate_round, evaluate_splits
from fedrec.silo.serving import FORK_FILE, FORK_PREFIX, Fetch, RegionServing, Served, fork_label
from fedrec.training import Arrays, Tensors, TrainConfig


@dataclass(frozen=True)
class Review:
    """What a region serves after a review, the decision that led there, and the served model's test metrics."""

    decision: Decision
    served: SiloEvaluation | None
    own_line: SiloEvaluation | None = None
    """`adopt: adapt` only: the region's own (local-only) line's test metrics, served or not (for the report)."""


def advance_fork(serving: RegionServing, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, server_round: int,
                 received_version: str, received_arrays: Arrays, local: Tensors | None, seed: int,
                 run_id: str = "") -> Fork | None:
    """Training-message hook: (re)start the fork when its base arrives, then train it one round locally.

    The received arrays are the global version of round `server_round - 1`. A new fork copies the silo's
    current per-user parameters; a rebase keeps the fork's own users and restarts its optimizer. Local
    training of the fork never feeds a reply. A training message the fork already trained for (a replay by a
    restarted or hostile coordinator) changes nothing: the fork is returned as it is.
    """
    fork = serving.fork()
    key = f"{run_id}/{server_round}"
    if fork is not None and fork.last_trained == key:
        return fork
    started: Decision | None = None
    if serving.fork_due(received_round=server_round - 1, received_version=received_version):
        before = serving.record.served()
        users = fork.local if fork is not None else {k: v.clone() for k, v in (local or {}).items()}
        fork = Fork(base=received_version, since_round=server_round - 1, rounds=0,
                    global_arrays=dict(received_arrays), local=users, optimizer={})
        reason = ("rebased the fork onto this version" if before and before.startswith(FORK_PREFIX)
                  else "the fork starts from this version")
        started = Decision(round=server_round - 1, candidate=received_version, served_before=before,
                           served_after=fork_label(received_version), adopted=False, reason=reason, run_id=run_id)
    if fork is None:
        return None
    fork = train_line(fork, silo, spec, cfg, seed=seed, key=key)
    serving.save_line(FORK_FILE, fork)
    if started is not None:  # the pointer moves to the fork once the fork is stored: never to a missing model
        serving.record.record(started)
    return fork


def review(serving: RegionServing, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, server_round: int,
           candidate: str, candidate_arrays: Arrays, local: Tensors | None, candidate_test: SiloEvaluation,
           seed: int, fetch: Fetch | None = None, run_id: str = "",
           candidate_valid: SiloEvaluation | None = None, candidate_model: RecModel | None = None) -> Review:
    """Evaluation-message hook: decide on `candidate` by the region's policy; evaluate what it now serves.

    `if_better` scores the candidate and the served version on the silo's validation users (never its
    test users), each with the silo's own users re-fitted to it, exactly as a served model would be.
    `fetch` finds a pinned version the region has not received in this run (global versions are public
    to the federation's members; in simulation, the run's registry). `candidate_valid` and `candidate_model`,
    when the caller has them from the same re-fit as `candidate_test`, save one each.
    """
    policy, record = serving.policy, serving.record
    served = record.served()
    fork = serving.fork()
    if policy.kind == "fork" and fork is not None:
        return _serve_fork(serving, fork, silo, spec, cfg, server_round=server_round, candidate=candidate,
                           served=served, seed=seed, run_id=run_id)
    on = _Scoring(silo, spec, cfg, local, seed)
    stored = serving.served_arrays()
    if stored is not None and not same_shapes(stored[1], candidate_arrays):
        stored = None  # served in a run with another model shape: it cannot be scored against this run's versions
    seen = stored is not None and stored[0] == candidate
    guarded = (guard_candidate(policy, silo, spec, cfg, candidate_arrays, local,
                               reference=stored[1] if stored is not None else serving.guard_base(),
                               own=serving.take_own_moves(), seed=seed, fitted=candidate_model)
               if policy.guarded and not seen else None)
    if guarded is not None and guarded.changed:  # what would be served is the guarded model: judge that one
        candidate_valid = (guarded_eval(guarded, silo, spec, cfg, local, seed=seed, split="valid")
                           if policy.kind == "if_better" else None)
        candidate_test = guarded_eval(guarded, silo, spec, cfg, local, seed=seed, split="test")
    decision, stored, served_eval = _decide(serving, on, server_round=server_round, candidate=candidate,
                                            candidate_arrays=candidate_arrays, candidate_valid=candidate_valid,
                                            stored=stored, served=served, fetch=fetch, run_id=run_id)
    decision = _with_guard(replace(decision, run_id=run_id), guarded)
    if decision.adopted:
        serving.store_served(candidate, guarded.arrays if guarded is not None else candidate_arrays,
                             withheld=guarded.withheld if guarded is not None else None)
    record.record(decision)
    return Review(decision, _served_metrics(serving, on, decision, candidate, candidate_test, stored, served_eval))


@dataclass(frozen=True)
class _Scoring:
    """What a review scores a model with: the silo's data and users (re-fitted to the model), the run's settings."""

    silo: SiloData
    spec: ModelSpec
    cfg: TrainConfig
    local: Tensors | None
    seed: int


def _serve_fork(serving: RegionServing, fork: Fork, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *,
                server_round: int, candidate: str, served: str | None, seed: int, run_id: str) -> Review:
    """A region that forked keeps serving its own line, whatever the candidate: say so, evaluate the fork."""
    decision = Decision(server_round, candidate, served, fork_label(fork.base), False,
                        f"forked from {fork.base[:12]} at round {fork.since_round}: serves its own line",
                        run_id=run_id)
    serving.record.record(decision)
    return Review(decision, evaluate_fork(fork, silo, spec, cfg, seed=seed))


def _decide(serving: RegionServing, on: _Scoring, *, server_round: int, candidate: str, candidate_arrays: Arrays,
            candidate_valid: SiloEvaluation | None, stored: Served | None, served: str | None, fetch: Fetch | None,
            run_id: str) -> tuple[Decision, Served | None, dict[str, SiloEvaluation]]:
    """The policy's decision on `candidate`, the version stored now, and the stored version's evaluations.

    A pinned version fetched here replaces the stored one; the evaluations are `if_better`'s ({} otherwise).
    """
    policy = serving.policy
    if stored is not None and stored[0] == candidate:  # a version seen before (e.g. a re-sent round)
        return (Decision(server_round, candidate, served, candidate, False, "already serves this version",
                         run_id=run_id), stored, {})
    if policy.kind == "if_better" and stored is not None:
        metric = policy.metric
        if candidate_valid is None:
            candidate_valid = evaluate_round(on.silo, on.spec, candidate_arrays, on.local, on.cfg, seed=on.seed,
                                             split="valid")
        served_eval = evaluate_splits(on.silo, on.spec, stored[1], on.local, on.cfg, seed=on.seed,
                                      splits=("valid", "test"), withheld=serving.withheld())
        return decide(policy, round=server_round, candidate=candidate, served=stored[0],
                      candidate_score=candidate_valid.means()[metric],
                      served_score=served_eval["valid"].means()[metric]), stored, served_eval
    if (pinned := _fetch_pin(policy, candidate, stored, fetch)) is not None:
        serving.store_served(*pinned)
        return (Decision(server_round, candidate, served, pinned[0], False,
                         f"pinned to {policy.version}: loaded it from the federation's registry", run_id=run_id),
                pinned, {})
    return decide(policy, round=server_round, candidate=candidate,
                  served=stored[0] if stored is not None else None), stored, {}


def _fetch_pin(policy: AdoptionPolicy, candidate: str, stored: Served | None, fetch: Fetch | None) -> Served | None:
    """The pinned version, fetched, when the region pins one it neither received now nor stores (else None)."""
    if (policy.kind != "pin" or not policy.version or candidate.startswith(policy.version)
            or (stored is not None and stored[0].startswith(policy.version)) or fetch is None):
        return None
    return fetch(policy.version)


def _with_guard(decision: Decision, guarded: GuardedCandidate | None) -> Decision:
    """The decision with the guard's evidence, and what it changed in the candidate said in the reason."""
    if guarded is None:
        return decision
    n_flagged, n_held = int(guarded.evidence.get("guard/flagged", 0)), int(guarded.withheld.sum())
    note = (f"; the guard served {n_flagged} item row(s) as the region's own training moved them and withheld "
            f"{n_held} item(s)" if guarded.changed else "")
    return replace(decision, reason=decision.reason + note, evidence={**decision.evidence, **guarded.evidence})


def _served_metrics(serving: RegionServing, on: _Scoring, decision: Decision, candidate: str,
                    candidate_test: SiloEvaluation, stored: Served | None,
                    served_eval: dict[str, SiloEvaluation]) -> SiloEvaluation | None:
    """The test metrics of what the region serves after the decision (None: neither the candidate nor `stored`)."""
    if decision.served_after == candidate:
        return candidate_test
    if stored is not None and decision.served_after == stored[0]:
        return served_eval["test"] if served_eval else evaluate_round(
            on.silo, on.spec, stored[1], on.local, on.cfg, seed=on.seed, withheld=serving.withheld())
    return None
