"""`flwr run .`: the app declared in pyproject.toml runs on Flower's own CLI and simulation runtime.

The test owns its SuperLink (free ports, its own FLWR_HOME and database) and stops it and everything it
started, by process group, even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.world import prepare_world

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def superlink(tmp_path: Path) -> Iterator[dict[str, str]]:
    http_port, control_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    log = (tmp_path / "superlink.log").open("w")
    proc = subprocess.Popen(
        ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
         "--control-api-address", f"127.0.0.1:{control_port}", "--host", "127.0.0.1", "--port", str(http_port),
         "--database", str(tmp_path / "state.db")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=0.5).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "superlink.log").read_text()
            time.sleep(0.3)
        else:
            pytest.fail("SuperLink did not become healthy within 60 s")
        yield env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_flwr_run_trains_every_region(superlink: dict[str, str], tmp_path: Path) -> None:
    # Prepare: a 3-region world on disk, and a local simulation federation of 3 SuperNodes
    world = prepare_world(generate_world(SyntheticWorldConfig(n_users=300, n_items=120, region_only_items=5,
                                                              region_sizes=(3.0, 2.0, 1.0))),
                          SplitConfig(), tmp_path / "world")
    out = tmp_path / "out"
    cfg = subprocess.run(["flwr", "federation", "simulation-config", "--num-supernodes", "3",
                          "--client-resources-num-cpus", "1"],
                         env=superlink, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr

    # Execute
    run = subprocess.run(
        ["flwr", "run", str(REPO), "--stream", "--run-config",
         f'data-dir="{world.data_dir}" output-dir="{out}" num-rounds=2 min-nodes=3 dim=8'],
        env=superlink, cwd=REPO, capture_output=True, text=True, timeout=400,
    )

    # Assert: the ServerApp wrote two evaluated rounds with every region, and the global model
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    history_file = out / "federated_history.json"
    assert history_file.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    history = json.loads(history_file.read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert all(sorted(r["per_region"]) == sorted(world.regions) for r in history["rounds"])
    assert (out / "global_model.safetensors").exists()
