"""A line of the region's own: a fork of a global version, or `adopt: adapt`'s own line, trained on local data only.

A line holds its whole model (the global-side arrays it started from and has trained since, its users' parameters
and its optimizer moments) and which training messages it has trained for, so a replayed message trains nothing.
`fedrec.silo.serving` stores it (`RegionServing.line`, `save_line`) and starts the fork (`advance_fork`);
`fedrec.silo.adaptation` keeps the own line and `fedrec.silo.departure` the line a departing region takes along.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.data.split import SiloData
from fedrec.evaluation import SiloEvaluation, evaluate_model
from fedrec.models import ModelSpec
from fedrec.silo.round import train_round
from fedrec.training import Arrays, Tensors, TrainConfig, assemble_model, refit_users


@dataclass(frozen=True)
class Fork:
    """A region's own line: started from `base` at `since_round`, trained locally `rounds` times since."""

    base: str
    since_round: int
    rounds: int
    global_arrays: Arrays
    local: Tensors
    optimizer: Arrays
    last_trained: str = ""
    """`<run>/<round>` of the training message the fork last trained for (a replay of it trains nothing)."""
    trained_rounds: str = ""
    """The own line's rounds of run `last_trained`'s run it trained for, comma-separated (a replay of any of
    them trains nothing; rounds need not come in order)."""


def train_line(line: Fork, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, seed: int, key: str) -> Fork:
    """One local round of a region's own line on its data only (`key`: the training message it answers)."""
    out = train_round(silo, spec, line.global_arrays, line.local or None, cfg, seed=seed,
                      optimizer_state=line.optimizer)
    return Fork(base=line.base, since_round=line.since_round, rounds=line.rounds + 1, global_arrays=out.global_after,
                local=out.local_after, optimizer=out.optimizer_after, last_trained=key)


def evaluate_fork(fork: Fork, silo: SiloData, spec: ModelSpec, cfg: TrainConfig, *, seed: int,
                  split: str = "test") -> SiloEvaluation:
    """The fork's own model (its global-side arrays and its users), under the same protocol as a global one."""
    model = assemble_model(spec, silo, fork.global_arrays, fork.local, seed=seed)
    return evaluate_model(refit_users(model, silo, cfg, seed=seed), silo, split=split,
                          rmse_too=cfg.loss == "mse")
