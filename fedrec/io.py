"""Durable file writes: one way to replace a file so that readers and crashes see the old or the new one.

Every file a silo or the coordinator keeps (ledgers, per-user state, cached replies, serving pointers,
checkpoints, exported models) is written here: to a unique temporary file in the same directory, flushed
and fsynced, renamed over the target (atomic on POSIX), and the directory fsynced so the rename itself
survives a power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_bytes


def write_durably(path: Path, data: bytes, *, exclusive: bool = True) -> None:
    """Write `data` to `path` and fsync it (not atomic by itself: for files inside a directory renamed later)."""
    with open(path, "xb" if exclusive else "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (creates the parent directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_arrays(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Named arrays as one safetensors file (plain arrays: loading never executes code), atomically."""
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write_bytes(path, safetensors_bytes(contiguous, metadata=metadata))
