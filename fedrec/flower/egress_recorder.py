"""A Flower client mod that keeps a copy of every reply a silo sends, exactly as it leaves the ClientApp.

Why a mod: it sits at the boundary Flower itself ships messages across (after every handler, whatever the
message type), so what it records is what left — not what the code meant to send. Tests use it to inspect
a real simulation's egress; operators can attach it to audit a silo (`make_client_app(mods=[...])`).
One file per reply: `<node>-<n>.npz` holding the arrays and a JSON description of every other record.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message

Mod = Callable[[Message, Context, Callable[[Message, Context], Message]], Message]


@dataclass(frozen=True)
class RecordedReply:
    """One reply as it left a silo: message type, arrays by record, and every config/metric value."""

    node_id: int
    message_type: str
    has_error: bool
    arrays: dict[str, dict[str, np.ndarray]]
    records: dict[str, dict[str, Any]]


def egress_recorder(directory: Path) -> Mod:
    """A mod writing each outgoing reply under `directory`."""
    directory = Path(directory)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, context)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        records: dict[str, dict[str, Any]] = {}
        if not reply.has_error():
            for name, record in reply.content.items():
                if name in reply.content.array_records:
                    for key, arr in reply.content.array_records[name].items():
                        arrays[f"{name}/{key}"] = arr.numpy()
                else:
                    records[name] = {k: v for k, v in record.items()}
        meta = {"node_id": context.node_id, "message_type": msg.metadata.message_type,
                "has_error": reply.has_error(), "records": records}
        path = directory / f"{context.node_id}-{uuid.uuid4().hex}.npz"
        payload: dict[str, Any] = {"__meta__": np.array(json.dumps(meta, default=_bytes_as_hex)), **arrays}
        np.savez(path, **payload)
        return reply

    return mod


def _bytes_as_hex(value: Any) -> Any:
    """Bytes values (SecAgg+'s keys, shares, masked vectors) recorded as {"bytes-hex": ...}."""
    if isinstance(value, bytes):
        return {"bytes-hex": value.hex()}
    raise TypeError(f"cannot record a {type(value).__name__}")


def read_recorded(directory: Path) -> list[RecordedReply]:
    """Every reply recorded under `directory`."""
    out = []
    for path in sorted(Path(directory).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            arrays: dict[str, dict[str, np.ndarray]] = {}
            for key in data.files:
                if key != "__meta__":
                    record, name = key.split("/", 1)
                    arrays.setdefault(record, {})[name] = data[key]
        out.append(RecordedReply(node_id=int(meta["node_id"]), message_type=str(meta["message_type"]),
                                 has_error=bool(meta["has_error"]), arrays=arrays, records=meta["records"]))
    return out
