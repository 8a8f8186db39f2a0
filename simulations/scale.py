"""How a simulation grows with silos and interactions: wall time, time per round and peak memory.

For each number of silos x number of interactions, a synthetic world (`dataset=synthetic`; users =
interactions / `dataset.mean_interactions`, 5,000 shared items + 10 per silo, silo sizes spread log-evenly over
10:1) is federated for `--rounds`
rounds on Flower's simulation engine, `--fraction-train` of the silos sampled per round, evaluated at the first
and last round only (`federation.eval_every=ROUNDS`), no bounds or baselines. All runs share one Ray runtime
(`fedrec.flower.runtime.shared_runtime`); the first run's Ray start-up is reported apart. Memory: the peak of the
summed resident memory of this process and every process it started (Ray's and its workers), sampled every 0.2 s.

Usage:
  python simulations/scale.py --out /tmp/scale --silos 10 30 100 --interactions 1e6 1e7
  python simulations/scale.py --out /tmp/scale-smoke --silos 5 --interactions 2e4 --rounds 2   # seconds
Extra Hydra overrides after `--` apply to every run (e.g. `-- model.dim=32`). Writes OUT/scale.json and keeps
each run under OUT/S-silos_I-interactions (its results.json has the per-round times).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedrec.commands.run import compose_experiment
from fedrec.experiment import run_experiment
from fedrec.flower.runtime import shared_runtime


class PeakMemory:
    """The peak summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # exited between listing and reading
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def world_overrides(silos: int, interactions: float, mean_interactions: float) -> list[str]:
    sizes = np.round(np.geomspace(10.0, 1.0, silos), 3) if silos > 1 else np.array([1.0])
    return [f"dataset.n_users={round(interactions / mean_interactions)}",
            f"dataset.mean_interactions={mean_interactions}", "dataset.n_items=5000", "dataset.region_only_items=10",
            f"dataset.region_sizes=[{','.join(f'{s:g}' for s in sizes)}]"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--silos", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--interactions", type=float, nargs="+", default=[1e6])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--fraction-train", type=float, default=0.2)
    ap.add_argument("--mean-interactions", type=float, default=40.0)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = ap.parse_args()
    if min(args.silos) < 1 or min(args.interactions) < 1 or args.rounds < 1 or not 0 < args.fraction_train <= 1:
        ap.error("--silos, --interactions and --rounds must be >= 1 and --fraction-train in (0, 1]")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} {psutil.cpu_count()} CPUs, "
          f"python {platform.python_version()}", flush=True)
    with shared_runtime():
        for interactions in sorted(args.interactions):
            for silos in sorted(args.silos):
                name = f"{silos}-silos_{interactions:.0e}-interactions".replace("+0", "")
                out = args.out / name
                shutil.rmtree(out, ignore_errors=True)
                cfg = compose_experiment([*world_overrides(silos, interactions, args.mean_interactions),
                                          f"federation.rounds={args.rounds}", f"federation.eval_every={args.rounds}",
                                          f"federation.fraction_train={args.fraction_train}", "bounds=[]",
                                          "baselines=[]", "progress=false", *args.overrides])
                print(f"  {name} ...", flush=True)
                t = time.perf_counter()
                with PeakMemory() as mem:
                    res = run_experiment(cfg, out, log=lambda *_: None)
                wall = time.perf_counter() - t
                rounds = [e["round_time_s"] for e in res["round_log"]]
                train = sum(r["train_interactions"] for r in res["dataset"]["regions"].values())
                row = {"silos": silos, "interactions": int(interactions), "train_interactions": train,
                       "rounds": len(rounds),
                       "fraction_train": args.fraction_train, "wall_s": wall,
                       "prepare_s": res["timings"]["prepare_s"], "federated_s": res["timings"]["federated_s"],
                       "median_round_s": float(np.median(rounds)), "first_round_s": rounds[0],
                       "last_round_s": rounds[-1], "peak_rss_gb": mem.peak / 2**30,
                       "ndcg@20": res["final"]["federated"]["overall"]["ndcg@20"]}
                rows.append(row)
                print("    " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in row.items()), flush=True)
                (args.out / "scale.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'silos':>6} {'interactions':>13} {'wall s':>8} {'prep s':>7} {'round s':>8} {'first/last s':>13} "
          f"{'peak GB':>8} {'NDCG@20':>8}")
    for r in rows:
        print(f"{r['silos']:>6} {r['interactions']:>13,} {r['wall_s']:>8.1f} {r['prepare_s']:>7.1f} "
              f"{r['median_round_s']:>8.2f} {r['first_round_s']:>6.1f}/{r['last_round_s']:<6.1f} "
              f"{r['peak_rss_gb']:>8.2f} {r['ndcg@20']:>8.4f}")


if __name__ == "__main__":
    main()
