"""The one durable-write helper every ledger, state file, checkpoint and export goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from fedrec.io import atomic_save_arrays, atomic_write_bytes, atomic_write_text


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "ledger.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["ledger.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"kept")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.bin"]


def test_arrays_round_trip_with_their_metadata(tmp_path: Path) -> None:
    path = tmp_path / "fork.safetensors"
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2], "b": np.zeros(0, dtype=np.int64)}
    atomic_save_arrays(path, arrays, {"version": "abc"})
    back = load_file(str(path))
    assert np.array_equal(back["a"], arrays["a"]) and back["b"].shape == (0,)
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"version": "abc"}
