"""The processes of a local federation: ports, the Flower app directory, run-config syntax, one started process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import FedrecError


class DeployError(FedrecError):
    """A process of the local federation failed to start or to answer in time."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connected(proc: Process) -> bool:
    """Whether a SuperNode's log says the SuperLink accepted it."""
    text = proc.text()
    return "SuperNode ID" in text or "Activated" in text


def app_dir() -> Path:
    """The Flower app (this repository: `pyproject.toml` with `[tool.flwr.app]`)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        raise DeployError("`flwr run` needs the fedrec app directory (a source checkout with pyproject.toml); "
                          "run from a clone of the repository")
    return root


def run_config_arg(values: dict[str, Any]) -> str:
    """`--run-config` syntax: `key="text" n=3 flag=true`."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))
    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


@dataclass
class Process:
    """One started process: its Popen (own process group) and log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def text(self) -> str:
        """Its log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        """`sig` to its process group, then SIGKILL if it is still there after `grace` seconds."""
        for s in (sig, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, s)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
