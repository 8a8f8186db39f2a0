"""What the region-side guard costs in time: the same experiment with every region's guard on and off, paired.

Each pair runs the experiment twice in this process on the in-process grid (real ServerApp and ClientApps, no
Ray, so start-up does not drown the difference), guard on then off, alternating which goes first; prints each
run's wall time, the per-pair ratio on/off and its median. The guard adds, per evaluation message and region, a
comparison of the item rows with the served version and one re-fit plus a top-20 ranking of the region's
validation users (the exposure cap).

Usage: python benchmarks/guard_overhead.py [--pairs 3] [-- HYDRA OVERRIDES...]   (default: experiment=quick)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from fedrec.commands.run import compose_experiment
from fedrec.experiment import run_experiment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakegrid import run_in_process  # the tests' in-process grid


def timed(overrides: list[str], guard: bool) -> float:
    cfg = compose_experiment([*overrides, f"+adoption.default={{adopt:always,guard:{str(guard).lower()}}}"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_experiment(cfg, Path(tmp), log=lambda *_: None, engine=run_in_process)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    overrides = args.overrides or ["experiment=quick"]
    overrides += [o for o in ("bounds=[]", "baselines=[]") if not any(x.startswith(o.split("=")[0]) for x in overrides)]
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python "
          f"{platform.python_version()}; overrides={overrides}", flush=True)
    timed(overrides, True)  # warm-up (imports, caches)
    ratios = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        t = {g: timed(overrides, g) for g in order}
        ratios.append(t[True] / t[False])
        print(f"pair {i + 1}: guard on {t[True]:.2f} s, off {t[False]:.2f} s, on/off {ratios[-1]:.3f}", flush=True)
    print(f"median on/off: {statistics.median(ratios):.3f} over {len(ratios)} pairs")


if __name__ == "__main__":
    main()
