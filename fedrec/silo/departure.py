"""A region leaves the federation without a gap: its own line, started and trained in its silo, then switched to.

When a region is ordered out (divest-or-ban), nobody sends it training messages any more, so its fork cannot
advance the way a federated fork does (`fedrec.silo.review.advance_fork`, one local round per training
message). `depart` does it inside the silo, with nothing leaving it:

1. it takes what the region serves now (its serving pointer, resolved by `fedrec.silo.served_now`): a global
   version's arrays (`served.safetensors`) with the silo's current per-user parameters (the last run it took
   part in), an adapted model or its own line with their own users, or its fork line, which it continues;
2. it trains that line `rounds` local rounds on the region's own training data (`train_line`: the fork's own
   training step, optimizer moments carried over);
3. only then it stores the line (`fork.safetensors`) and moves the pointer to it (`fork:BASE`), recording the
   decision in the region's adoption log with the reason "left the federation" and, as evidence, the validation
   metric of what it served before and of the new line (each with its users re-fitted, as every served model).

Until step 3 the old pointer keeps naming the old model, which stays stored: the region serves something at
every moment (measured by `fedrec.divestment.transition`). The guard's withheld items of an adopted version are
not carried over: the line is trained on the region's data alone from here on.

Leaving is durable: before step 1 it writes `serving/left.json`, and from then on the silo answers every training
message with a decline and every evaluation message with nothing, without reviewing it (`fedrec.silo.handlers`):
a coordinator that keeps sending to the region's node (its SuperNode still running) can neither move what it
serves back to a federation version nor make it release. Rejoining is the jurisdiction's act: its operator
removes that file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.numpy import load_file

from fedrec.config import AdoptionPolicy
from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.io import atomic_write_text
from fedrec.models import ModelSpec
from fedrec.models.base import is_local
from fedrec.silo.adaptation import ADAPTED_PREFIX, OWN_PREFIX
from fedrec.silo.adoption import Decision
from fedrec.silo.fork_line import Fork, evaluate_fork, train_line
from fedrec.silo.guard import WITHHELD_KEY
from fedrec.silo.round import InvalidGlobalModel, check_received, silo_seed
from fedrec.silo.served_now import served_now
from fedrec.silo.serving import FORK_FILE, FORK_PREFIX, OWN_FILE, RegionServing, fork_label
from fedrec.silo.state import LOCAL_STATE_KEY
from fedrec.silo.state_dir import StateDir
from fedrec.training import Tensors, TrainConfig

LEFT_FILE = "left.json"
"""In the serving dir: the region left the federation (`depart`); its silo trains and reviews nothing more."""
LEFT_REASON = "left the federation"
LEFT_RUN_ID = "left"
"""The `run_id` of a departure's decision (no federated run made it)."""
METRIC = "ndcg@20"


