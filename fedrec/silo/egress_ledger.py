"""A silo's egress ledger: an append-only, hash-chained record of everything that ever left the silo.

Each reply gets one line in `<state-dir>/egress_ledger.jsonl`, written (and fsynced) before Flower ships the
reply: the round, the message kind, its size and SHA-256 over Flower's own wire serialization of the
content (so the hash is of what travelled, not of what the code meant to send), the DP parameters of the
release and ε after it, and for a training reply the version it was asked to train on and the round's members the
coordinator declared (`round-members`: what left, to which declared coalition; `fedrec audit partners` compares
them with what the registry records). Every line carries the hash of the previous one, so changing, dropping or
reordering any entry breaks the chain, and `verify` also recomputes the silo's ε from the recorded
releases and checks it against what each release reported.

It lives on the silo's side next to its privacy ledger; the coordinator never sees it. `fedrec audit
verify PATH` checks one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.common.serde_utils import error_to_proto

from fedrec.messages import read_coalition, read_decline, read_members, read_privacy, read_version
from fedrec.privacy.accountant import GaussianSteps, epsilon_of
from fedrec.silo.state_dir import StateDir

EGRESS_LEDGER_FILE = StateDir.EGRESS_LEDGER
GENESIS = "0" * 64


def wire_bytes(content: RecordDict) -> bytes:
    """The reply content exactly as Flower serializes it for the wire."""
    return bytes(recorddict_to_proto(content).SerializeToString())


def _entry_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class EgressEntry:
    """One reply that left the silo. `hash` covers every other field, including `prev` (the chain)."""

    seq: int
    prev: str
    run_id: str
    server_round: int
    kind: str
    region: str
    n_bytes: int
    sha256: str
    declined: bool
    dp: dict[str, float] = field(default_factory=dict)
    recorded_at: float = 0.0
    hash: str = ""
    version: str | None = None
    """Training replies: the `model-version` the message asked the silo to train on."""
    members: list[str] | None = None
    """Training replies: the round's members as the coordinator declared them (None: it declared none)."""
    coalition: str | None = None
    """Training replies of a run with coalition lines: the line the message named (None: a run of one line)."""

    def body(self) -> dict[str, Any]:
        """Every field but `hash` (and the optional ones left unset): what the hash is computed over."""
        out = asdict(self)
        out.pop("hash")
        for key in OPTIONAL_FIELDS:  # absent from entries written before they existed: those still verify
            if out[key] is None:
                out.pop(key)
        return out

    def as_json(self) -> dict[str, Any]:
        """The line as written: the body and its hash."""
        return {**self.body(), "hash": self.hash}


OPTIONAL_FIELDS = ("version", "members", "coalition")


