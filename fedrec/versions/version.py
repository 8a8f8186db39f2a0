"""A model version: an immutable global model named by the SHA-256 of its content and provenance.

The id hashes the weights and everything that says how they were made (parent, round, contributors and
their ε, strategy, config hash, model spec), never the wall clock or the metrics: the same model described
twice gets the same id, and a changed byte is caught. `fedrec.versions.store` keeps versions on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedrec.models.base import ModelSpec

FORMAT = "fedrec-model-version/1"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
SHORT = 16
FULL_ID = re.compile(r"[0-9a-f]{64}")
_ARRAY_KINDS = "biuf"  # bool, ints, floats: what safetensors stores and a model's parameters are


@dataclass(frozen=True)
class ModelVersion:
    """One immutable global model as its manifest describes it (the weights stay on disk until `load`)."""

    id: str
    parent: str | None
    round: int
    contributors: tuple[str, ...]
    epsilon: dict[str, float]
    strategy: str
    config_hash: str
    metrics: dict[str, Any]
    created_at: str
    spec: dict[str, Any]
    weights_sha256: str
    influence: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Who moved what in the round that made it (`fedrec.coordinator.robust`: the items moved most, each
    contributor's share; rows clipped per contributor), when the coordinator saw each update. Not in the id."""
    divestment: dict[str, Any] = dataclasses.field(default_factory=dict)
    """For a version of a divested line (`fedrec.divestment`): the regions removed, the method (exact | fast),
    the version the line was rebuilt from and the line it replaces. In the id when present."""
    coalition: str = ""
    """The coalition line the version belongs to (`federation.coalitions`; "" for a single-line run). In the id when
    present, so each line's version 0 is its own."""

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def short_id(self) -> str:
        """The first 16 hex digits: what people type and tables show."""
        return self.id[:SHORT]

    def model_spec(self) -> ModelSpec:
        """The spec as a `ModelSpec`, enough to rebuild the model without the run that made it."""
        from fedrec.models.base import ModelSpec

        return ModelSpec(**self.spec)

    def identity(self) -> dict[str, Any]:
        """The fields the id hashes: what the model is and how it was made (no time, no metrics)."""
        return {"parent": self.parent, "round": self.round, "contributors": list(self.contributors),
                "epsilon": self.epsilon, "strategy": self.strategy, "config_hash": self.config_hash,
                "spec": self.spec, "weights_sha256": self.weights_sha256,
                **({"divestment": self.divestment} if self.divestment else {}),
                **({"coalition": self.coalition} if self.coalition else {})}

    def to_dict(self) -> dict[str, Any]:
        """The manifest (JSON-ready), also stored in the weights file's header."""
        return {"format": FORMAT, "id": self.id, **self.identity(), "metrics": self.metrics,
                "created_at": self.created_at, **({"influence": self.influence} if self.influence else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelVersion:
        """Parse a manifest; a missing or malformed field raises (KeyError/TypeError/ValueError)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, expected {FORMAT!r}")
        parent = d["parent"]
        if parent is not None and not (isinstance(parent, str) and FULL_ID.fullmatch(parent)):
            raise ValueError(f"parent {parent!r} is not a version id")
        if not (isinstance(d["id"], str) and FULL_ID.fullmatch(d["id"])):
            raise ValueError(f"id {d['id']!r} is not a version id")
        return cls(id=d["id"], parent=parent, round=int(d["round"]),
                   contributors=tuple(str(c) for c in d["contributors"]),
                   epsilon={str(k): float(v) for k, v in dict(d["epsilon"]).items()},
                   strategy=str(d["strategy"]), config_hash=str(d["config_hash"]), metrics=dict(d["metrics"]),
                   created_at=str(d["created_at"]), spec=dict(d["spec"]), weights_sha256=str(d["weights_sha256"]),
                   influence=dict(d.get("influence") or {}), divestment=dict(d.get("divestment") or {}),
                   coalition=str(d.get("coalition") or ""))


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy scalars/arrays, so metrics and spec arguments from numpy code are accepted."""
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def version_id(identity: Mapping[str, Any]) -> str:
    """SHA-256 of a version's identity fields (see `ModelVersion.identity`), as 64 hex digits."""
    return hashlib.sha256(FORMAT.encode() + b"\n" + _canonical_json(dict(identity))).hexdigest()


def canonical_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays in the one layout that is hashed and stored: sorted names, C order, little-endian."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        if a.dtype.kind not in _ARRAY_KINDS:
            raise ValueError(f"array {name!r} has dtype {a.dtype}; a model version stores bool, int or float arrays")
        out[name] = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)  # (keeps 0-d arrays 0-d)
    return out


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over canonical arrays: each tensor's name, dtype and shape, then its bytes."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(_canonical_json({"name": name, "dtype": a.dtype.str, "shape": list(a.shape)}) + b"\n")
        h.update(a.tobytes())
    return h.hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def describe_version(arrays: Mapping[str, np.ndarray], *, spec: ModelSpec, parent: str | None, round: int,
                     contributors: Iterable[str] = (), epsilon: Mapping[str, float] | None = None,
                     strategy: str = "", config_hash: str = "", metrics: Mapping[str, Any] | None = None,
                     influence: Mapping[str, Any] | None = None, divestment: Mapping[str, Any] | None = None,
                     coalition: str = "") -> tuple[ModelVersion, dict[str, np.ndarray]]:
    """The version (with its content id) these weights would be, and their canonical arrays; nothing stored.

    The id depends on what the model is and how it was made, never on metrics or time, so a coordinator can
    name a version to the silos before their evaluation fills its metrics.
    """
    from fedrec.models.base import is_local

    if not arrays:
        raise ValueError("a model version needs at least one array")
    if not all(isinstance(name, str) and name for name in arrays):
        raise ValueError(f"array names must be non-empty strings, got {sorted(map(repr, arrays))}")
    local = sorted(name for name in arrays if is_local(name))
    if local:
        raise ValueError(f"refusing to store local (per-user) parameters in a global model version: {local}")
    if isinstance(round, bool) or not isinstance(round, int) or round < 0:
        raise ValueError(f"round must be a non-negative int, got {round!r}")
    if isinstance(contributors, str):
        raise ValueError(f"contributors must be a collection of silo names, got the string {contributors!r}")
    eps = {str(k): float(v) for k, v in (epsilon or {}).items()}
    bad_eps = {k: v for k, v in eps.items() if not (math.isfinite(v) and v >= 0)}
    if bad_eps:
        raise ValueError(f"epsilon values must be finite and >= 0, got {bad_eps}")
    if parent is not None and not (isinstance(parent, str) and FULL_ID.fullmatch(parent)):
        raise ValueError(f"parent must be a full version id (64 hex digits) or None, got {parent!r}")
    canon = canonical_arrays(arrays)
    version = ModelVersion(
        id="", parent=parent, round=round, contributors=tuple(sorted({str(c) for c in contributors})),
        epsilon=dict(sorted(eps.items())), strategy=str(strategy), config_hash=str(config_hash),
        metrics=json.loads(json.dumps(dict(metrics or {}), default=_plain)), created_at=_now(),
        spec=json.loads(json.dumps(spec.to_dict(), default=_plain)), weights_sha256=weights_digest(canon),
        influence=json.loads(json.dumps(dict(influence or {}), default=_plain)),
        divestment=json.loads(json.dumps(dict(divestment or {}), default=_plain)), coalition=str(coalition))
    try:
        vid = version_id(version.identity())
    except ValueError as exc:
        raise ValueError(f"the model spec must be JSON-serializable without NaN/inf: {exc}") from exc
    return dataclasses.replace(version, id=vid), canon
