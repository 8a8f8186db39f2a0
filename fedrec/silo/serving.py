"""A region's served model, kept inside its silo: the global version it adopted, or its own fork line.

Everything lives under `<state-dir>/serving/` and nothing here is ever put in a reply:
- `served.safetensors`: the global arrays of the version the region serves (adopt / if_better / pin), so
  `if_better` can score it against each new candidate and the region keeps serving it across restarts
  (under `adopt: adapt`, the served model itself, with its own users when it has them);
  `served.prev.safetensors` (and `fork.prev.safetensors`, ...): the file each write replaced, kept until the
  next one, so the model the pointer still names stays readable while a new one is stored and the pointer has
  not moved yet (`fedrec.silo.served_now` resolves the pointer to a model the way a serving process would);
- `fork.safetensors`: a fork's whole model (its global-side arrays, its users' parameters, its optimizer
  moments), with its base version and start round in the header; `own.safetensors`: the same for the
  region's own line under `adopt: adapt` (`fedrec.silo.adaptation`), which never adopts;
- `serving.json` + `adoption.jsonl` (`fedrec.silo.adoption.ServingRecord`): the pointer and every decision with
  its evidence.

Two hooks, called by the ClientApp: `advance_fork` on every training message (start the fork when its base
arrives, then train it one round on local data only; the line itself: `fedrec.silo.fork_line`) and `review` on
every evaluation message (apply the policy to the new version and evaluate what the region serves on its test
users). `adopt: adapt` has its own two (`fedrec.silo.adaptation`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from fedrec.config import AdoptionPolicy
from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation
from fedrec.io import atomic_save_arrays, atomic_write_text
from fedrec.models import ModelSpec, RecModel
from fedrec.models.base import is_local
from fedrec.silo.adoption import Decision, ServingRecord, decide
from fedrec.silo.fork_line import Fork, evaluate_fork, train_line
from fedrec.silo.guard import WITHHELD_KEY, item_tables
from fedrec.silo.guarded_review import GuardedCandidate, guard_candidate, guarded_eval, same_shapes
from fedrec.silo.round import evaluate_round, evaluate_splits
from fedrec.silo.state_dir import StateDir
from fedrec.training import Arrays, Tensors, TrainConfig

SERVED_FILE = "served.safetensors"
PREV_SERVED_FILE = "served.prev.safetensors"
"""The served model `store_served` last replaced: what the pointer names until it moves to the new one."""
GUARD_ROUNDS_FILE = "guard_rounds.json"
"""The training rounds whose own moves `guard_own.safetensors` holds (a re-sent message counts once)."""
GUARD_OWN_FILE = "guard_own.safetensors"
"""The region's own training moves of the item tables since its last review, summed (what a flagged row gets)."""
GUARD_BASE_FILE = "guard_base.safetensors"
"""Version 0 as the silo builds it: the guard's reference before the region serves anything."""
FORK_FILE = "fork.safetensors"
OWN_FILE = "own.safetensors"
FORK_PREFIX = "fork:"
Served = tuple[str, Arrays]
"""(version, global arrays) of a stored global version."""
Fetch = Callable[[str], Served | None]


def fork_label(base: str) -> str:
    """The serving pointer of a fork line started from global version `base`."""
    return FORK_PREFIX + base


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


