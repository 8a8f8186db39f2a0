"""EASE's inverse P = (G + λI)⁻¹ four ways, idle and with both cores kept busy by other processes.

The federated EASE solve, its bounds and the EASE baseline all need P. `torch.cholesky_inverse` was measured
taking 0.15 s on one thread but 0.5-22 s on two whenever other processes kept the cores busy (OpenMP's
active wait, `statistics_cost.py`). This script times, on a Gram of a random binary matrix, medians of `--repeats`:
torch.cholesky_inverse, torch.cholesky_solve against the identity, torch.linalg.inv and LAPACK's potrf+potri
through scipy, first idle, then with `--load` busy-looping processes; each against cholesky_inverse in the
same phase, and the largest difference from it.

Usage: python benchmarks/ease_solve.py [--items 1682 4000] [--repeats 5] [--load 2] [--dtype float64]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import torch
from scipy.linalg import lapack


def _busy(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        x += 1


def methods(a: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    n = a.shape[0]

    def lapack_potri() -> torch.Tensor:
        double = a.dtype == torch.float64
        c, _ = (lapack.dpotrf if double else lapack.spotrf)(a.numpy(), lower=1, clean=1)
        p, _ = (lapack.dpotri if double else lapack.spotri)(c, lower=1)
        return torch.from_numpy(np.tril(p) + np.tril(p, -1).T)

    return {
        "torch.cholesky_inverse": lambda: torch.cholesky_inverse(torch.linalg.cholesky(a)),
        "torch.cholesky_solve(I)": lambda: torch.cholesky_solve(torch.eye(n, dtype=a.dtype),
                                                                torch.linalg.cholesky(a)),
        "torch.linalg.inv": lambda: torch.linalg.inv(a),
        "scipy LAPACK potrf+potri": lapack_potri,
    }


def phase(name: str, a: torch.Tensor, repeats: int) -> None:
    ms = methods(a)
    ref = ms["torch.cholesky_inverse"]()
    base = None
    for label, fn in ms.items():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            p = fn()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        base = base or med
        print(f"  {name:<6} {label:<26} median {med:7.3f} s  (min {min(times):.3f}, max {max(times):.3f})  "
              f"x{med / base:5.2f} of cholesky_inverse  max|ΔP| {float((p - ref).abs().max()):.1e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, nargs="+", default=[1682, 4000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--load", type=int, default=2, help="busy processes in the loaded phase")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python "
          f"{platform.python_version()} torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    rng = np.random.default_rng(0)
    for n in args.items:
        x = (rng.random((3000, n)) < 0.02).astype(np.float32)
        a = torch.from_numpy(x.T @ x).to(getattr(torch, args.dtype))
        a.diagonal().add_(300.0)
        print(f"n_items={n}")
        phase("idle", a, args.repeats)
        stop = mp.get_context("spawn").Event()
        procs = [mp.get_context("spawn").Process(target=_busy, args=(stop,)) for _ in range(args.load)]
        for p in procs:
            p.start()
        time.sleep(1.0)
        try:
            phase("loaded", a, args.repeats)
        finally:
            stop.set()
            for p in procs:
                p.join()


if __name__ == "__main__":
    main()
