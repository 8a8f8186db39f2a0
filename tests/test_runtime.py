"""One Ray runtime for many simulations (`fedrec.flower.runtime`), on Flower's real simulation engine.

- runs inside `shared_runtime()` build one actor pool and reuse it, give exactly the models and metrics the
  in-process grid gives (so nothing of one run leaks into the next through a kept actor), and Ray is down after;
- a Hydra multirun (`fedrec -m`) shares one runtime across its jobs and says so;
- with `federation.ray_address` the simulation runs on a cluster started apart (`ray start --head`, here a
  one-node cluster on 127.0.0.1: what a multi-node cluster's head looks like to the driver).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from fakegrid import run_in_process

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower import runtime
from fedrec.flower.simulation import run_simulation
from fedrec.settings import RunSettings
from fedrec.world import prepare_world

pytestmark = pytest.mark.slow

WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)


def settings(world_dir: Path, out: Path, seed: int) -> RunSettings:
    return RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=2, min_nodes=3, dim=6,
                       batch_size=64, n_negatives=16, seed=seed)


def without_timing(entries: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "round_time_s"} for e in entries]


def test_runs_in_a_shared_runtime_reuse_one_actor_pool_and_equal_the_in_process_grid(tmp_path: Path) -> None:
    world_dir = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world").data_dir
    before = dict(runtime.stats)
    with runtime.shared_runtime():
        shared = [run_simulation(settings(world_dir, tmp_path / f"ray{seed}", seed)) for seed in (0, 1)]
        assert ray.is_initialized()
    assert not ray.is_initialized()
    assert runtime.stats["pools_built"] - before["pools_built"] == 1
    assert runtime.stats["pools_reused"] - before["pools_reused"] == 1
    for seed, got in zip((0, 1), shared, strict=True):
        want = run_in_process(settings(world_dir, tmp_path / f"fake{seed}", seed))
        assert all(np.array_equal(got.final_arrays[k], want.final_arrays[k]) for k in want.final_arrays)
        g, w = got.to_json(), want.to_json()
        assert without_timing(g["rounds"]) == without_timing(w["rounds"])
        assert g["model_versions"] == w["model_versions"]
    assert not np.array_equal(shared[0].final_arrays["item_emb.weight"], shared[1].final_arrays["item_emb.weight"])


def test_a_hydra_multirun_shares_one_runtime_across_its_jobs(tmp_path: Path) -> None:
    env = {**os.environ, "CI": "true"}
    proc = subprocess.run([sys.executable, "-m", "fedrec.commands", "-m", "experiment=quick", "seed=0,1",
                           "federation.rounds=2", "bounds=[]", "baselines=[]", f"hydra.sweep.dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 simulation(s) shared one Ray runtime (actor pool built 1 time(s))" in proc.stdout
    assert len(list(tmp_path.glob("*/results.json"))) == 2


def test_a_simulation_runs_on_a_ray_cluster_started_apart_with_ray_start(tmp_path: Path) -> None:
    world_dir = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world").data_dir
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    ray_cli = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    try:
        seen: list[str] = []
        got = run_simulation(settings(world_dir, tmp_path / "cluster", 0), ray_address=address,
                             on_round=lambda _e: seen.append(ray.get_runtime_context().gcs_address))
        # the driver was attached to that cluster (its GCS port; Ray names the host by the machine's address), not
        # to a new local Ray, which would listen on a port of its own choosing
        assert seen and all(a.rsplit(":", 1)[1] == str(port) for a in seen), seen
        status = subprocess.run([ray_cli, "status", f"--address={address}"], capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0, status.stderr  # the run left the cluster up (it only disconnected)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
    want = run_in_process(settings(world_dir, tmp_path / "fake", 0))
    assert all(np.array_equal(got.final_arrays[k], want.final_arrays[k]) for k in want.final_arrays)
