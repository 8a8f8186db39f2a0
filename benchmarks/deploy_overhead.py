"""Deployment engine vs simulation, and what TLS + SuperNode authentication and SecAgg+ cost per round.

Builds one small world (3 jurisdictions), then on 127.0.0.1:
- starts a local federation without TLS and one with TLS + SuperNode authentication (`fedrec.deploy.local`),
  and reports their start-up times (SuperLink healthy; all SuperNodes connected);
- runs the same federated job (`--rounds` rounds) alternately on: the simulation engine (in-process),
  the insecure deployment, the TLS + auth deployment, and the TLS + auth deployment with SecAgg+;
  `--repeats` times each, interleaved so drift hits every mode alike;
- prints the median time per round of each mode and its ratio to the insecure deployment (and SecAgg+ in
  simulation vs plain simulation), all measured in the same run.

Usage: python benchmarks/deploy_overhead.py [--rounds 3] [--repeats 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.deploy.local import LocalFederation
from fedrec.flower.simulation import run_simulation
from fedrec.settings import RunSettings
from fedrec.world import prepare_world

JOB = {"dim": 16, "batch-size": 256, "n-negatives": 64}


def round_times(out: Path) -> list[float]:
    return [e["round_time_s"] for e in json.loads((out / "federated_history.json").read_text())["round_log"]]


def simulate(world_dir: Path, out: Path, rounds: int, **extra: Any) -> list[float]:
    s = RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=rounds, min_nodes=3, dim=JOB["dim"],
                    batch_size=JOB["batch-size"], n_negatives=JOB["n-negatives"], **extra)
    run_simulation(s)
    return round_times(out)


def deployed(fed: LocalFederation, world_dir: Path, out: Path, rounds: int, **extra: Any) -> list[float]:
    done = fed.run({"data-dir": str(world_dir), "output-dir": str(out), "num-rounds": rounds, "min-nodes": 3,
                    **JOB, **extra})
    if done.returncode != 0:
        raise SystemExit(f"flwr run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return round_times(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="fedrec-deploy-bench-"))
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()}"
          f" rounds={args.rounds} repeats={args.repeats} root={root}", flush=True)
    world = prepare_world(generate_world(SyntheticWorldConfig(n_users=1200, n_items=300, region_only_items=20,
                                                              region_sizes=(5.0, 2.0, 1.0))),
                          SplitConfig(), root / "world")
    nodes = {r: {"data-path": str(world.data_dir / f"silo_{r}.npz"), "state-dir": str(root / "state" / r)}
             for r in world.regions}
    feds = {"insecure": LocalFederation(root / "insecure", nodes, secure=False),
            "tls+auth": LocalFederation(root / "tls", {r: {**c, "state-dir": c["state-dir"] + "-tls"}
                                                       for r, c in nodes.items()}, secure=True)}
    times: dict[str, list[float]] = {}
    try:
        for name, fed in feds.items():
            fed.start()
            print(f"start-up {name}: SuperLink healthy {fed.timings['superlink_start_s']:.2f} s, 3 SuperNodes "
                  f"connected {fed.timings['supernodes_connected_s']:.2f} s later; total "
                  f"{fed.timings['startup_s']:.2f} s (incl. certificates and key registration)", flush=True)
        for rep in range(args.repeats):
            modes = {
                "simulation": lambda o: simulate(world.data_dir, o, args.rounds),
                "simulation+secagg": lambda o: simulate(world.data_dir, o, args.rounds,
                                                        secure_aggregation="secaggplus"),
                "insecure": lambda o: deployed(feds["insecure"], world.data_dir, o, args.rounds),
                "tls+auth": lambda o: deployed(feds["tls+auth"], world.data_dir, o, args.rounds),
                "tls+auth+secagg": lambda o: deployed(feds["tls+auth"], world.data_dir, o, args.rounds,
                                                      **{"secure-aggregation": "secaggplus"}),
            }
            for name, run in modes.items():
                t0 = time.monotonic()
                per_round = run(root / f"{name}-{rep}")
                times.setdefault(name, []).extend(per_round)
                print(f"  {name:>18} #{rep}: rounds {', '.join(f'{t:.2f}' for t in per_round)} s "
                      f"(whole run {time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        for fed in feds.values():
            fed.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print("median seconds per round (all rounds of all repeats):", flush=True)
    for name, m in med.items():
        print(f"  {name:>18}: {m:.2f} s", flush=True)
    print(f"deployment (insecure) vs simulation: {med['insecure'] / med['simulation']:.2f}x", flush=True)
    print(f"TLS + SuperNode auth vs insecure deployment: {med['tls+auth'] / med['insecure']:.2f}x", flush=True)
    print(f"SecAgg+ vs plain, deployment (both TLS + auth): {med['tls+auth+secagg'] / med['tls+auth']:.2f}x; "
          f"simulation: {med['simulation+secagg'] / med['simulation']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
