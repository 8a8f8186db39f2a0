"""One silo's user-level DP training round for MF: Poisson-sampled users, clipped and noised item-side steps.

Groundwork for the DP issue (not yet called by the ClientApp): it returns the released global parameters
together with the privacy event the silo's ledger must authorize *before* they are sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.federation.silo import Arrays, Tensors, assemble_model, optimizer_from_arrays, optimizer_to_arrays
from fedrec.models import ModelSpec, global_state, local_state
from fedrec.models.base import is_local
from fedrec.models.mf import BiasedMF
from fedrec.privacy.accountant import GaussianSteps
from fedrec.privacy.dp_mf import dp_mf_step
from fedrec.privacy.sampling import CappedHistories, poisson_user_batch
from fedrec.training import TrainConfig


@dataclass(frozen=True)
class DpTrainConfig:
    """Keyword-only DP parameters of a silo's round; validated with the value and the fix in the message."""

    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    max_per_user: int = 64

    def __post_init__(self) -> None:
        if self.clip_norm <= 0:
            raise ConfigError(f"privacy.clip_norm={self.clip_norm} must be > 0 (the bound on one user's update)")
        if self.noise_multiplier <= 0:
            raise ConfigError(f"privacy.noise_multiplier={self.noise_multiplier} must be > 0; use privacy=none "
                              "for non-private training")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"privacy.sample_rate={self.sample_rate} must lie in (0, 1]")
        if self.steps_per_round < 1 or self.max_per_user < 1:
            raise ConfigError("privacy.steps_per_round and privacy.max_per_user must be >= 1")

    def event(self) -> GaussianSteps:
        """What one round costs, for the accountant."""
        return GaussianSteps(self.sample_rate, self.noise_multiplier, self.steps_per_round)


@dataclass(frozen=True)
class DpRoundOutcome:
    """Released global parameters (after noise), what stays (local state, optimizer moments), and the cost."""

    global_after: Arrays
    local_after: Tensors
    optimizer_after: Arrays
    event: GaussianSteps
    interactions_over_cap: int
    clipped_fraction: float


def train_round_dp(silo: SiloData, spec: ModelSpec, global_arrays: Arrays, local: Tensors | None,
                   cfg: TrainConfig, dp: DpTrainConfig, *, seed: int,
                   optimizer_state: Arrays | None = None) -> DpRoundOutcome:
    """`dp.steps_per_round` DP steps on the silo's training data; local parameters train without noise."""
    model = assemble_model(spec, silo, global_arrays, local, seed=seed)
    if not isinstance(model, BiasedMF):
        raise ConfigError(f"user-level DP training is implemented for model=mf, not {spec.name!r} (yet)")
    names = dict(model.named_parameters())
    opt_l = torch.optim.Adam([p for n, p in names.items() if is_local(n)], lr=cfg.lr)
    opt_g = torch.optim.Adam([p for n, p in names.items() if not is_local(n)], lr=cfg.lr)
    state = optimizer_state or {}
    optimizer_from_arrays(opt_l, {k[2:]: v for k, v in state.items() if k.startswith("l.")})
    optimizer_from_arrays(opt_g, {k[2:]: v for k, v in state.items() if k.startswith("g.")})
    histories = CappedHistories.build(silo.train[0], silo.train[1], n_users=silo.n_users,
                                      max_per_user=dp.max_per_user, rng=np.random.default_rng(seed))
    gen = torch.Generator().manual_seed(seed)
    expected_users = dp.sample_rate * silo.n_users
    clipped = []
    for _ in range(dp.steps_per_round):
        batch = poisson_user_batch(histories, sample_rate=dp.sample_rate, generator=gen)
        negatives = torch.randint(0, silo.n_items, (cfg.n_negatives,), generator=gen)
        stats = dp_mf_step(model, batch, negatives, clip_norm=dp.clip_norm, noise_multiplier=dp.noise_multiplier,
                           expected_users=expected_users, global_optimizer=opt_g, local_optimizer=opt_l,
                           generator=gen, weight_decay=cfg.weight_decay)
        clipped.append(stats["clipped_fraction"])
    optimizer_after = {f"l.{k}": v for k, v in optimizer_to_arrays(opt_l).items()}
    optimizer_after |= {f"g.{k}": v for k, v in optimizer_to_arrays(opt_g).items()}
    return DpRoundOutcome(
        global_after={k: v.numpy() for k, v in global_state(model).items()},
        local_after=local_state(model),
        optimizer_after=optimizer_after,
        event=dp.event(),
        interactions_over_cap=histories.dropped,
        clipped_fraction=float(np.mean(clipped)) if clipped else 0.0,
    )
