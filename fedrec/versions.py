"""A registry of global models: every aggregated model is an immutable, content-addressed version.

A version is a directory `versions/<id>/` holding `weights.safetensors` (global parameters only, with the
model spec in the header, so the file alone loads with `fedrec.model_io.load_global_model`) and
`manifest.json` (provenance: parent, round, contributing silos and the ε each has spent, strategy, config
hash, metrics). The id is a SHA-256 over the weights and everything that says how they were made, but not
the wall clock or the metrics: the same model added twice gets the same id, and a changed byte is caught.

Writes are atomic: a version is written and fsynced under `tmp/`, then its directory is renamed into
`versions/` in one step (POSIX). Readers only look in `versions/`, so a crash leaves at most a stray `tmp/`
entry, which the next `ModelRegistry(root)` removes when no writer holds the registry's lock.

`fedrec.models.base` (and so torch, ~1.5 s to import) is only imported by `add` and
`ModelVersion.model_spec`, so the `fedrec models` commands stay quick.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save

from fedrec.errors import ConfigError, DataError, FedrecError
from fedrec.io import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    from fedrec.models.base import ModelSpec

FORMAT = "fedrec-model-version/1"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
LOCK_FILE = ".lock"
SHORT = 16
ENV_ROOT = "FEDREC_REGISTRY"
DEFAULT_ROOT = Path("fedrec-registry")
_FULL_ID = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{1,64}")
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
                "spec": self.spec, "weights_sha256": self.weights_sha256}

    def to_dict(self) -> dict[str, Any]:
        """The manifest (JSON-ready), also stored in the weights file's header."""
        return {"format": FORMAT, "id": self.id, **self.identity(), "metrics": self.metrics,
                "created_at": self.created_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelVersion:
        """Parse a manifest; a missing or malformed field raises (KeyError/TypeError/ValueError)."""
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, expected {FORMAT!r}")
        parent = d["parent"]
        if parent is not None and not (isinstance(parent, str) and _FULL_ID.fullmatch(parent)):
            raise ValueError(f"parent {parent!r} is not a version id")
        if not (isinstance(d["id"], str) and _FULL_ID.fullmatch(d["id"])):
            raise ValueError(f"id {d['id']!r} is not a version id")
        return cls(id=d["id"], parent=parent, round=int(d["round"]),
                   contributors=tuple(str(c) for c in d["contributors"]),
                   epsilon={str(k): float(v) for k, v in dict(d["epsilon"]).items()},
                   strategy=str(d["strategy"]), config_hash=str(d["config_hash"]), metrics=dict(d["metrics"]),
                   created_at=str(d["created_at"]), spec=dict(d["spec"]), weights_sha256=str(d["weights_sha256"]))


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


def default_registry_root(env: Mapping[str, str] | None = None) -> Path:
    """`$FEDREC_REGISTRY` when set, else `./fedrec-registry`."""
    value = (os.environ if env is None else env).get(ENV_ROOT, "")
    return Path(value) if value else DEFAULT_ROOT


def _write_durably(path: Path, data: bytes, *, exclusive: bool = True) -> None:
    with open(path, "xb" if exclusive else "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def describe_version(arrays: Mapping[str, np.ndarray], *, spec: ModelSpec, parent: str | None, round: int,
                     contributors: Iterable[str] = (), epsilon: Mapping[str, float] | None = None,
                     strategy: str = "", config_hash: str = "", metrics: Mapping[str, Any] | None = None
                     ) -> tuple[ModelVersion, dict[str, np.ndarray]]:
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
    if parent is not None and not (isinstance(parent, str) and _FULL_ID.fullmatch(parent)):
        raise ValueError(f"parent must be a full version id (64 hex digits) or None, got {parent!r}")
    canon = canonical_arrays(arrays)
    version = ModelVersion(
        id="", parent=parent, round=round, contributors=tuple(sorted({str(c) for c in contributors})),
        epsilon=dict(sorted(eps.items())), strategy=str(strategy), config_hash=str(config_hash),
        metrics=json.loads(json.dumps(dict(metrics or {}), default=_plain)), created_at=_now(),
        spec=json.loads(json.dumps(spec.to_dict(), default=_plain)), weights_sha256=weights_digest(canon))
    try:
        vid = version_id(version.identity())
    except ValueError as exc:
        raise ValueError(f"the model spec must be JSON-serializable without NaN/inf: {exc}") from exc
    return dataclasses.replace(version, id=vid), canon


class ModelRegistry:
    """A directory of model versions: add (atomic, idempotent), find by id prefix, load (verified), compare, export.

    Writers serialize on an exclusive `flock` of `root/.lock`; readers take no lock, since they only ever see
    fully written versions. `create=False` opens an existing registry only (what the CLI wants: a mistyped
    `--root` is an error, not a new empty registry).
    """

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.tmp_dir = self.root / "tmp"
        if create:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(exist_ok=True)
        elif not self.versions_dir.is_dir():
            raise ConfigError(f"no model registry at {self.root} (it has no versions/ directory); "
                              f"pass --root or set {ENV_ROOT}")
        self._clean_stale_tmp()

    # --- writing -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writer_lock(self, *, blocking: bool) -> Iterator[bool]:
        """Hold the registry's writer lock; yields False when `blocking=False` and another writer has it.

        The kernel drops a flock when its holder dies, so a crashed writer never leaves the registry locked.
        """
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                acquired = True
            except BlockingIOError:
                acquired = False
            yield acquired
        finally:
            os.close(fd)

    def _remove_tmp_entries(self) -> None:
        for entry in self.tmp_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _clean_stale_tmp(self) -> None:
        """Remove what crashed writers left in tmp/; a live writer (holding the lock) is left alone."""
        if not self.tmp_dir.is_dir() or not any(self.tmp_dir.iterdir()):
            return
        if not os.access(self.root, os.W_OK):  # a read-only view of someone else's registry: reading still works
            return
        with self._writer_lock(blocking=False) as acquired:
            if acquired:
                self._remove_tmp_entries()

    def add(self, arrays: Mapping[str, np.ndarray], *, spec: ModelSpec, parent: str | None, round: int,
            contributors: Iterable[str] = (), epsilon: Mapping[str, float] | None = None, strategy: str = "",
            config_hash: str = "", metrics: Mapping[str, Any] | None = None) -> ModelVersion:
        """Store a global model as a new version and return it (the existing one if this content is stored).

        Adding the same content again returns the existing version unchanged: its metrics and creation time
        are the first add's. `epsilon` maps a silo to the ε it has spent (empty without DP). Refuses per-user
        (`user.`) arrays, since a global model must never hold them, and a parent that is not in the registry.
        """
        version, canon = describe_version(arrays, spec=spec, parent=parent, round=round, contributors=contributors,
                                          epsilon=epsilon, strategy=strategy, config_hash=config_hash,
                                          metrics=metrics)
        if parent is not None and not (self.versions_dir / parent).is_dir():
            raise ConfigError(f"parent version {parent[:SHORT]} is not in the registry at {self.root}")
        # the header `fedrec.model_io` writes, so the stored file is itself an exportable global model
        payload = save(canon, metadata={"fedrec-model": json.dumps(version.spec),
                                        "fedrec-meta": json.dumps(version.to_dict())})
        manifest = (json.dumps(version.to_dict(), indent=1) + "\n").encode()
        vid = version.id
        final = self.versions_dir / vid
        with self._writer_lock(blocking=True):
            if final.exists():
                return self._read(vid)
            self.tmp_dir.mkdir(exist_ok=True)
            self._remove_tmp_entries()  # with the lock held, anything here is a dead writer's
            tmp = Path(tempfile.mkdtemp(prefix=f"{vid[:SHORT]}-", dir=self.tmp_dir))
            try:
                _write_durably(tmp / WEIGHTS, payload)
                _write_durably(tmp / MANIFEST, manifest)
                fsync_dir(tmp)
                os.rename(tmp, final)  # the commit point: the version appears whole or not at all
                fsync_dir(self.versions_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return version

    # --- reading -------------------------------------------------------------------------------------------

    def _ids(self) -> list[str]:
        """Ids of the stored versions; anything else in versions/ is reported, never skipped."""
        ids = []
        for entry in sorted(self.versions_dir.iterdir()):
            if entry.name.startswith("."):  # .DS_Store, NFS .nfsXXXX files
                continue
            if not (entry.is_dir() and _FULL_ID.fullmatch(entry.name)):
                raise DataError(f"corrupt model registry: unexpected entry {entry} in versions/ "
                                "(only version directories named by their 64-hex id belong there; move it away)")
            ids.append(entry.name)
        return ids

    def _read(self, vid: str) -> ModelVersion:
        d = self.versions_dir / vid
        missing = [name for name in (WEIGHTS, MANIFEST) if not (d / name).is_file()]
        if missing:
            raise DataError(f"corrupt model version {d}: missing {' and '.join(missing)} "
                            "(restore it or remove the directory)")
        try:
            version = ModelVersion.from_dict(json.loads((d / MANIFEST).read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"corrupt model version {d}: unreadable {MANIFEST} ({exc})") from exc
        if version.id != vid or version_id(version.identity()) != vid:
            raise DataError(f"corrupt model version {d}: {MANIFEST} does not match the version id "
                            "(it was modified; restore it or remove the directory)")
        return version

    def get(self, id_or_prefix: str) -> ModelVersion:
        """The version whose id starts with `id_or_prefix`; unknown or ambiguous prefixes are a `ConfigError`."""
        key = id_or_prefix.strip().lower()
        if not _PREFIX.fullmatch(key):
            raise ConfigError(f"{id_or_prefix!r} is not a model version id (hex digits, as `fedrec models list` "
                              "shows them)")
        ids = self._ids()
        matches = [vid for vid in ids if vid.startswith(key)]
        if not matches:
            raise ConfigError(f"no model version {id_or_prefix!r} in {self.root} ({len(ids)} versions; "
                              "see `fedrec models list`)")
        if len(matches) > 1:
            width = max(SHORT, len(key) + 4)
            shown = ", ".join(vid[:width] for vid in matches[:10]) + (" ..." if len(matches) > 10 else "")
            raise ConfigError(f"model version {id_or_prefix!r} is ambiguous: {len(matches)} versions match "
                              f"({shown}); give more digits")
        return self._read(matches[0])

    def list(self) -> builtins.list[ModelVersion]:
        """Every version, by round then creation time."""
        return sorted((self._read(vid) for vid in self._ids()), key=lambda v: (v.round, v.created_at, v.id))

    def lineage(self, id_or_prefix: str) -> builtins.list[ModelVersion]:
        """The version, then its parent, grandparent, ... up to the root version (the one without a parent)."""
        chain = [self.get(id_or_prefix)]
        seen = {chain[0].id}
        while (parent := chain[-1].parent) is not None:
            if parent in seen:  # impossible with honest hashes; guards against hand-edited manifests
                raise DataError(f"corrupt model registry: the lineage of {chain[0].short_id} loops at {parent[:SHORT]}")
            if not (self.versions_dir / parent).exists():
                raise DataError(f"model version {chain[-1].short_id} names parent {parent[:SHORT]}, which is not "
                                f"in the registry at {self.root} (was it removed?)")
            chain.append(self._read(parent))
            seen.add(parent)
        return chain

    def _verified_weights(self, version: ModelVersion) -> tuple[bytes, dict[str, np.ndarray]]:
        """The weights file's bytes and arrays, read once, after checking they hash to what the id commits to."""
        path = self.versions_dir / version.id / WEIGHTS
        try:
            data = path.read_bytes()
            arrays = canonical_arrays(load_safetensors(data))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"weights of model version {version.short_id} ({path}) are unreadable: {exc}") from exc
        if weights_digest(arrays) != version.weights_sha256:
            raise DataError(f"weights of model version {version.short_id} ({path}) do not match its content hash: "
                            "the file was modified or corrupted (restore it or remove the version)")
        return data, arrays

    def load(self, id_or_prefix: str) -> tuple[dict[str, np.ndarray], ModelVersion]:
        """(arrays, version), after checking the weights still hash to what the version's id commits to."""
        version = self.get(id_or_prefix)
        return self._verified_weights(version)[1], version

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """How version `b` differs from `a`, to see what a round changed.

        Returns the manifest fields that differ and, per tensor, the L2 norm of b - a and its size relative to
        a's norm (None when a is all zeros); tensors only in one version or with other shapes are reported.
        """
        arrays_a, va = self.load(a)
        arrays_b, vb = self.load(b)
        da, db = va.to_dict(), vb.to_dict()
        fields = {k: {"a": da[k], "b": db[k]} for k in da if k not in ("format", "id") and da[k] != db[k]}
        tensors: dict[str, dict[str, Any]] = {}
        for name in sorted(set(arrays_a) | set(arrays_b)):
            if name not in arrays_b:
                tensors[name] = {"status": "only_in_a", "shape_a": list(arrays_a[name].shape)}
            elif name not in arrays_a:
                tensors[name] = {"status": "only_in_b", "shape_b": list(arrays_b[name].shape)}
            elif arrays_a[name].shape != arrays_b[name].shape:
                tensors[name] = {"status": "shape_mismatch", "shape_a": list(arrays_a[name].shape),
                                 "shape_b": list(arrays_b[name].shape)}
            else:
                x, y = arrays_a[name].astype(np.float64), arrays_b[name].astype(np.float64)
                l2 = float(np.linalg.norm((y - x).ravel()))
                base = float(np.linalg.norm(x.ravel()))
                relative = l2 / base if base > 0 else (0.0 if l2 == 0 else None)
                entry: dict[str, Any] = {"status": "unchanged" if l2 == 0 else "changed",
                                         "shape": list(x.shape), "l2": l2, "relative": relative}
                if arrays_a[name].dtype != arrays_b[name].dtype:
                    entry.update(dtype_a=str(arrays_a[name].dtype), dtype_b=str(arrays_b[name].dtype))
                tensors[name] = entry
        return {"a": va.id, "b": vb.id, "fields": fields, "tensors": tensors}

    def export(self, id_or_prefix: str, dest: Path | str, *, overwrite: bool = False) -> Path:
        """Write a verified, self-contained copy that `fedrec.model_io.load_global_model` reads; returns its path.

        The stored weights file already is one (spec and manifest in its header), so its verified bytes are
        copied as they are. `dest` may be an existing directory.
        """
        version = self.get(id_or_prefix)
        data, _ = self._verified_weights(version)
        out = Path(dest)
        if out.is_dir():
            out = out / f"{version.short_id}.safetensors"
        if not out.parent.is_dir():
            raise ConfigError(f"cannot export to {out}: directory {out.parent} does not exist")
        if out.exists() and not overwrite:
            raise ConfigError(f"{out} already exists; pass --force (overwrite=True) to replace it")
        atomic_write_bytes(out, data)  # readers of `out` never see a half-written file
        return out


# --- CLI ---------------------------------------------------------------------------------------------------


# Where `fedrec` runs leave their registry (`registry_dir: null` is `<output dir>/registry`; conf/config.yaml's
# `hydra.run.dir` and `hydra.sweep.dir`/`subdir`): outputs/DATE/TIME/ and multirun/DATE/TIME/JOB/.
RUN_REGISTRY_GLOBS = ("outputs/*/*/registry", "multirun/*/*/*/registry")


def run_registries(base: Path = Path()) -> builtins.list[Path]:
    """The registries of the runs under `base`, newest first, as paths found under `base`.

    Newest by the run's DATE/TIME directories, then by the last write (the jobs of one sweep share them).
    """

    def newest(path: Path) -> tuple[str, str, int]:
        parts = path.relative_to(base).parts  # (outputs|multirun, DATE, TIME, [JOB,] registry)
        try:
            written = (path / "versions").stat().st_mtime_ns
        except OSError:
            written = 0
        return parts[1], parts[2], written

    found = {p for pattern in RUN_REGISTRY_GLOBS for p in base.glob(pattern) if (p / "versions").is_dir()}
    return sorted(found, key=newest, reverse=True)


def resolve_registry_root(root: Path | None = None, env: Mapping[str, str] | None = None,
                          base: Path = Path()) -> tuple[Path, str | None]:
    """The registry `fedrec models` opens, and a note for stderr when it picked one itself.

    `--root`, else `$FEDREC_REGISTRY`, else `./fedrec-registry` if it exists, else the newest run's registry
    under `base` (`outputs/*/*/registry`, `multirun/*/*/*/registry`); a `ConfigError` naming where it
    looked when there is none.
    """
    if root is not None:
        return root, None
    if (os.environ if env is None else env).get(ENV_ROOT, ""):
        return default_registry_root(env), None
    if (base / DEFAULT_ROOT / "versions").is_dir():
        return base / DEFAULT_ROOT, f"using the registry {base / DEFAULT_ROOT} (pass --root to choose another)"
    runs = run_registries(base)
    if not runs:
        where = f"./{DEFAULT_ROOT}, ./{RUN_REGISTRY_GLOBS[0]} or ./{RUN_REGISTRY_GLOBS[1]}"
        raise ConfigError(f"no model registry found: --root not given, ${ENV_ROOT} not set, and none in "
                          f"{base.resolve()} at {where}; run `fedrec` here first, or pass --root DIR "
                          f"(a run keeps its registry in <output dir>/registry, or in its registry_dir)")
    others = f", the newest of {len(runs)} run registries" if len(runs) > 1 else ""
    return runs[0], f"using the newest run's registry {runs[0]}{others} (pass --root to choose another)"


class _UsageError(Exception):
    """An argparse complaint, raised instead of exiting so `models_main` prints one line and returns 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """`fedrec models` arguments; `--root` is accepted before or after the subcommand."""
    root = _Parser(add_help=False)
    root.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                      help=f"registry directory (default: ${ENV_ROOT}, else ./{DEFAULT_ROOT} if it exists, else "
                           f"the newest run's: ./{RUN_REGISTRY_GLOBS[0]} or ./{RUN_REGISTRY_GLOBS[1]})")
    parser = _Parser(prog="fedrec models", description="Inspect and export the global model versions of a registry.",
                     parents=[root])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,show,diff,export}")
    sub.add_parser("list", parents=[root], help="every version, by round")
    show = sub.add_parser("show", parents=[root], help="one version's manifest and tensors")
    show.add_argument("id", help="version id or a unique prefix of it")
    diff = sub.add_parser("diff", parents=[root], help="how version B differs from version A")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    export = sub.add_parser("export", parents=[root], help="write a self-contained .safetensors copy")
    export.add_argument("id", help="version id or a unique prefix of it")
    export.add_argument("dest", type=Path, help="file or existing directory to write to")
    export.add_argument("--force", action="store_true", help="replace DEST if it exists")
    return parser


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and any(isinstance(v, dict | list) for v in value.values()):
        return json.dumps(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "-"
    return "-" if value is None or value == "" else str(value)


def _metrics_summary(metrics: Mapping[str, Any], limit: int = 3) -> str:
    """The first few scalar metrics, flattened (`overall.ndcg=0.31`), one a line, for one table cell."""
    flat: list[str] = []

    def walk(prefix: str, m: Mapping[str, Any]) -> None:
        for k, v in m.items():
            if isinstance(v, Mapping):
                walk(f"{prefix}{k}.", v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                flat.append(f"{prefix}{k}={v:.4g}")

    walk("", metrics)
    return "\n".join(flat[:limit] + (["..."] if len(flat) > limit else [])) if flat else "-"


def _print_list(registry: ModelRegistry, console: Console) -> None:
    versions = registry.list()
    if not versions:
        console.print(f"no model versions in {registry.root}")
        return
    table = Table(title=f"model versions in {registry.root}", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("round", justify="right")
    table.add_column("parent", no_wrap=True)
    for col, width in (("silos", 5), ("ε spent", 7), ("strategy", 5)):
        table.add_column(col, overflow="fold", min_width=width)
    table.add_column("metrics", min_width=18)  # cut with "…" on narrow terminals; `show` has them all
    for v in versions:
        table.add_row(v.short_id, str(v.round), v.parent[:8] if v.parent else "-", _fmt(v.contributors),
                      _fmt(v.epsilon), _fmt(v.strategy), _metrics_summary(v.metrics, limit=2))
    console.print(table)


def _print_show(registry: ModelRegistry, key: str, console: Console) -> None:
    arrays, v = registry.load(key)
    fields = Table(title=f"model version {v.short_id} (weights verified)", show_header=False)
    fields.add_column("field", no_wrap=True)
    fields.add_column("value", overflow="fold")
    for k, value in v.to_dict().items():
        fields.add_row(k, _fmt(value))
    lineage = registry.lineage(v.id)
    fields.add_row("lineage", " ← ".join(x.short_id for x in lineage))
    console.print(fields)
    tensors = Table(title="tensors")
    for col in ("name", "dtype", "shape", "L2 norm"):
        tensors.add_column(col)
    for name, a in arrays.items():
        tensors.add_row(name, str(a.dtype), "×".join(map(str, a.shape)) or "scalar",
                        f"{float(np.linalg.norm(a.astype(np.float64).ravel())):.4g}")
    console.print(tensors)


def _print_diff(registry: ModelRegistry, a: str, b: str, console: Console) -> None:
    d = registry.diff(a, b)
    console.print(f"A = {d['a'][:SHORT]}   B = {d['b'][:SHORT]}")
    if d["fields"]:
        fields = Table(title="manifest fields that differ")
        fields.add_column("field", no_wrap=True)
        for col in ("A", "B"):
            fields.add_column(col, overflow="fold")
        for k, ab in d["fields"].items():
            fields.add_row(k, _fmt(ab["a"]), _fmt(ab["b"]))
        console.print(fields)
    tensors = Table(title="tensors (B - A)")
    for col in ("name", "status", "shape", "‖B-A‖", "relative"):
        tensors.add_column(col)
    for name, t in d["tensors"].items():
        shape = t.get("shape") or f"{t.get('shape_a', '-')} vs {t.get('shape_b', '-')}"
        tensors.add_row(name, t["status"], str(shape), _fmt(t.get("l2")), _fmt(t.get("relative")))
    console.print(tensors)


def models_main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    """`fedrec models list | show ID | diff A B | export ID DEST`; returns the exit status.

    A user mistake prints one line, `fedrec models: error: ...`, to stderr and returns 2 (no traceback).
    """
    out = console or Console()
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        root, note = resolve_registry_root(getattr(args, "root", None))
        if note:
            print(f"fedrec models: {note}", file=sys.stderr)
        registry = ModelRegistry(root, create=False)
        if args.command == "list":
            _print_list(registry, out)
        elif args.command == "show":
            _print_show(registry, args.id, out)
        elif args.command == "diff":
            _print_diff(registry, args.a, args.b, out)
        else:
            path = registry.export(args.id, args.dest, overwrite=args.force)
            out.print(f"exported {registry.get(args.id).short_id} → {path}", highlight=False)
    except (_UsageError, FedrecError) as exc:
        print(f"fedrec models: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    return 0
