"""Tune a model's training on VALIDATION, then report the chosen setting's TEST figures.

Composes the real Hydra config (`conf/`) with the given overrides and builds the world the way `fedrec` does.
Each grid point replaces some values of that config (`train.*`, `model.dim`, `model.kwargs.hidden`,
`federation.local_epochs`, `strategy.server_lr`) and is trained, once per mode, on the training split:
- federated: FedAvg with the server learning rate and uniform weights, in process (`federated_curve`: the
  silos' own `train_round` / `evaluate_round`, no Flower, no Ray: a proxy, see its docstring);
- centralized: `fedrec.bounds.centralized_curve`; local-only: `fedrec.bounds.local_only_curve`.
Each run is read at several epoch counts (rounds x local epochs for the federation, passes otherwise) on the
validation split, pooled over silos as `results.json` pools them. The chosen setting is the best validation
NDCG@20 of the first mode given (default: federated, the model regions are served). Only then is the test
split touched: the chosen setting's test NDCG@20 per mode and popularity's, overall and per region. Report
the federation from `fedrec` itself with the chosen values.

Usage:
  python simulations/tune_mf.py -- experiment=ml100k dataset.path=/tmp/fedrec-ml-100k
  python simulations/tune_mf.py --grid twotower --modes centralized local_only --no-test -- experiment=ml100k ...
  python simulations/tune_mf.py --grid synthetic --epochs 10 20                    # the default synthetic world
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from fedrec.bounds import centralized_curve, local_only_curve, popularity
from fedrec.commands.run import compose_experiment
from fedrec.config import ExperimentConfig
from fedrec.data.registry import load_dataset
from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation, pool
from fedrec.models import ModelSpec
from fedrec.silo.round import evaluate_round, silo_seed, train_round
from fedrec.training import Arrays, TrainConfig, initial_global_arrays
from fedrec.world import prepare_world

Setting = dict[str, Any]
"""`train.*` keys (loss, lr, weight_decay, batch_size, n_negatives, refit_epochs) and dim, hidden,
local_epochs, server_lr."""
NOT_TRAIN = ("dim", "hidden", "local_epochs", "server_lr")
MODES = ("federated", "centralized", "local_only")

OLD = {"loss": "softmax", "dim": 32, "weight_decay": 1e-5, "batch_size": 512}  # the shipped defaults
BEST = {"loss": "full_softmax", "dim": 64, "weight_decay": 0.03, "batch_size": 128}
GRIDS: dict[str, list[Setting]] = {
    # The shipped defaults; then around the best of exploration: the loss, L2, dimension, batch size (local
    # steps per round: what the federation needed most), lr, local epochs and the user re-fit.
    "mf": [
        OLD, BEST, {**BEST, "loss": "softmax"}, {**BEST, "loss": "bpr"},
        {**BEST, "weight_decay": 0.01}, {**BEST, "weight_decay": 0.1},
        {**BEST, "dim": 32}, {**BEST, "dim": 128},
        {**BEST, "batch_size": 512}, {**BEST, "batch_size": 64},
        {**BEST, "lr": 0.003}, {**BEST, "local_epochs": 2}, {**BEST, "refit_epochs": 3},
    ],
    "twotower": [
        OLD, {**BEST, "batch_size": 64}, BEST, {**BEST, "weight_decay": 0.01}, {**BEST, "weight_decay": 0.1},
    ],
    # The default synthetic world: the loss, then L2 at the default dimension and batch (dim 64 overfit here).
    "synthetic": [OLD, *({**OLD, "loss": "full_softmax", "weight_decay": wd} for wd in (1e-5, 0.01, 0.03, 0.05, 0.1)),
                  BEST],
}


def build(overrides: list[str]) -> tuple[ExperimentConfig, dict[str, SiloData]]:
    exp = compose_experiment(overrides)
    data = load_dataset(exp.dataset.name, exp.dataset.params)
    return exp, prepare_world(data, exp.split, Path(tempfile.mkdtemp(prefix="fedrec-tune-"))).silos


def apply(exp: ExperimentConfig, setting: Setting, model: str | None) -> tuple[ModelSpec, TrainConfig]:
    """The experiment's model and training config with `setting`'s values (and `model` as the model name)."""
    kwargs = dict(exp.model.kwargs) | ({"hidden": setting["hidden"]} if "hidden" in setting else {})
    spec = replace(exp.model, name=model or exp.model.name, dim=setting.get("dim", exp.model.dim), kwargs=kwargs)
    return spec, replace(exp.train, **{k: v for k, v in setting.items() if k not in NOT_TRAIN})


def federated_curve(silos: dict[str, SiloData], spec: ModelSpec, cfg: TrainConfig, *, rounds: list[int],
                    server_lr: float, seed: int, split: str) -> dict[int, dict[str, SiloEvaluation]]:
    """FedAvg with a server learning rate and uniform weights, in process, evaluated after each of `rounds`.

    Every silo trains every round with its own `train_round` (its local state and Adam moments kept across
    rounds, `cfg.epochs` passes) and evaluates with `evaluate_round`, seeded by `silo_seed` as in `fedrec`.
    A proxy for tuning: no Flower messages, no update screening, strategy fedavg only (what `fedrec` runs for
    strategy=fedavg, weighting=uniform, fraction_train=1); the reported figures come from `fedrec` itself.
    """
    glob: Arrays = initial_global_arrays(spec, n_items=next(iter(silos.values())).n_items, seed=seed)
    state: dict[str, tuple[Any, Any]] = dict.fromkeys(silos, (None, None))
    out: dict[int, dict[str, SiloEvaluation]] = {}
    for rnd in range(1, max(rounds) + 1):
        after = []
        for r in sorted(silos):
            res = train_round(silos[r], spec, glob, state[r][0], cfg, seed=silo_seed(seed, r, rnd),
                              optimizer_state=state[r][1])
            state[r] = (res.local_after, res.optimizer_after)
            after.append(res.global_after)
        glob = {k: (v + server_lr * (sum(a[k] for a in after) / len(after) - v)).astype(v.dtype)
                for k, v in glob.items()}
        if rnd in rounds:
            out[rnd] = {r: evaluate_round(silos[r], spec, glob, state[r][0], cfg, seed=silo_seed(seed, r, rnd),
                                          split=split) for r in sorted(silos)}
    return out


_WORLD: dict[str, Any] = {}


def _init(exp: ExperimentConfig, silos: dict[str, SiloData], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORLD.update(exp=exp, silos=silos)


def curves(task: tuple[str, Setting, str | None, list[int], str]) -> tuple[dict[int, dict[str, SiloEvaluation]], float]:
    """One training run of `mode` for `setting`, evaluated on `split` after each epoch count (in a worker)."""
    mode, setting, model, epochs, split = task
    exp, silos = _WORLD["exp"], _WORLD["silos"]
    spec, cfg = apply(exp, setting, model)
    start = time.perf_counter()
    if mode == "federated":  # an epoch count is rounds x local epochs
        le = setting.get("local_epochs", exp.federation.local_epochs)
        fed = federated_curve(silos, spec, replace(cfg, epochs=le), rounds=[e // le for e in epochs],
                              server_lr=setting.get("server_lr", exp.strategy.server_lr), seed=exp.seed, split=split)
        out = {e: fed[e // le] for e in epochs}
    elif mode == "centralized":
        out = centralized_curve(silos, spec, cfg, epochs=epochs, seed=exp.seed, split=split)
    else:
        per_silo = {r: local_only_curve(s, spec, cfg, epochs=epochs, seed=exp.seed, split=split)
                    for r, s in silos.items()}
        out = {e: {r: c[e] for r, c in per_silo.items()} for e in epochs}
    return out, time.perf_counter() - start


def label(setting: Setting) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in setting.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", choices=sorted(GRIDS), default="mf")
    ap.add_argument("--model", default=None, help="model for every grid point (default: twotower for that grid, "
                                                  "else the config's)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the first one chooses")
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 30, 45])
    ap.add_argument("--no-test", action="store_true", help="validation table only")
    ap.add_argument("--jobs", type=int, default=2, help="processes, each with --threads torch threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    model = args.model or ("twotower" if args.grid == "twotower" else None)
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()} "
          f"torch {torch.__version__}, {args.jobs} jobs x {args.threads} threads; overrides={args.overrides}")
    exp, silos = build(args.overrides)
    if "federated" in args.modes and (exp.strategy.name != "fedavg" or exp.federation.weighting != "uniform"
                                      or exp.federation.fraction_train != 1.0):
        raise SystemExit("the in-process federation is FedAvg with uniform weights and every silo only")
    grid = GRIDS[args.grid]
    print(f"world: {len(silos)} silos, {next(iter(silos.values())).n_items} items; model={model or exp.model.name}; "
          f"every setting starts from train={exp.train}, model.dim={exp.model.dim}, "
          f"local_epochs={exp.federation.local_epochs}, server_lr={exp.strategy.server_lr}", flush=True)
    tasks = [(mode, s, model, args.epochs, "valid") for s in grid for mode in args.modes]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init,
                             initargs=(exp, silos, args.threads)) as workers:
        results = []
        for (mode, s, *_), res in zip(tasks, workers.map(curves, tasks), strict=True):
            print(f"  {mode:<12} {label(s)}: {res[1]:.0f}s", file=sys.stderr, flush=True)
            results.append(res)
    done = iter(results)
    valid = [{mode: next(done) for mode in args.modes} for _ in grid]

    print("\nvalidation NDCG@20 (user-weighted over silos); seconds: one training run through all epoch counts")
    head = "".join(f"{m:>13}" for m in args.modes)
    print(f"{'setting':<66}{'epochs':>7}{head}   seconds")
    scores = []
    for i, s in enumerate(grid):
        for e in args.epochs:
            row = [pool(valid[i][m][0][e])[1]["ndcg@20"] for m in args.modes]
            scores.append((row[0], i, e))
            secs = "/".join(f"{valid[i][m][1]:.0f}" for m in args.modes)
            print(f"{label(s):<66}{e:>7}" + "".join(f"{v:>13.4f}" for v in row) + f"   {secs}")
    score, i, e = max(scores)
    print(f"\nchosen (best {args.modes[0]} validation NDCG@20, {score:.4f}): {label(grid[i])}, {e} epochs")
    if args.no_test:
        return

    _init(exp, silos, args.threads)
    test = {m: pool(curves((m, grid[i], model, [e], "test"))[0][e]) for m in args.modes}
    test["popularity"] = pool({r: popularity(s) for r, s in silos.items()})
    print(f"\nTEST NDCG@20 of the chosen setting, {e} epochs")
    print(f"{'region':<12}" + "".join(f"{m:>13}" for m in test))
    for r in sorted(silos):
        print(f"{r:<12}" + "".join(f"{t[0][r]['ndcg@20']:>13.4f}" for t in test.values()))
    print(f"{'overall':<12}" + "".join(f"{t[1]['ndcg@20']:>13.4f}" for t in test.values()))


if __name__ == "__main__":
    main()
