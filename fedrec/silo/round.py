"""What one silo does in a round, as plain functions Flower knows nothing of (the unit tests call these).

A silo keeps its users' parameters (`local`) between rounds; it receives global parameters, trains both on
its own interactions, and hands back only the new global parameters (via `egress`).
"""

from __future__ import annotations

import functools
import json
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.split import SiloData
from fedrec.errors import FedrecError
from fedrec.evaluation import SiloEvaluation, evaluate_model
from fedrec.messages import MAX_ABS_RECEIVED
from fedrec.models import ModelSpec, RecModel, build_model, global_state, local_state
from fedrec.statistics import is_statistics_model, statistics_family, sum_statistics
from fedrec.training import (
    Arrays,
    Tensors,
    TrainConfig,
    assemble_model,
    fitted_model,
    make_optimizer,
    optimizer_from_arrays,
    optimizer_to_arrays,
    train_epochs,
)


def silo_seed(seed: int, region: str, round_: int) -> int:
    """A per-(run, silo, round) seed, stable across processes (no Python `hash`)."""
    return (seed * 1_000_003 + zlib.crc32(region.encode()) + 7919 * round_) % (2**31)



class InvalidGlobalModel(FedrecError):
    """The global parameters a silo received are not a model it will train or evaluate."""


@functools.lru_cache(maxsize=8)
def global_shapes(spec_json: str, n_items: int) -> dict[str, tuple[int, ...]]:
    """The global parameters' names and shapes of a model (built once per spec and catalog, then remembered)."""
    model = build_model(ModelSpec(**json.loads(spec_json)), n_users=1, n_items=n_items)
    return {name: tuple(t.shape) for name, t in global_state(model).items()}


def check_received(arrays: Arrays, spec: ModelSpec, *, n_items: int) -> None:
    """Refuse received global arrays unlike the model's (names, shapes, dtypes) or beyond `MAX_ABS_RECEIVED`.

    Non-finite values are refused too. The check depends only on what was received (public), never on data.
    """
    template = global_shapes(json.dumps(spec.to_dict(), sort_keys=True), n_items)
    if set(arrays) != set(template):
        raise InvalidGlobalModel(f"received parameters {sorted(arrays)}, the model has {sorted(template)}")
    for name, expected in template.items():
        got = np.asarray(arrays[name])
        if got.shape != expected or got.dtype != np.float32:
            raise InvalidGlobalModel(f"{name}: received {got.dtype}{list(got.shape)}, the model has "
                                     f"float32{list(expected)}")
        if got.size and not (np.isfinite(got).all() and float(np.abs(got).max()) <= MAX_ABS_RECEIVED):
            raise InvalidGlobalModel(f"{name}: values must be finite and within ±{MAX_ABS_RECEIVED:g}")


@dataclass(frozen=True)
class RoundOutcome:
    """Result of local training: new global parameters (may leave); local state and optimizer state (stay)."""

    global_after: Arrays
    local_after: Tensors
    optimizer_after: Arrays
    n_examples: int
    loss: float


def train_round(silo: SiloData, spec: ModelSpec, global_arrays: Arrays, local: Tensors | None,
                cfg: TrainConfig, *, seed: int, optimizer_state: Arrays | None = None) -> RoundOutcome:
    """Train global and local parameters for `cfg.epochs` passes over the silo's training interactions.

    The silo's Adam moments (for global parameters too) continue across rounds from `optimizer_state`:
    they are computed from private data and never leave, and keeping them is what lets a silo's updates
    compound like centralized training instead of restarting every round.

    A statistics model (EASE, iALS) is not trained: its round on this silo alone is a solve from the silo's own
    statistics (`solve_alone`; a forked region's own line).
    """
    if is_statistics_model(spec):
        return solve_alone(silo, spec, global_arrays)
    model = assemble_model(spec, silo, global_arrays, local, seed=seed)
    opt = make_optimizer(model, cfg)
    optimizer_from_arrays(opt, optimizer_state)
    gen = torch.Generator().manual_seed(seed)
    loss = train_epochs(model, silo.train, n_items=silo.n_items, cfg=cfg, generator=gen, optimizer=opt)
    return RoundOutcome(
        global_after={k: v.numpy() for k, v in global_state(model).items()},
        local_after=local_state(model),
        optimizer_after=optimizer_to_arrays(opt),
        n_examples=len(silo.train[0]),
        loss=loss,
    )


def solve_alone(silo: SiloData, spec: ModelSpec, global_arrays: Arrays) -> RoundOutcome:
    """A statistics model fitted on this silo's data only: solve from its own statistics.

    Nothing to keep: its per-user state is the silo's history, rebuilt from its data when the model is assembled.
    A solve that fails (a system that does not factor: whether it does depends on the silo's data once the
    received arrays and hyperparameters are crafted) keeps the received arrays: an error here would leave the
    silo as an error reply, outside any DP release.
    """
    family = statistics_family(spec)
    own = sum_statistics([family.local_statistics(silo, global_arrays, spec)])
    try:
        solved = family.solve(own, global_arrays, spec, silo.n_items)
    except (RuntimeError, ValueError):  # torch.linalg.LinAlgError is a RuntimeError
        solved = {k: np.asarray(v) for k, v in global_arrays.items()}
    return RoundOutcome(global_after=solved, local_after={}, optimizer_after={}, n_examples=len(silo.train[0]),
                        loss=float("nan"))


def evaluate_round(silo: SiloData, spec: ModelSpec, global_arrays: Arrays, local: Tensors | None,
                   cfg: TrainConfig, *, seed: int, split: str = "test", withheld: np.ndarray | None = None
                   ) -> SiloEvaluation:
    """Evaluate the received global parameters with this silo's own (re-fitted) per-user state.

    `withheld`: items the region's guard keeps out of every ranking (`fedrec.silo.guard`).
    """
    return evaluate_splits(silo, spec, global_arrays, local, cfg, seed=seed, splits=(split,),
                           withheld=withheld)[split]


def evaluate_splits(silo: SiloData, spec: ModelSpec, global_arrays: Arrays, local: Tensors | None,
                    cfg: TrainConfig, *, seed: int, splits: tuple[str, ...], withheld: np.ndarray | None = None
                    ) -> dict[str, SiloEvaluation]:
    """`evaluate_round` on several splits from one re-fit (the re-fit costs a pass over the silo's data)."""
    return fit_and_evaluate(silo, spec, global_arrays, local, cfg, seed=seed, splits=splits, withheld=withheld)[1]


def fit_and_evaluate(silo: SiloData, spec: ModelSpec, global_arrays: Arrays, local: Tensors | None,
                     cfg: TrainConfig, *, seed: int, splits: tuple[str, ...], withheld: np.ndarray | None = None
                     ) -> tuple[RecModel, dict[str, SiloEvaluation]]:
    """`evaluate_splits`, and the fitted model it scored (for a caller that ranks with it again)."""
    fitted = fitted_model(spec, silo, global_arrays, local, cfg, seed=seed)
    return fitted, {split: evaluate_model(fitted, silo, split=split, rmse_too=cfg.loss == "mse", withheld=withheld)
                    for split in splits}
