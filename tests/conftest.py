"""Shared test setup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread() -> Iterator[None]:
    """Tests use tiny tensors: extra intra-op threads only contend (measured 70x slower with 2 threads on a
    loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def this_interpreter_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A `python3` kernelspec that runs *this* interpreter, visible to this test only.

    The venv ships a `python3` kernelspec whose argv is plain `python` (jupyter_client swaps that for
    `sys.executable`), but a user-wide or system spec could shadow it. A spec written by ipykernel into a
    temporary dir on JUPYTER_PATH (searched first) pins the kernel to `sys.executable` without installing
    anything outside tmp_path.
    """
    pytest.importorskip("ipykernel")
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "python3"