class EgressLedger:
    """Append-only JSON-lines ledger of one silo's replies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def entries(self) -> list[EgressEntry]:
        """Every entry, in order (raises ValueError naming the line on a line that is not an entry)."""
        if not self.path.exists():
            return []
        out = []
        for no, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(EgressEntry(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{self.path}:{no}: not an egress entry ({exc})") from exc
        return out

    def append(self, *, run_id: str, server_round: int, kind: str, region: str, content: RecordDict,
               version: str | None = None, members: list[str] | None = None, coalition: str | None = None
               ) -> EgressEntry:
        """Record a reply before it is sent (fsynced); returns the entry."""
        return self._append(run_id=run_id, server_round=server_round, kind=kind, region=region,
                            payload=wire_bytes(content), declined=read_decline(content) is not None,
                            dp=read_privacy(content) or {}, version=version, members=members, coalition=coalition)

    def append_error(self, *, run_id: str, server_round: int, kind: str, error: Error) -> EgressEntry:
        """Record an error reply before it is sent: the error record exactly as it travels."""
        payload = bytes(error_to_proto(error).SerializeToString())
        return self._append(run_id=run_id, server_round=server_round, kind=kind, region="", payload=payload,
                            declined=True, dp={})

    def _append(self, *, run_id: str, server_round: int, kind: str, region: str, payload: bytes, declined: bool,
                dp: dict[str, float], version: str | None = None, members: list[str] | None = None,
                coalition: str | None = None) -> EgressEntry:
        last = self.entries()[-1:] or None
        entry = EgressEntry(seq=last[0].seq + 1 if last else 0, prev=last[0].hash if last else GENESIS,
                            run_id=run_id, server_round=server_round, kind=kind, region=region, n_bytes=len(payload),
                            sha256=hashlib.sha256(payload).hexdigest(), declined=declined, dp=dp,
                            recorded_at=time.time(), version=version, members=members, coalition=coalition)
        entry = EgressEntry(**{**entry.body(), "hash": _entry_hash(entry.body())})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry.as_json(), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return entry


@dataclass(frozen=True)
class AuditReport:
    """What `verify` found: problems (empty = the ledger holds), and a summary."""

    problems: list[str]
    entries: int
    releases: int
    epsilon_reported: float
    epsilon_recomputed: float

    @property
    def ok(self) -> bool:
        """True when the chain and the privacy totals check out."""
        return not self.problems


def verify(path: Path, *, accountant: str = "pld", tolerance: float = 1e-6) -> AuditReport:
    """Check the hash chain and that the ε each DP release reported is what its recorded releases add up to.

    `accountant` must be the one the silo's runs used (`privacy.accountant`, default pld).
    """
    problems: list[str] = []
    try:
        entries = EgressLedger(path).entries()
    except ValueError as exc:
        return AuditReport([str(exc)], 0, 0, 0.0, 0.0)
    prev = GENESIS
    for i, e in enumerate(entries):
        if e.seq != i:
            problems.append(f"entry {i}: sequence number {e.seq} (expected {i}: an entry was removed or moved)")
        if e.prev != prev:
            problems.append(f"entry {i}: does not chain to the entry before it")
        if _entry_hash(e.body()) != e.hash:
            problems.append(f"entry {i}: its content does not match its hash (edited after it was written)")
        prev = e.hash
    releases: list[EgressEntry] = []
    for e in entries:  # a re-sent reply (the same bytes, to a restarted coordinator) adds no step
        if e.dp and not e.declined and e.kind == "train" and not (
                releases and e.dp.get("steps") == releases[-1].dp.get("steps")
                and e.dp.get("epsilon") == releases[-1].dp.get("epsilon")):
            releases.append(e)
    events: list[GaussianSteps] = []
    reported = recomputed = 0.0
    for e in releases:
        try:
            events.append(GaussianSteps(e.dp["sample_rate"], e.dp["noise_multiplier"], int(e.dp["release_steps"])))
        except (KeyError, ValueError) as exc:
            problems.append(f"entry {e.seq}: its DP record is not a valid release ({exc})")
        reported = e.dp.get("epsilon", reported)
    if releases:
        delta = releases[-1].dp["delta"]
        recomputed = epsilon_of(events, delta=delta, kind=accountant)
        if abs(recomputed - reported) > max(tolerance, 1e-3 * reported):
            problems.append(f"the releases add up to ε={recomputed:.4f} at δ={delta:g}, but the last one reported "
                            f"ε={reported:.4f}")
    return AuditReport(problems, len(entries), len(releases), reported, recomputed)


def egress_ledger_mod(state_dir_of: Callable[[Context], Path | None]) -> Callable[..., Message]:
    """A Flower client mod appending every outgoing reply to the silo's egress ledger before it is sent.

    Error replies are recorded too (kind `<type>:error`, the hash and size of the error record as it
    travels): what a silo says when it fails has left it like anything else.
    """

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        state_dir = state_dir_of(context)
        if state_dir is None:
            return reply
        ledger = EgressLedger(StateDir(state_dir).egress_ledger)
        if reply.has_error():
            ledger.append_error(run_id=str(context.run_id), server_round=_round_of(msg),
                                kind=f"{msg.metadata.message_type}:error", error=reply.error)
            return reply
        if "meta" not in reply.content.config_records:  # a SecAgg+ protocol message (keys, shares)
            ledger.append(run_id=str(context.run_id), server_round=int(msg.metadata.group_id or 0),
                          kind=f"{msg.metadata.message_type}:secagg", region="", content=reply.content)
            return reply
        meta = reply.content.config_records["meta"]
        train = msg.metadata.message_type == MessageType.TRAIN and msg.has_content()
        try:
            ledger.append(run_id=str(context.run_id), server_round=int(str(meta["server-round"])),
                          kind=msg.metadata.message_type, region=str(meta["region"]), content=reply.content,
                          version=read_version(msg.content) if train else None,
                          members=read_members(msg.content) if train else None,
                          coalition=(read_coalition(msg.content) or None) if train else None)
        except OSError as exc:
            if msg.metadata.message_type != MessageType.QUERY:
                raise  # nothing leaves unrecorded
            # a preflight answer carries only configuration facts: say the ledger cannot be written
            meta["preflight-error"] = f"egress ledger {ledger.path} cannot be written ({exc})"
        return reply

    return mod


def _round_of(msg: Message) -> int:
    """The server round an incoming message names (its config record, else its group id; 0 if neither)."""
    config = msg.content.config_records.get("config") if msg.has_content() else None
    value = config.get("server-round") if config is not None else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    group = str(msg.metadata.group_id or "")
    return int(group) if group.isdigit() else 0
