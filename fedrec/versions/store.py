"""A directory of model versions: add (atomic, idempotent), find by id prefix, load (verified), compare, export.

A version is a directory `versions/<id>/` holding `weights.safetensors` (global parameters only, with the
model spec in the header, so the file alone loads with `fedrec.model_io.load_global_model`) and
`manifest.json` (provenance and metrics). Writes are atomic: a version is written and fsynced under `tmp/`,
then its directory is renamed into `versions/` in one step (POSIX). Readers only look in `versions/`, so a
crash leaves at most a stray `tmp/` entry, which the next `ModelRegistry(root)` removes when no writer holds
the registry's lock.

`fedrec.models.base` (and so torch, ~1.5 s to import) is only imported by `add` and
`ModelVersion.model_spec`, so the `fedrec models` commands stay quick.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save

from fedrec.errors import ConfigError, DataError
from fedrec.io import atomic_write_bytes, fsync_dir, write_durably
from fedrec.versions.runs import ENV_ROOT
from fedrec.versions.version import (
    FULL_ID,
    MANIFEST,
    SHORT,
    WEIGHTS,
    ModelVersion,
    canonical_arrays,
    describe_version,
    version_id,
    weights_digest,
)

if TYPE_CHECKING:
    from fedrec.models.base import ModelSpec

LOCK_FILE = ".lock"
_PREFIX = re.compile(r"[0-9a-f]{1,64}")


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
            config_hash: str = "", metrics: Mapping[str, Any] | None = None,
            influence: Mapping[str, Any] | None = None, divestment: Mapping[str, Any] | None = None,
            coalition: str = "") -> ModelVersion:
        """Store a global model as a new version and return it (the existing one if this content is stored).

        Adding the same content again returns the existing version unchanged: its metrics and creation time
        are the first add's. `epsilon` maps a silo to the ε it has spent (empty without DP). Refuses per-user
        (`user.`) arrays, since a global model must never hold them, and a parent that is not in the registry.
        """
        version, canon = describe_version(arrays, spec=spec, parent=parent, round=round, contributors=contributors,
                                          epsilon=epsilon, strategy=strategy, config_hash=config_hash,
                                          metrics=metrics, influence=influence, divestment=divestment,
                                          coalition=coalition)
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
                write_durably(tmp / WEIGHTS, payload)
                write_durably(tmp / MANIFEST, manifest)
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
            if not (entry.is_dir() and FULL_ID.fullmatch(entry.name)):
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
