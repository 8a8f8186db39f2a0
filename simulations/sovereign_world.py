"""Does pooling matter in `experiment=sovereign_dp`? Pooled vs local-only simple baselines (and MF), per region.

Builds the world the way `fedrec` does (the real Hydra config, `load_dataset`, `prepare_world`), times the
generation, then runs `fedrec.baselines.run_baselines` (EASE, ItemKNN, popularity; pooled and local-only, each
hyperparameter chosen on validation, fit on train, scored on test) and prints, per region, test NDCG@20 of
each baseline pooled and local, the ratio pooled / local, and the ratio of the two validation-picked bests
(the pooled baseline vs the region's own local baseline: what a region could deploy without joining). The
world's targets (issue 13): pooled >= 1.10 x local-only NDCG@20 in every region holding < 10% of users, and
each region's local baseline above popularity in the big regions. `--mf-epochs N` adds biased MF trained
centralized and local-only for N passes with `fedrec.bounds` (the default train config, one thread).

Usage (one torch thread, as the measurements in simulations/README.md):
  OMP_NUM_THREADS=1 python simulations/sovereign_world.py                       # full grids, seed 0
  OMP_NUM_THREADS=1 python simulations/sovereign_world.py --grid quick -- dataset.region_shift=0.3
  OMP_NUM_THREADS=1 python simulations/sovereign_world.py --mf-epochs 5 --seed 1
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedrec.baselines import BaselineResult, run_baselines
from fedrec.baselines.summary import best_local, best_pooled
from fedrec.bounds import local_only_curve, train_centralized
from fedrec.commands.run import conf_dir
from fedrec.config import ExperimentConfig, experiment_from_dict
from fedrec.data.registry import load_dataset
from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.world import prepare_world

NAMES = ["ease", "itemknn", "popularity"]
QUICK_GRIDS = {"ease": [100.0, 300.0, 1000.0], "itemknn": [50.0, 200.0, 800.0]}
SMALL_SHARE = 0.10  # regions holding fewer users than this share of the world must gain from pooling
TARGET = 1.10
METRIC = "ndcg@20"


def experiment(overrides: list[str]) -> ExperimentConfig:
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=overrides)
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    return experiment_from_dict({k: v for k, v in raw.items() if k not in ("progress", "experiment", "hydra")})


def ndcg(ev: SiloEvaluation) -> float:
    return ev.sums[METRIC] / max(ev.n_users, 1)


def world_facts(silos: dict[str, SiloData], n_catalog: int, n_features: int) -> dict[str, float]:
    users = sum(s.n_users for s in silos.values())
    inter = sum(len(s.train[0]) + len(s.valid[0]) + len(s.test[0]) for s in silos.values())
    sizes = [s.n_users for s in silos.values()]
    print(f"world: {len(silos)} regions, {users:,} users ({min(sizes):,} to {max(sizes):,}, ratio "
          f"{max(sizes) / min(sizes):.1f}), {n_catalog:,} items, {n_features} public item features, "
          f"{inter:,} interactions kept after the split ({inter / users:.1f} per user, density "
          f"{inter / users / n_catalog:.2e})")
    return {"users": users}


def print_ratios(silos: dict[str, SiloData], results: dict[str, BaselineResult]) -> list[str]:
    """Per-region table; returns the failed targets (empty when the world is what the issue asks)."""
    total = sum(s.n_users for s in silos.values())
    ran = [n for n in NAMES if results[n].skipped is None]
    local_pick, pooled_pick = best_local(results), best_pooled(results)
    assert local_pick is not None and pooled_pick is not None
    head = "".join(f"{n[:7] + ' pool':>13}{'local':>8}{'ratio':>7}" for n in ran)
    print(f"\ntest NDCG@20{'':<6}{'users':>7}{'share':>7}{head}{'best pool':>11}{'best local':>11}{'ratio':>7}")
    failed = []
    for r in sorted(silos, key=lambda r: -silos[r].n_users):
        share = silos[r].n_users / total
        row = f"{r:<18}{silos[r].n_users:>7}{share:>7.1%}"
        for n in ran:
            p, lo = ndcg(results[n].centralized[r]), ndcg(results[n].local_only[r])
            row += f"{p:>13.4f}{lo:>8.4f}{p / lo:>7.3f}"
        bp, bl = ndcg(pooled_pick.test[r]), ndcg(local_pick.test[r])
        pop_local = ndcg(results["popularity"].local_only[r])
        row += f"{bp:>11.4f}{bl:>11.4f}{bp / bl:>7.3f}  ({pooled_pick.names[r]} / {local_pick.names[r]})"
        print(row)
        if share < SMALL_SHARE and bp / bl < TARGET:
            failed.append(f"{r}: pooled/local {bp / bl:.3f} < {TARGET}")
        if share >= SMALL_SHARE and bl <= pop_local:
            failed.append(f"{r}: local baseline {bl:.4f} <= its popularity {pop_local:.4f}")
    overall = {n: (pool(results[n].centralized)[1][METRIC], pool(results[n].local_only)[1][METRIC]) for n in ran}
    print("overall" + "".join(f"  {n} {p:.4f}/{lo:.4f}" for n, (p, lo) in overall.items()))
    for n in ran:
        res = results[n]
        if res.hyperparameter:
            local = ", ".join(f"{r} {c.value:g}" for r, c in sorted(res.local_choice.items()) if c.value is not None)
            pooled = res.centralized_choice.value if res.centralized_choice else None
            print(f"{n} {res.hyperparameter} on validation: pooled {pooled:g}; local {local}"
                  f"  (fit {res.seconds['total']:.0f} s incl. evaluation)")
    return failed


def run_mf(silos: dict[str, SiloData], exp: ExperimentConfig, epochs: int, seed: int) -> None:
    train = exp.train
    t = time.perf_counter()
    cent = train_centralized(silos, exp.model, train, epochs=epochs, seed=seed)
    t_cent = time.perf_counter() - t
    t = time.perf_counter()
    local = {r: local_only_curve(silos[r], exp.model, train, epochs=[epochs], seed=seed)[epochs] for r in silos}
    t_local = time.perf_counter() - t
    print(f"\nMF ({exp.model.name} dim {exp.model.dim}, loss {train.loss}, {epochs} passes): centralized "
          f"{t_cent:.0f} s, local-only {t_local:.0f} s")
    print(f"{'region':<12}{'users':>7}{'central':>9}{'local':>8}{'ratio':>7}")
    for r in sorted(silos, key=lambda r: -silos[r].n_users):
        c, lo = ndcg(cent[r]), ndcg(local[r])
        print(f"{r:<12}{silos[r].n_users:>7}{c:>9.4f}{lo:>8.4f}{c / lo:>7.3f}")
    print(f"{'overall':<19}{pool(cent)[1][METRIC]:>9.4f}{pool(local)[1][METRIC]:>8.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", choices=["full", "quick"], default="full",
                    help="full: the baselines' own grids (as every fedrec run); quick: 3 values each")
    ap.add_argument("--mf-epochs", type=int, default=0, help="also train MF centralized and local-only (0: skip)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides after `--`, applied after experiment=sovereign_dp")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, python {platform.python_version()}, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    exp = experiment(["experiment=sovereign_dp", f"seed={args.seed}", *args.overrides])
    print(f"dataset: {exp.dataset.params}")
    t = time.perf_counter()
    data = load_dataset(exp.dataset.name, exp.dataset.params)
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    world = prepare_world(data, exp.split, Path(tempfile.mkdtemp(prefix="fedrec-sov-")))
    t_split = time.perf_counter() - t
    print(f"generation {t_gen:.1f} s ({len(data):,} interactions), split + write {t_split:.1f} s")
    world_facts(world.silos, data.catalog.n_items, data.catalog.n_features)
    grids = QUICK_GRIDS if args.grid == "quick" else None
    t = time.perf_counter()
    results = run_baselines(world.silos, NAMES, grids=grids)
    print(f"baselines ({args.grid} grids): {time.perf_counter() - t:.0f} s")
    failed = print_ratios(world.silos, results)
    print("targets: " + ("all met" if not failed else "MISSED: " + "; ".join(failed)))
    if args.mf_epochs:
        run_mf(world.silos, exp, args.mf_epochs, args.seed)
    print(f"regions by size: {[(r, s.n_users) for r, s in sorted(world.silos.items(), key=lambda x: -x[1].n_users)]}")
    print(f"item ids per region seen in training: "
          f"{ {r: int(np.unique(s.train[1]).size) for r, s in world.silos.items()} }")


if __name__ == "__main__":
    main()
