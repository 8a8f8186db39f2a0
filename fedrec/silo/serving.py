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

The ClientApp's two hooks that read and write this state, `advance_fork` (training messages) and `review`
(evaluation messages), are in `fedrec.silo.review`; `adopt: adapt` has its own two (`fedrec.silo.adaptation`).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from fedrec.config import AdoptionPolicy
from fedrec.io import atomic_save_arrays, atomic_write_text
from fedrec.models.base import is_local
from fedrec.silo.adoption import ServingRecord
from fedrec.silo.fork_line import Fork
from fedrec.silo.guard import WITHHELD_KEY, item_tables
from fedrec.silo.state_dir import StateDir
from fedrec.training import Arrays, Tensors

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
