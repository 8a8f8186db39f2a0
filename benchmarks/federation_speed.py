"""Wall time of the federated simulation vs centralized training of the same model, same passes.

ML-100K-sized synthetic world (943 users, 1,682 items, ~100k interactions) split over 10 silos. Reports
the ratio federated / centralized, cold (the run pays Ray's start-up) and warm (a later run in the same
`fedrec.flower.runtime.shared_runtime()`, as every job of a sweep after the first), and where the federated
time goes: start-up (cold - warm), local training, per-round evaluation (user refit + full ranking in every
silo) and what is left per round for Flower (messaging, serialization, scheduling). Per-round costs measured
sequentially are halved for comparison, as the simulation runs two silos at a time on 2 cores.

Usage: python benchmarks/federation_speed.py [--rounds 10] [--out /tmp/bench-speed]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import torch

from fedrec.bounds import train_centralized
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.flower import server_app, simulation
from fedrec.flower.runtime import shared_runtime
from fedrec.flower.simulation import run_simulation
from fedrec.models import ModelSpec
from fedrec.settings import RunSettings
from fedrec.silo.round import evaluate_round, silo_seed, train_round
from fedrec.training import TrainConfig, initial_global_arrays
from fedrec.world import prepare_world


@contextlib.contextmanager
def flower_waits() -> Iterator[None]:
    """Benchmark only: Flower's simulation engine with its own waits (fedrec's `prompt_engine` left out), the A/B."""
    original = simulation.prompt_engine
    simulation.prompt_engine = lambda: contextlib.nullcontext(False)  # type: ignore[assignment]
    try:
        yield
    finally:
        simulation.prompt_engine = original


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fedrec-speed-"))
    world_cfg = SyntheticWorldConfig(n_users=943, n_items=1500, region_only_items=18,
                                     region_sizes=(3, 2, 2, 1.5, 1.5, 1, 1, 1, 0.6, 0.4),
                                     mean_interactions=106, min_interactions=20, max_interactions=700)
    data = generate_world(world_cfg)
    world = prepare_world(data, SplitConfig(), out / "world")
    spec, cfg = ModelSpec("mf", 32), TrainConfig()
    print(f"world: {len(data):,} interactions, {len(world.regions)} silos, {world.n_items} items")

    # Centralized: same model, same passes (rounds x 1 epoch), one process.
    torch.set_num_threads(1)
    t = time.perf_counter()
    train_centralized(world.silos, spec, cfg, epochs=args.rounds, seed=0)
    central_s = time.perf_counter() - t

    # Pure local cost of one federated round, sequential over silos, no Flower: training and evaluation.
    g = initial_global_arrays(spec, n_items=world.n_items, seed=0)
    t = time.perf_counter()
    outs = {r: train_round(s, spec, g, None, cfg, seed=silo_seed(0, r, 1)) for r, s in world.silos.items()}
    one_round_training_s = time.perf_counter() - t
    t = time.perf_counter()
    for r, s in world.silos.items():
        evaluate_round(s, spec, outs[r].global_after, outs[r].local_after, cfg, seed=0)
    one_round_eval_s = time.perf_counter() - t

    # Federated: real Flower simulation, 2 Ray workers on this 2-core machine. Inside one shared runtime
    # (`fedrec.flower.runtime`): the first run pays Ray's start-up (cold), the next ones reuse it (warm, as every
    # job of a sweep after the first). Evaluated every round (the default, per-round curves) and only at the first
    # and last round; the warm sparse run also with Flower's default reply poll (0.1 s) for the A/B.
    def federate(eval_every: int) -> tuple[float, list[float]]:
        settings = RunSettings(data_dir=str(world.data_dir), output_dir=str(out), num_rounds=args.rounds,
                               min_nodes=len(world.regions), eval_every=eval_every)
        times: list[float] = []
        t0 = time.perf_counter()
        run_simulation(settings, on_round=lambda e: times.append(e["round_time_s"]))
        return time.perf_counter() - t0, times

    with shared_runtime():
        fed_s, _ = federate(1)
        warm_s, warm_times = federate(1)
        warm_sparse_s, sparse_times = federate(args.rounds)
        with flower_waits():
            flower_waits_s, _ = federate(args.rounds)
        server_app.SIMULATION_PULL_INTERVAL_S = 0.1
        default_poll_s, _ = federate(args.rounds)

    steady = statistics.median(warm_times[1:]) if len(warm_times) > 1 else warm_times[0]
    report = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} torch thread(s), {platform.python_version()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "centralized_s": central_s,
        "federated_cold_s": fed_s,
        "ratio_cold_over_centralized": fed_s / central_s,
        "startup_overhead_s": fed_s - warm_s,
        "federated_warm_s": warm_s,
        "ratio_warm_over_centralized": warm_s / central_s,
        "median_round_s": steady,
        "training_per_round_sequential_s": one_round_training_s,
        "evaluation_per_round_sequential_s": one_round_eval_s,
        "flower_overhead_per_round_s": steady - (one_round_training_s + one_round_eval_s) / 2,
        "federated_warm_eval_first_last_s": warm_sparse_s,
        "ratio_warm_eval_first_last_over_centralized": warm_sparse_s / central_s,
        "same_with_flower_default_poll_s": default_poll_s,
        "same_with_flower_engine_waits_s": flower_waits_s,
        "ratio_with_flower_engine_waits_over_centralized": flower_waits_s / central_s,
        "median_round_without_eval_s": statistics.median(sparse_times[1:-1]) if len(sparse_times) > 2
        else float("nan"),
    }
    report["steady_ratio_round_over_centralized_epoch"] = report["median_round_without_eval_s"] / (
        central_s / args.rounds)
    for k, v in report.items():
        print(f"{k:36s} {v:.3f}" if isinstance(v, float) else f"{k:36s} {v}")
    (out / "speed.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