class RegionServing:
    """One region's serving state on disk (`<state-dir>/serving/`)."""

    def __init__(self, state_dir: Path, policy: AdoptionPolicy) -> None:
        self.dir = StateDir(Path(state_dir)).serving
        self.policy = policy
        self.record = ServingRecord(self.dir)

    # --- the served model ----------------------------------------------------------------------------

    def served_arrays(self) -> tuple[str, Arrays] | None:
        """(version, global arrays) of the adopted version this region serves, if any."""
        served = self.served_model()
        return (served[0], served[1]) if served is not None else None

    def served_model(self) -> tuple[str, Arrays, Tensors | None] | None:
        """(label, global-side arrays, its own users or None) of what this region serves, if anything stored.

        Users are stored with a model the region made itself (`adopt: adapt`'s adapted model or own line); a
        global version is served with the silo's current users.
        """
        path = self.dir / SERVED_FILE
        if not path.exists():
            return None
        head, arrays = _header(path), load_file(str(path))
        users = {k: torch.as_tensor(v) for k, v in arrays.items() if is_local(k)} if head.get("users") else None
        return head["version"], {k: v for k, v in arrays.items() if not is_local(k) and k != WITHHELD_KEY}, users

    def withheld(self) -> np.ndarray | None:
        """The items the region's guard keeps out of the served model's rankings (bool per item; None: none)."""
        path = self.dir / SERVED_FILE
        if not path.exists():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            return f.get_tensor(WITHHELD_KEY).astype(bool) if WITHHELD_KEY in f.keys() else None  # noqa: SIM118

    def store_served(self, version: str, arrays: Arrays, users: Tensors | None = None,
                     withheld: np.ndarray | None = None) -> None:
        """Keep the served model's arrays (its own users, the guard's withheld items, if any), replaced atomically.

        The model it replaces is kept as `PREV_SERVED_FILE` first (a hard link, renamed into place): the pointer
        moves after this (`ServingRecord.record`), and until it does it names the model replaced here.
        """
        keep_previous(self.dir / SERVED_FILE, self.dir / PREV_SERVED_FILE)
        own = {k: v.detach().numpy() for k, v in (users or {}).items()}
        held = {WITHHELD_KEY: withheld.astype(np.uint8)} if withheld is not None and withheld.any() else {}
        atomic_save_arrays(self.dir / SERVED_FILE, {**arrays, **own, **held},
                           {"version": version, **({"users": "own"} if users is not None else {})})

    def guard_base(self) -> Arrays | None:
        """The guard's reference before anything is served (`keep_guard_base`)."""
        path = self.dir / GUARD_BASE_FILE
        return dict(load_file(str(path))) if path.exists() else None

    def note_own_move(self, server_round: int, received: Arrays, sent: Arrays, *, n_items: int) -> None:
        """Add how far the region's own training moved each item table this round (what a flagged row gets).

        A re-sent training message counts once; `take_own_moves` returns the sum and clears it.
        """
        if not self.policy.guarded:
            return
        tables = [t for t in item_tables(received, n_items) if t in sent and sent[t].shape == received[t].shape]
        path, own_path = self.dir / GUARD_ROUNDS_FILE, self.dir / GUARD_OWN_FILE
        rounds = json.loads(path.read_text()) if path.exists() else []
        if not tables or server_round in rounds:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        moved = {t: sent[t].astype(np.float64) - received[t].astype(np.float64) for t in tables}
        if own_path.exists():
            before = load_file(str(own_path))
            moved = {t: v + before[t] if t in before and before[t].shape == v.shape else v for t, v in moved.items()}
        atomic_save_arrays(own_path, moved, {})
        atomic_write_text(path, json.dumps([*rounds, server_round]))

    def take_own_moves(self) -> Arrays:
        """The region's own moves of the item tables since the last review (summed); clears them."""
        path, own_path = self.dir / GUARD_ROUNDS_FILE, self.dir / GUARD_OWN_FILE
        moved = dict(load_file(str(own_path))) if own_path.exists() else {}
        for p in (path, own_path):
            p.unlink(missing_ok=True)
        return moved

    def keep_guard_base(self, build: Callable[[], Arrays]) -> None:
        """Remember the guard's first reference once, before anything is served: `build()`'s arrays.

        The caller builds version 0 from the run's seed in the silo (the coordinator's round-1 arrays only for
        a model started from catalog features).
        """
        if self.policy.guarded and not (self.dir / GUARD_BASE_FILE).exists() and self.served_arrays() is None:
            atomic_save_arrays(self.dir / GUARD_BASE_FILE, dict(build()), {})

    # --- the region's own lines (fork, own) -----------------------------------------------------------

    def fork(self) -> Fork | None:
        """The region's fork line, if it has started one."""
        return self.line(FORK_FILE)

    def line(self, file: str) -> Fork | None:
        """A line of the region's own (`FORK_FILE` or `OWN_FILE`), if it has started one."""
        path = self.dir / file
        if not path.exists():
            return None
        head, tensors = _header(path), load_file(str(path))
        part = {p: {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(p + "/")} for p in "glo"}
        return Fork(base=head["base"], since_round=int(head["since_round"]), rounds=int(head["rounds"]),
                    global_arrays=part["g"], local={k: torch.as_tensor(v) for k, v in part["l"].items()},
                    optimizer=part["o"], last_trained=head.get("last_trained", ""),
                    trained_rounds=head.get("trained_rounds", ""))

    def save_line(self, file: str, fork: Fork) -> None:
        """Write a line's whole state in one file (replaced atomically; the one it replaces kept, `prev_file`)."""
        keep_previous(self.dir / file, self.dir / prev_file(file))
        arrays = {**{f"g/{k}": v for k, v in fork.global_arrays.items()},
                  **{f"l/{k}": v.detach().numpy() for k, v in fork.local.items()},
                  **{f"o/{k}": v for k, v in fork.optimizer.items()}}
        atomic_save_arrays(self.dir / file, arrays, {"base": fork.base, "since_round": str(fork.since_round),
                                                    "rounds": str(fork.rounds), "last_trained": fork.last_trained,
                                                    "trained_rounds": fork.trained_rounds})

    def fork_due(self, *, received_round: int, received_version: str) -> bool:
        """Whether the received global version is where this region's fork (re)starts."""
        p = self.policy
        if p.kind != "fork":
            return False
        current = self.fork()
        if p.version is not None:  # fork (or rebase) onto a named version once it arrives
            named = received_version.startswith(p.version)
            return named and (current is None or not current.base.startswith(p.version))
        return current is None and p.from_round is not None and received_round >= p.from_round


def prev_file(file: str) -> str:
    """Where `store_served` / `save_line` keep the file they replace (`served.prev.safetensors`, ...)."""
    stem, _, ext = file.partition(".")
    return f"{stem}.prev.{ext}"


def keep_previous(path: Path, previous: Path) -> None:
    """Atomically make `previous` the current content of `path` (if any) before `path` is replaced."""
    if not path.exists():
        return
    tmp = previous.with_name(f".{previous.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a file system without hard links: copy
        shutil.copyfile(path, tmp)
    os.replace(tmp, previous)


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
