"""A local multi-jurisdiction federation on Flower's deployment engine: one SuperLink, one SuperNode per region.

Every process runs on 127.0.0.1 with its own port, under this object's control: started in its own
process group, tracked by PID, and stopped (SIGTERM, then SIGKILL) on `close()` even when a caller fails;
processes Flower itself spawns (ServerApp / ClientApp runtimes) are found by a tag in their environment
and stopped too. With `secure=True` (default) every connection uses TLS (a local CA made here) and only
SuperNodes whose public keys were registered with `flwr supernode register` may join.

The same commands, on real machines, are in docs/running-across-jurisdictions.md.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedrec.deploy.certs import make_node_key, make_tls
from fedrec.deploy.processes import DeployError, Process, app_dir, connected, free_port, run_config_arg

TAG_ENV = "FEDREC_DEPLOY_TAG"
QUIET_ENV = {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
             "FLWR_DISABLE_UPDATE_CHECK": "1"}


@dataclass
class Node:
    """A jurisdiction's SuperNode: region, port, key, and the node config it runs with."""

    region: str
    port: int
    node_config: dict[str, Any]
    key: Path | None = None
    process: Process | None = None
    starts: int = 0


@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per region on 127.0.0.1 (a context manager that cleans up every process).

    `nodes` maps a region to its node config (`region`, `data-path`, `state-dir`, ...). Files (certificates,
    keys, Flower's home with `config.toml`, the SuperLink's database, logs) go under `root`.
    """

    root: Path
    nodes: dict[str, dict[str, Any]]
    secure: bool = True
    name: str = "fedrec-local"
    port: int = field(default_factory=free_port)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    superlink: Process | None = None
    members: dict[str, Node] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # --- paths and environment --------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """FLWR_HOME of this federation (holds `config.toml` naming its SuperLink connection)."""
        return self.root / "flwr-home"

    @property
    def certs(self) -> Path:
        """The local CA, server certificate and SuperNode keys."""
        return self.root / "certs"

    def env(self) -> dict[str, str]:
        """The environment every process and CLI call of this federation runs with."""
        return {**os.environ, **QUIET_ENV, "FLWR_HOME": str(self.home), TAG_ENV: self.tag}

    # --- processes -------------------------------------------------------------------------------------

    def start_process(self, name: str, cmd: list[str]) -> Process:
        """Start a process of this federation (own process group, log under root/logs, stopped by `close`)."""
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            fh.write(f"$ {' '.join(cmd)}\n".encode())
            fh.flush()
            popen = subprocess.Popen(cmd, env=self.env(), stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a `flwr` CLI command against this federation."""
        return subprocess.run(["flwr", *args], env=self.env(), capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def _wait(self, what: str, ready: Callable[[], bool], proc: Process, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if ready():
                return time.monotonic() - t0
            if not proc.alive():
                raise DeployError(f"{proc.name} exited while waiting for {what}:\n{proc.text()[-3000:]}")
            time.sleep(0.1)
        raise DeployError(f"{what} not ready after {timeout:g} s; log {proc.log}:\n{proc.text()[-3000:]}")

    # --- the federation --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Certificates, keys and Flower's connection config (`config.toml`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.secure and not (self.certs / "server.crt").exists():
            make_tls(self.certs)
        for region, cfg in self.nodes.items():
            key = None
            if self.secure:
                key = self.certs / "keys" / region
                if not key.exists():
                    make_node_key(self.certs / "keys", region)
            self.members[region] = Node(region, free_port(), {"region": region, **cfg}, key)
        self.home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{self.name}"', "", f"[superlink.{self.name}]",
                 f'address = "127.0.0.1:{self.port}"',
                 f'root-certificates = "{self.certs / "ca.crt"}"' if self.secure else "insecure = true"]
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    def superlink_cmd(self) -> list[str]:
        """`flower-superlink` with TLS and SuperNode authentication (or `--insecure`)."""
        cmd = ["flower-superlink", "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.root / "superlink.db")]
        if self.secure:
            c = self.certs
            return [*cmd, "--ssl-certfile", str(c / "server.crt"), "--ssl-keyfile", str(c / "server.key"),
                    "--ssl-ca-certfile", str(c / "ca.crt"), "--enable-supernode-auth"]
        return [*cmd, "--insecure"]

    def healthy(self) -> bool:
        """Whether the SuperLink answers its health endpoint."""
        url = f"{'https' if self.secure else 'http'}://127.0.0.1:{self.port}/health"
        try:
            verify: str | bool = str(self.certs / "ca.crt") if self.secure else False
            return httpx.get(url, timeout=0.5, verify=verify).is_success
        except httpx.HTTPError:
            return False

    def start_superlink(self, timeout: float = 60.0) -> float:
        """Start the SuperLink and wait until it is healthy; returns the seconds it took."""
        self.superlink = self.start_process("superlink", self.superlink_cmd())
        secs = self._wait("the SuperLink's health endpoint", self.healthy, self.superlink, timeout)
        self.timings.setdefault("superlink_start_s", secs)
        return secs

    def register(self, region: str) -> str:
        """Register the region's public key with the SuperLink (secure federations); returns its node id."""
        node = self.members[region]
        assert node.key is not None
        out = self.cli("supernode", "register", str(node.key) + ".pub", self.name, "--format", "json")
        match = re.search(r'"node-id"\s*:\s*"?(\d+)', out.stdout)
        if out.returncode != 0 or match is None:
            raise DeployError(f"`flwr supernode register` failed for {region}: "
                              f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
        return match.group(1)

    def supernode_cmd(self, region: str) -> list[str]:
        """`flower-supernode` for one region, with its node config (and TLS root + key when secure)."""
        node = self.members[region]
        cmd = ["flower-supernode", "--superlink", f"127.0.0.1:{self.port}", "--port", str(node.port),
               "--node-config", run_config_arg(node.node_config)]
        if self.secure:
            assert node.key is not None
            return [*cmd, "--root-certificates", str(self.certs / "ca.crt"),
                    "--auth-supernode-private-key", str(node.key)]
        return [*cmd, "--insecure"]

    def start_node(self, region: str, timeout: float = 120.0) -> float:
        """Start (or restart) a region's SuperNode and wait until it is connected; returns the seconds it took.

        A SuperNode restarted right after a crash is refused until the SuperLink has marked its previous
        session offline (its key's node is still active: exit code 305 / "Failed to activate"); it is
        started again every 2 s until it gets in or `timeout` runs out.
        """
        node = self.members[region]
        t0 = time.monotonic()
        while True:
            node.starts += 1
            node.process = self.start_process(f"supernode-{region}-{node.starts}", self.supernode_cmd(region))
            proc = node.process
            try:
                self._wait(f"SuperNode {region} to connect", functools.partial(connected, proc), proc,
                           max(1.0, timeout - (time.monotonic() - t0)))
                return time.monotonic() - t0
            except DeployError:
                refused = "Failed to activate" in proc.text()
                if not refused or time.monotonic() - t0 > timeout:
                    raise
                proc.stop()
                time.sleep(2.0)

    def kill_node(self, region: str, sig: int = signal.SIGKILL) -> None:
        """Stop a region's SuperNode (SIGKILL by default: a crash, not a goodbye)."""
        node = self.members[region]
        if node.process is not None:
            node.process.stop(sig, grace=10.0)

    def start(self) -> LocalFederation:
        """Prepare, start the SuperLink, register every key, start every SuperNode; record the timings."""
        t0 = time.monotonic()
        self.prepare()
        self.start_superlink()
        if self.secure:
            for region in self.members:
                self.register(region)
        t1 = time.monotonic()
        for region in self.members:
            node = self.members[region]
            node.starts += 1
            node.process = self.start_process(f"supernode-{region}-{node.starts}", self.supernode_cmd(region))
        for region, node in self.members.items():
            proc = node.process
            assert proc is not None
            self._wait(f"SuperNode {region} to connect", functools.partial(connected, proc), proc, 60.0)
        self.timings["supernodes_connected_s"] = time.monotonic() - t1
        self.timings["startup_s"] = time.monotonic() - t0
        return self

    def run(self, run_config: dict[str, Any], *, timeout: float = 900.0, app: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
        """`flwr run` the fedrec app on this federation and wait for it to finish (`--stream`)."""
        return self.cli("run", str(app or app_dir()), self.name, "--stream", "--run-config",
                        run_config_arg(run_config), timeout=timeout)

    def start_run(self, run_config: dict[str, Any], app: Path | None = None) -> Process:
        """`flwr run --stream` in the background (e.g. to crash something while it runs)."""
        cmd = ["flwr", "run", str(app or app_dir()), self.name, "--stream", "--run-config", run_config_arg(run_config)]
        return self.start_process(f"flwr-run-{len(self.processes)}", cmd)

    def close(self) -> None:
        """Stop every process this federation started, then any process Flower spawned for it (by tag)."""
        for proc in reversed(self.processes):
            if proc.alive():
                proc.stop(signal.SIGTERM, grace=10.0)
        for pid in self._tagged_pids():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.5)

    def _tagged_pids(self) -> list[int]:
        marker = f"{TAG_ENV}={self.tag}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if marker in (d / "environ").read_bytes().split(b"\0"):
                        pids.append(int(d.name))
                except OSError:
                    continue
        return pids

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
