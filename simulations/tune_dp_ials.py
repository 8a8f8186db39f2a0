"""Tune DP iALS (`model=ials privacy=user_dp`) on VALIDATION at a given ε, then report the choice on TEST.

A DP federation's round is each silo's `fedrec.statistics.dp_ials.release` (its bounded sums plus Gaussian
noise at the σ its plan calibrates for the run's rounds) and the coordinator's `DpIalsStatistics.solve` of
their sum. This script runs exactly those functions in process (seeded noise, one seed per grid point) and
scores every region's validation users after each round, so a grid costs seconds per point instead of a
Flower run. It picks the best pooled validation NDCG@20, then prints that setting's test NDCG@20 per region;
report the federation itself from `fedrec` with the chosen values.

Usage (the world of issue 13):
  python simulations/tune_dp_ials.py --epsilon 8 -- experiment=sovereign_dp
  python simulations/tune_dp_ials.py --epsilon 2 --rounds 1 2 --dims 32 --caps 8 16 -- experiment=sovereign_dp
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from tune_mf import build

import fedrec.statistics.dp_ials as dp_ials
from fedrec.data.registry import load_dataset
from fedrec.evaluation import evaluate_model, pool
from fedrec.models import ModelSpec
from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.plan import PrivacySettings, make_plan
from fedrec.statistics import statistics_family, sum_statistics
from fedrec.training import assemble_model, initial_global_arrays


def dp_curve(silos: dict[str, Any], spec: ModelSpec, features: np.ndarray | None, privacy: PrivacySettings, *,
             epsilon: float, rounds: int, cap: int, clip: float, seed: int, split: str) -> list[Any]:
    """Pooled and per-region `split` metrics after each of `rounds` DP rounds (the run planned for `rounds`)."""
    p = replace(privacy, mode="user_dp", epsilon=epsilon, max_per_user=cap, clip_norm=clip)
    plan = make_plan(p, budget=epsilon, delta=p.delta, rounds=rounds, prior=[], mechanism="dp_statistics")
    family = statistics_family(spec, private=True)
    n_items = next(iter(silos.values())).n_items
    arrays = initial_global_arrays(spec, n_items=n_items, seed=seed, item_features=features)
    noise = NoiseSource("seeded", seed=seed)
    out = []
    for _ in range(rounds):
        summed = sum_statistics(dp_ials.release(s, arrays, spec, clip_norm=plan.clip_norm,
                                                max_per_user=plan.max_per_user,
                                                noise_multiplier=plan.noise_multiplier, noise=noise)
                                for _, s in sorted(silos.items()))
        arrays = family.solve(summed, arrays, spec, n_items)
        out.append(pool({r: evaluate_model(assemble_model(spec, s, arrays, None, seed=seed), s, split=split)
                         for r, s in silos.items()}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--dims", type=int, nargs="+", default=[32])
    ap.add_argument("--alpha0", type=float, nargs="+", default=[0.01])
    ap.add_argument("--lam", type=float, nargs="+", default=[0.01])
    ap.add_argument("--caps", type=int, nargs="+", default=[16])
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--noise-ridge", type=float, nargs="+", default=[dp_ials.NOISE_RIDGE])
    ap.add_argument("--inits", nargs="+", default=["features"])
    ap.add_argument("--no-test", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()} "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; ε={args.epsilon}; {args.overrides}")
    exp, silos = build(["model=ials", *args.overrides])
    data = load_dataset(exp.dataset.name, exp.dataset.params)
    features = data.catalog.features
    print(f"world: {len(silos)} silos, {next(iter(silos.values())).n_items} items, "
          f"{sum(s.n_users for s in silos.values())} users; public features: "
          f"{None if features is None else features.shape}", flush=True)
    print(f"\n{'dim':>4}{'alpha0':>8}{'lam':>7}{'cap':>5}{'ridge':>7}{'init':>9}{'R':>3}  "
          "valid NDCG@20 by round   seconds")
    scores = []
    for dim, a0, lam, cap, ridge, init, rounds in itertools.product(args.dims, args.alpha0, args.lam, args.caps,
                                                                     args.noise_ridge, args.inits, args.rounds):
        dp_ials.NOISE_RIDGE = ridge
        spec = replace(exp.model, dim=dim, kwargs={"alpha0": a0, "lam": lam, "nu": 1.0, "init": init})
        start = time.perf_counter()
        curve = dp_curve(silos, spec, features, exp.privacy.settings(), epsilon=args.epsilon, rounds=rounds,
                         cap=cap, clip=args.clip, seed=exp.seed, split="valid")
        row = [c[1]["ndcg@20"] for c in curve]
        scores.append((row[-1], spec, cap, ridge, rounds))
        print(f"{dim:>4}{a0:>8g}{lam:>7g}{cap:>5}{ridge:>7g}{init:>9}{rounds:>3}  "
              + " ".join(f"{v:.4f}" for v in row) + f"   {time.perf_counter() - start:.0f}", flush=True)
    best, spec, cap, ridge, rounds = max(scores, key=lambda t: t[0])
    print(f"\nchosen (validation {best:.4f}): dim={spec.dim} {spec.kwargs} cap={cap} noise_ridge={ridge} "
          f"rounds={rounds}")
    if args.no_test:
        return
    dp_ials.NOISE_RIDGE = ridge
    regions, overall = dp_curve(silos, spec, features, exp.privacy.settings(), epsilon=args.epsilon,
                                rounds=rounds, cap=cap, clip=args.clip, seed=exp.seed, split="test")[-1]
    print("TEST NDCG@20 of the chosen setting: " + " ".join(f"{r} {v['ndcg@20']:.4f}" for r, v in regions.items())
          + f" | overall {overall['ndcg@20']:.4f}")


if __name__ == "__main__":
    main()