@dataclass(frozen=True)
class Departure:
    """What `depart` did: what the region served before, what it serves now, and the validation evidence."""

    served_before: str
    served_after: str
    base: str
    """The global version the region's own line descends from."""
    rounds: int
    """Local rounds trained by this departure."""
    line_rounds: int
    """The line's local rounds in all (a continued fork counts its earlier ones)."""
    users: str
    """Where the line's users came from: `silo` (its current users), `own` (the served model's), `line` (a
    continued line's) or `fresh` (none kept: fitted from scratch by the local rounds)."""
    valid_before: float
    valid_after: float
    metric: str = METRIC

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def depart(state_dir: Path, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, rounds: int, seed: int
           ) -> Departure:
    """Give the region of `state_dir` its own line from what it serves now, train it, then switch to it.

    Clear `ConfigError`s when there is nothing to leave with (no serving pointer yet, a pointer whose model is
    not stored) or `rounds` < 0. Nothing is sent anywhere; the egress ledger is untouched.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"rounds={rounds!r}: give the number of local rounds to train the region's own line (>= 0)")
    serving = RegionServing(Path(state_dir), AdoptionPolicy())
    now = served_now(Path(state_dir))
    if now.label is None:
        raise ConfigError(f"the silo at {state_dir} serves nothing yet ({now.problem}): a region leaves with the "
                          "version it serves, so it must have reviewed at least one version first")
    if not now.ok:
        raise ConfigError(f"the silo at {state_dir} cannot load what it serves: {now.problem}; restore its serving "
                          f"dir ({serving.dir}) from a backup, or pin a version in a federated run first")
    serving.dir.mkdir(parents=True, exist_ok=True)  # from here the silo answers the federation with nothing
    atomic_write_text(serving.dir / LEFT_FILE, json.dumps({"left": True, "from": now.label}))
    line, users = _start(serving, now.label, now.source, state_dir)
    try:
        check_received(line.global_arrays, spec, n_items=silo.n_items)
    except InvalidGlobalModel as exc:
        raise ConfigError(f"what the silo at {state_dir} serves ({now.label[:40]}) is not a {spec.name} model over "
                          f"this data's {silo.n_items} items ({exc}): give the settings of the run it took part in "
                          "and its own data") from exc
    try:
        before = evaluate_fork(line, silo, spec, cfg, seed=seed, split="valid").means()[METRIC]
    except RuntimeError as exc:  # torch: the kept users' tables do not fit this data's users
        raise ConfigError(f"the silo at {state_dir} kept per-user parameters that do not fit this data's "
                          f"{silo.n_users} users: give the region's own data") from exc
    for _ in range(rounds):
        line = train_line(line, silo, spec, cfg, seed=silo_seed(seed, "left", line.rounds + 1),
                          key=f"{LEFT_RUN_ID}/{line.rounds + 1}")
    after = evaluate_fork(line, silo, spec, cfg, seed=seed, split="valid").means()[METRIC]
    serving.save_line(FORK_FILE, line)  # the line first, then the pointer: never a pointer to a missing model
    label = fork_label(line.base)
    how = (f"continues its fork of {line.base[:12]}" if now.label.startswith(FORK_PREFIX)
           else f"serves its own line from {now.label[:40]}")
    serving.record.record(Decision(
        round=line.since_round, candidate=line.base, served_before=now.label, served_after=label, adopted=False,
        reason=f"{LEFT_REASON}: {how}, trained {rounds} local round(s) on its own data ({line.rounds} in all); "
               f"{METRIC} on validation users {before:.4f} before, {after:.4f} after",
        evidence={f"valid_{METRIC}_before": before, f"valid_{METRIC}_after": after, "rounds": float(rounds)},
        run_id=LEFT_RUN_ID))
    return Departure(served_before=now.label, served_after=label, base=line.base, rounds=rounds,
                     line_rounds=line.rounds, users=users, valid_before=before, valid_after=after)


def has_left(state_dir: Path | None) -> bool:
    """Whether the region of `state_dir` left the federation (`depart`): it then trains and reviews nothing."""
    return state_dir is not None and (StateDir(Path(state_dir)).serving / LEFT_FILE).exists()


def _start(serving: RegionServing, label: str, source: str, state_dir: Path) -> tuple[Fork, str]:
    """The line to continue: the served fork or own line as it is, else the served model with its users."""
    last = serving.record.decisions()
    since = last[-1].round if last else 0
    if label.startswith(FORK_PREFIX) or label.startswith(OWN_PREFIX):
        line = serving.line(FORK_FILE if label.startswith(FORK_PREFIX) else OWN_FILE)
        if line is None:  # served_now found it: only a concurrent writer could have removed it since
            raise ConfigError(f"the silo at {state_dir} serves {label!r} but its line is gone")
        return line, "line"
    path = serving.dir / source  # served.safetensors, or the previous one the pointer still names
    arrays = load_file(str(path))
    own = {k: torch.as_tensor(v) for k, v in arrays.items() if is_local(k)}
    global_arrays = {k: v for k, v in arrays.items() if not is_local(k) and k != WITHHELD_KEY}
    users: Tensors | None = own or None
    where = "own"
    if users is None:
        users, where = _current_users(state_dir, last[-1].run_id if last else ""), "silo"
    base = label.rsplit(":", 1)[-1] if label.startswith(ADAPTED_PREFIX) else label
    return Fork(base=base, since_round=since, rounds=0, global_arrays=global_arrays, local=dict(users or {}),
                optimizer={}), where if users else "fresh"


def _current_users(state_dir: Path, run_key: str) -> Tensors | None:
    """The silo's per-user parameters of the last run it reviewed a version in (None if it kept none)."""
    path = StateDir(Path(state_dir)).run(run_key) / f"{LOCAL_STATE_KEY}.safetensors" if run_key else None
    if path is None or not path.exists():
        return None
    return {k: torch.as_tensor(v) for k, v in load_file(str(path)).items()}
