"""Simple baselines on the federation's own split: EASE, ItemKNN, popularity, pooled and local-only.

Builds the world the way `fedrec` does (the real Hydra config, `load_dataset`, `prepare_world`), runs
`fedrec.baselines.run_baselines` (hyperparameters chosen on validation, fit on train) and prints per-region
and overall test NDCG@20 / Recall@20, the chosen hyperparameters and fit times. Then: EASE's float32 solve
against float64 on the pooled matrix, and the time of one EASE solve at 1,682 and 5,000 items.

Usage:
  python simulations/baselines.py                                  # synthetic default world and ML-100K
  python simulations/baselines.py --worlds synthetic --seed 1
  python simulations/baselines.py --ml100k-path /tmp/fedrec-ml-100k
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.baselines import BaselineResult, binary, ease_weights, pooled_matrix, run_baselines
from fedrec.baselines.ease import gram
from fedrec.commands.run import compose_experiment
from fedrec.data.registry import load_dataset
from fedrec.data.split import SiloData
from fedrec.evaluation import pool
from fedrec.world import prepare_world

NAMES = ["ease", "itemknn", "popularity"]


def build_world(overrides: list[str]) -> dict[str, SiloData]:
    exp = compose_experiment(overrides)
    data = load_dataset(exp.dataset.name, exp.dataset.params)
    return prepare_world(data, exp.split, Path(tempfile.mkdtemp(prefix="fedrec-bl-"))).silos


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def print_table(silos: dict[str, SiloData], results: dict[str, BaselineResult]) -> None:
    cols = [(n, mode) for n, r in results.items() if r.skipped is None for mode in ("centralized", "local_only")]
    pooled = {(n, mode): pool(getattr(results[n], mode)) for n, mode in cols}
    head = "".join(f"{n + (' pooled' if m == 'centralized' else ' local'):>18}" for n, m in cols)
    print(f"{'test metric @20':<16}{'users':>6}{head}")
    print(f"{'':<22}" + f"{'NDCG':>10}{'Recall':>8}" * len(cols))
    for r in sorted(silos):
        cells = "".join(f"{pooled[c][0][r]['ndcg@20']:>10.4f}{pooled[c][0][r]['recall@20']:>8.4f}" for c in cols)
        print(f"{r:<16}{int(np.unique(silos[r].test[0]).size):>6}{cells}")
    n_test = sum(int(np.unique(s.test[0]).size) for s in silos.values())
    cells = "".join(f"{pooled[c][1]['ndcg@20']:>10.4f}{pooled[c][1]['recall@20']:>8.4f}" for c in cols)
    print(f"{'overall':<16}{n_test:>6}{cells}")


def print_choices(results: dict[str, BaselineResult]) -> None:
    for n, res in results.items():
        if res.skipped is not None:
            print(f"{n}: skipped: {res.skipped}")
            continue
        s = res.seconds
        print(f"{n}: fit {s['centralized_fit']:.2f}s pooled, {s['local_only_fit']:.2f}s local-only (whole grid); "
              f"total with evaluation {s['total']:.2f}s")
        if not res.hyperparameter or res.centralized_choice is None:
            continue
        curve = "  ".join(f"{fmt(v)}:{ndcg:.4f}" for v, ndcg in res.centralized_choice.valid_ndcg.items())
        print(f"  pooled {res.hyperparameter}={fmt(res.centralized_choice.value)} (validation NDCG@20 {curve})")
        local = " ".join(f"{r}={fmt(c.value)}" for r, c in sorted(res.local_choice.items()))
        print(f"  local-only {res.hyperparameter}: {local}")


def precision_check(x: sp.csr_matrix, lam: float) -> str:
    g = gram(x)
    b32, b64 = ease_weights(g, lam), ease_weights(g.double(), lam)
    xb = torch.from_numpy(binary(x).toarray())
    top32 = torch.topk(xb @ b32 - 1e9 * xb, 20).indices
    top64 = torch.topk(xb.double() @ b64 - 1e9 * xb.double(), 20).indices
    same = (top32 == top64).all(dim=1).double().mean().item()
    return (f"EASE float32 vs float64, pooled, λ={lam:g}: max |ΔB| {(b32.double() - b64).abs().max().item():.2e} "
            f"(max |B| {b64.abs().max().item():.3f}); users with identical top-20 lists {same:.4f}")


def solve_timing(n_items: int, repeats: int = 3) -> str:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(3000, n_items, generator=gen) < 0.03).float()
    g = x.T @ x
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ease_weights(g, 300.0)
        times.append(time.perf_counter() - start)
    return (f"one EASE solve, {n_items} items, float32: best {min(times):.3f}s of {repeats} "
            f"({torch.get_num_threads()} threads)")


def run(label: str, overrides: list[str]) -> None:
    silos = build_world(overrides)
    n_items = next(iter(silos.values())).n_items
    print(f"\n== {label}: {len(silos)} silos, {n_items} items, overrides={overrides}")
    start = time.perf_counter()
    results = run_baselines(silos, NAMES)
    print(f"run_baselines wall {time.perf_counter() - start:.1f}s")
    print_table(silos, results)
    print_choices(results)
    choice = results["ease"].centralized_choice
    if choice is not None and choice.value is not None:
        for lam in sorted({choice.value, min(v for v in choice.valid_ndcg if v is not None)}):
            print(precision_check(pooled_matrix(silos), lam))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", nargs="+", default=["synthetic", "ml100k"], choices=["synthetic", "ml100k"])
    ap.add_argument("--ml100k-path", default="/tmp/fedrec-ml-100k")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()}"
          f" torch {torch.__version__} threads {torch.get_num_threads()}")
    worlds = {"synthetic": [], "ml100k": ["experiment=ml100k", f"dataset.path={args.ml100k_path}"]}
    for w in args.worlds:
        run(w, [*worlds[w], f"seed={args.seed}"])
    print()
    for n in (1682, 5000):
        print(solve_timing(n))


if __name__ == "__main__":
    main()
