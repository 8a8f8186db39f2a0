"""The two bounds every federated result is read against, built from the same code and data split.

- centralized: one model trained on all silos' training data pooled (what sovereignty costs);
- local-only: each silo trains the same model alone (what federation buys each region);
- popularity: each silo recommends its own most popular items (the floor a model must beat).
All use the same number of passes over the data as the federated run. A statistics model (`model=ease`) is
solved instead of trained, with the federation's own functions (`fedrec.statistics`): centralized = solve(Σ
every silo's statistics), local-only = each silo's solve of its own. `split="valid"` scores the bounds on the
validation split instead of test (for choosing hyperparameters: `simulations/tune_mf.py`).
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation, evaluate_model
from fedrec.metrics import METRICS, evaluate_full_ranking
from fedrec.models import ModelSpec, build_model, global_state, local_state
from fedrec.models.base import PER_USER_KEYS
from fedrec.statistics import is_statistics_model, solve_curve
from fedrec.training import (
    TrainConfig,
    assemble_model,
    initial_global_arrays,
    make_optimizer,
    refit_users,
    train_epochs,
)


def train_centralized(silos: dict[str, SiloData], spec: ModelSpec, cfg: TrainConfig, *, epochs: int,
                      seed: int, split: str = "test", item_features: np.ndarray | None = None
                      ) -> dict[str, SiloEvaluation]:
    """Pool every silo's training data (users kept distinct), train once, evaluate each region."""
    return centralized_curve(silos, spec, cfg, epochs=[epochs], seed=seed, split=split,
                             item_features=item_features)[epochs]


def centralized_curve(silos: dict[str, SiloData], spec: ModelSpec, cfg: TrainConfig, *, epochs: list[int],
                      seed: int, split: str = "test", item_features: np.ndarray | None = None
                      ) -> dict[int, dict[str, SiloEvaluation]]:
    """`train_centralized` evaluated after each of `epochs` passes, in one training run (as `local_only_curve`).

    `item_features` (the catalog's public features) for a model that starts from them, as the federation does.
    """
    if is_statistics_model(spec):
        return solved_on(silos, spec, seed=seed, split=split, rounds=epochs, item_features=item_features)
    regions = sorted(silos)
    offsets = dict(zip(regions, np.cumsum([0] + [silos[r].n_users for r in regions[:-1]]), strict=True))
    n_items = silos[regions[0]].n_items
    train = (np.concatenate([silos[r].train[0] + offsets[r] for r in regions]),
             np.concatenate([silos[r].train[1] for r in regions]),
             np.concatenate([silos[r].train[2] for r in regions]))
    torch.manual_seed(seed)
    model = build_model(spec, n_users=sum(s.n_users for s in silos.values()), n_items=n_items)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    curve, done = {}, 0
    for target in sorted(set(epochs)):
        train_epochs(model, train, n_items=n_items, cfg=cfg, generator=gen, epochs=target - done, optimizer=opt)
        done = target
        glob = {k: v.numpy() for k, v in global_state(model).items()}
        users = local_state(model)
        out = {}
        for r in regions:
            lo, hi = int(offsets[r]), int(offsets[r]) + silos[r].n_users
            view = assemble_model(spec, silos[r], glob, {k: v[lo:hi] if k in PER_USER_KEYS else v
                                                         for k, v in users.items()}, seed=seed)
            out[r] = evaluate_model(refit_users(view, silos[r], cfg, seed=seed), silos[r], split=split,
                                    rmse_too=cfg.loss == "mse")
        curve[target] = out
    return curve


def local_only_curve(silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, epochs: list[int],
                     seed: int, split: str = "test", item_features: np.ndarray | None = None
                     ) -> dict[int, SiloEvaluation]:
    """One silo alone from the federation's initial global parameters, evaluated after each of `epochs` passes.

    One training run, not one per checkpoint: the optimizer and generator carry across the checkpoints.
    A statistics model runs one solve per round up to the last checkpoint (EASE: one solve in all).
    """
    if is_statistics_model(spec):
        solved = solved_on({silo.region: silo}, spec, seed=seed, split=split, rounds=epochs,
                           item_features=item_features)
        return {e: by_region[silo.region] for e, by_region in solved.items()}
    init = initial_global_arrays(spec, n_items=silo.n_items, seed=seed, item_features=item_features)
    model = assemble_model(spec, silo, init, None, seed=seed)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    out, done = {}, 0
    for target in sorted(set(epochs)):
        train_epochs(model, silo.train, n_items=silo.n_items, cfg=cfg, generator=gen, epochs=target - done,
                     optimizer=opt)
        done = target
        out[target] = evaluate_model(refit_users(model, silo, cfg, seed=seed), silo, split=split,
                                     rmse_too=cfg.loss == "mse")
    return out


def solved_on(silos: dict[str, SiloData], spec: ModelSpec, *, seed: int, split: str = "test",
              rounds: list[int], item_features: np.ndarray | None = None) -> dict[int, dict[str, SiloEvaluation]]:
    """A statistics model solved on these silos' data pooled, after each of `rounds` rounds (one run of solves).

    Each region is scored with its own users' histories.
    """
    n_items = next(iter(silos.values())).n_items
    curve = solve_curve(spec, [silos[r] for r in sorted(silos)], n_items=n_items, seed=seed, rounds=rounds,
                        item_features=item_features)
    return {e: {r: evaluate_model(assemble_model(spec, silos[r], glob, None, seed=seed), silos[r], split=split)
                for r in sorted(silos)} for e, glob in curve.items()}


def popularity(silo: SiloData) -> SiloEvaluation:
    """Recommend the silo's own most-interacted training items to everyone (full ranking, same metric code)."""
    counts = torch.as_tensor(np.bincount(silo.train[1], minlength=silo.n_items), dtype=torch.float32)
    per_user = evaluate_full_ranking(lambda u: counts.expand(len(u), -1).clone(), n_items=silo.n_items,
                                     targets=silo.test[:2], exclude=[silo.train[:2], silo.valid[:2]])
    return SiloEvaluation(sums={m: float(per_user[m].sum()) for m in METRICS}, n_users=len(per_user["users"]))
