"""What a silo keeps between messages of one run: its users' parameters, its optimizer, its last reply.

With a state dir (every deployed SuperNode; every simulated silo of `run_experiment`) it lives on disk
under `<state-dir>/runs/<run key>/`, so a SuperNode that dies and is restarted continues where it stopped,
and a coordinator that restarts and asks for a round again gets the very same reply (byte for byte, no
second privacy spend) instead of a second release. Without a state dir it lives in Flower's in-memory
`context.state`, for the life of the node process. None of it is ever put in a reply except the cached
reply itself, which already left once. Beside the users and optimizer moments on disk, the silo records what
shaped them (`provenance.json`, `fedrec.silo.provenance`), so it can refuse to continue them later.

The run key is the run config's `run-name` when set (a resumable run), else Flower's run id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from safetensors.numpy import load_file

from fedrec.io import atomic_save_arrays, atomic_write_bytes, atomic_write_text
from fedrec.silo.provenance import UNKNOWN, Provenance
from fedrec.silo.state_dir import StateDir
from fedrec.training import Arrays, Tensors

LOCAL_STATE_KEY = "fedrec-user-state"
OPTIMIZER_STATE_KEY = "fedrec-optimizer-state"
PROVENANCE_FILE = "provenance.json"


class SiloState:
    """One silo's per-run state: on disk under `<state-dir>/runs/<run key>/`, else in `context.state`."""

    def __init__(self, context: Context, state_dir: Path | None, run_key: str, *, users_from: str = "") -> None:
        """Open the state of run `run_key` (`users_from`: an earlier run of this silo, see below).

        While the silo has no per-user parameters or optimizer moments of its own for this run, it starts from
        those of run `users_from` in its own state dir (the rebuilt line of a fast divestment continues its users,
        `fedrec.divestment`).
        """
        self.context, self.state_dir, self.run_key, self.users_from = context, state_dir, run_key, users_from
        self.dir = StateDir(Path(state_dir)).run(run_key) if state_dir is not None else None
        self.earlier = (StateDir(Path(state_dir)).run(users_from)
                        if state_dir is not None and users_from and users_from != run_key else None)
        self.memory_suffix = ""  # in the node's memory, a coalition line's arrays apart from the run's others
        self.provenance: Provenance | None = None  # what the next saved users and moments were shaped by (`keeping`)

    def for_run(self, run_key: str, *, users_from: str | None = None) -> SiloState:
        """The state of another key of this silo (a coalition line's, `run_lines.line_key`), same place and node.

        `users_from`: the earlier run key that key's users continue (default: this state's).
        """
        other = SiloState(self.context, self.state_dir, run_key,
                          users_from=self.users_from if users_from is None else users_from)
        other.memory_suffix = "" if run_key == self.run_key else "@" + run_key
        return other

    # --- arrays, on disk or in the node's memory -------------------------------------------------------

    def _read(self, key: str) -> Arrays | None:
        if self.dir is None:
            key += self.memory_suffix
            if key not in self.context.state.array_records:
                return None
            return {k: v.numpy() for k, v in self.context.state.array_records[key].items()}
        path = self.dir / f"{key}.safetensors"
        return load_file(str(path)) if path.exists() else None

    def _write(self, key: str, arrays: Arrays) -> None:
        if self.dir is None:
            self.context.state[key + self.memory_suffix] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                                                        for k, v in arrays.items()})
            return
        if self.provenance is not None:  # the record first: a crash before the arrays leaves it over-cautious
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / PROVENANCE_FILE, self.provenance.to_json())
        atomic_save_arrays(self.dir / f"{key}.safetensors", arrays)

    def _read_or_earlier(self, key: str) -> Arrays | None:
        own = self._read(key)
        if own is not None or self.earlier is None:
            return own
        path = self.earlier / f"{key}.safetensors"
        return load_file(str(path)) if path.exists() else None

    def continued(self) -> tuple[str, Provenance] | None:
        """The run key whose users and optimizer moments the next round starts from, and what shaped them.

        This key's own, else (while it keeps none) the `users_from` run's; None when it starts fresh (or keeps its
        state in the node's memory, which holds one Flower run's only). State without a record is `UNKNOWN`.
        """
        for key, where in ((self.run_key, self.dir), (self.users_from, self.earlier)):
            if where is not None and any((where / f"{k}.safetensors").exists()
                                         for k in (LOCAL_STATE_KEY, OPTIMIZER_STATE_KEY)):
                record = where / PROVENANCE_FILE
                return key, Provenance.from_json(record.read_text()) if record.exists() else UNKNOWN
        return None

    def keeping(self, provenance: Provenance) -> None:
        """What the users and optimizer moments saved next were shaped by (recorded with them, on disk)."""
        self.provenance = provenance

    def local(self) -> Tensors | None:
        """The silo's per-user parameters (None before its first round)."""
        arrays = self._read_or_earlier(LOCAL_STATE_KEY)
        return {k: torch.as_tensor(v) for k, v in arrays.items()} if arrays is not None else None

    def save_local(self, local: Tensors) -> None:
        """Keep per-user parameters in the silo (never in a message)."""
        self._write(LOCAL_STATE_KEY, {k: v.detach().numpy() for k, v in local.items()})

    def optimizer(self) -> Arrays | None:
        """The silo's optimizer moments (None before its first round)."""
        return self._read_or_earlier(OPTIMIZER_STATE_KEY)

    def save_optimizer(self, state: Arrays) -> None:
        """Keep the optimizer moments (derived from private data) in the silo."""
        self._write(OPTIMIZER_STATE_KEY, state)

    # --- the last training reply -----------------------------------------------------------------------

    def cached_reply(self, server_round: int, version: str) -> tuple[str, RecordDict] | None:
        """The reply already sent for this round and global version, if any, and how it left.

        A repeated round is answered with these very bytes, and only the same way they left (see
        `secure_aggregation_client.aggregation_of`).
        """
        if self.dir is None:
            return None
        meta_path, body_path = self.dir / "last_reply.json", self.dir / "last_reply.bin"
        if not (meta_path.exists() and body_path.exists()):
            return None
        meta = json.loads(meta_path.read_text())
        if (meta.get("round"), meta.get("version")) != (server_round, version):
            return None
        content = recorddict_from_proto(ProtoRecordDict.FromString(body_path.read_bytes()))
        return str(meta.get("aggregation", "plain")), content

    def last_round(self) -> int | None:
        """The last round this silo answered with an update in this run (None before its first)."""
        if self.dir is None or not (self.dir / "last_reply.json").exists():
            return None
        return int(json.loads((self.dir / "last_reply.json").read_text()).get("round", 0))

    def cache_reply(self, server_round: int, version: str, content: RecordDict, aggregation: str = "plain") -> None:
        """Remember the reply about to be sent and how (the body first, then the key naming it)."""
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "last_reply.json").unlink(missing_ok=True)
        atomic_write_bytes(self.dir / "last_reply.bin", recorddict_to_proto(content).SerializeToString())
        atomic_write_text(self.dir / "last_reply.json", json.dumps({"round": server_round, "version": version,
                                                                    "aggregation": aggregation}))
