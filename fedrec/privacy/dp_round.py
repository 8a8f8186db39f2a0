"""One silo's user-level DP training round: Poisson-sampled users, per-user clipped and noised shared steps.

Parameters fall in two classes. Per-user rows (`PER_USER_KEYS`: user embeddings and biases) depend on their
own user's data only and train with ordinary gradients; they never leave. Every other parameter is shared
by the silo's users — the global ones that are released, and any silo-wide local one such as a two-tower's
user tower — and trains only through clipped, noised user sums, because whatever a silo-wide parameter
learns flows into later releases. The round returns the released global parameters together with the
privacy event the silo's ledger must authorize *before* they are sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.models import ModelSpec, global_state, local_state
from fedrec.models.base import PER_USER_KEYS
from fedrec.models.mf import BiasedMF
from fedrec.models.twotower import TwoTower
from fedrec.privacy.accountant import GaussianSteps
from fedrec.privacy.dp_mf import dp_mf_step
from fedrec.privacy.dp_twotower import dp_twotower_step
from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.sampling import CappedHistories, poisson_user_batch
from fedrec.training import Arrays, Tensors, TrainConfig, assemble_model, optimizer_from_arrays, optimizer_to_arrays

DP_LOSSES = ("softmax",)
"""The losses user-level DP training implements: its closed-form per-user gradients are sampled softmax's
(`dp_mf`, `dp_twotower`), drawing `train.n_negatives` shared negatives per step."""


def check_dp_loss(loss: str) -> None:
    """Refuse a `train.loss` the DP step does not implement (it must not silently train another loss)."""
    if loss not in DP_LOSSES:
        raise ConfigError(f"train.loss={loss!r} is not supported under privacy=user_dp: user-level DP training "
                          f"implements {', '.join(DP_LOSSES)} only (sampled softmax with train.n_negatives "
                          "negatives); set train.loss=softmax or use privacy=none")


@dataclass(frozen=True)
class DpTrainConfig:
    """Keyword-only DP parameters of a silo's round; validated with the value and the fix in the message."""

    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    max_per_user: int = 64
    normaliser: float = 1.0

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
        if not self.normaliser > 0:
            raise ConfigError(f"privacy.normaliser={self.normaliser} must be > 0")

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
                   cfg: TrainConfig, dp: DpTrainConfig, *, seed: int, noise: NoiseSource | None = None,
                   optimizer_state: Arrays | None = None) -> DpRoundOutcome:
    """`dp.steps_per_round` DP steps on the silo's training data; per-user rows train without noise.

    `noise` draws the sampling, the per-user caps and the Gaussian noise (default: the OS CSPRNG); shared
    negatives and fresh user rows are data-independent and come from `seed` either way. Every scale is a
    public constant (the noisy sum is divided by `dp.normaliser`, never by a count of users), so each user's
    hidden state depends only on their own data and on what the silo releases.
    """
    check_dp_loss(cfg.loss)
    noise = noise or NoiseSource("secure")
    model = assemble_model(spec, silo, global_arrays, local, seed=seed)
    if not isinstance(model, BiasedMF | TwoTower):
        raise ConfigError(f"user-level DP training is implemented for model=mf and model=twotower, not {spec.name!r}")
    names = dict(model.named_parameters())
    opt_l = torch.optim.Adam([p for n, p in names.items() if n in PER_USER_KEYS], lr=cfg.lr)
    opt_g = torch.optim.Adam([p for n, p in names.items() if n not in PER_USER_KEYS], lr=cfg.lr)
    state = optimizer_state or {}
    optimizer_from_arrays(opt_l, {k[2:]: v for k, v in state.items() if k.startswith("l.")})
    optimizer_from_arrays(opt_g, {k[2:]: v for k, v in state.items() if k.startswith("g.")})
    histories = CappedHistories.build(silo.train[0], silo.train[1], n_users=silo.n_users,
                                      max_per_user=dp.max_per_user, keys=noise.uniform(len(silo.train[0])).numpy())
    gen = torch.Generator().manual_seed(seed)
    clipped = []
    for _ in range(dp.steps_per_round):
        batch = poisson_user_batch(histories, sample_rate=dp.sample_rate, noise=noise)
        negatives = torch.randint(0, silo.n_items, (cfg.n_negatives,), generator=gen)
        if isinstance(model, BiasedMF):
            stats = dp_mf_step(model, batch, negatives, clip_norm=dp.clip_norm, noise_multiplier=dp.noise_multiplier,
                               global_optimizer=opt_g, normaliser=dp.normaliser, local_optimizer=opt_l,
                               noise=noise, weight_decay=cfg.weight_decay)
        else:
            stats = dp_twotower_step(model, batch, negatives, clip_norm=dp.clip_norm,
                                     noise_multiplier=dp.noise_multiplier,
                                     shared_optimizer=opt_g, normaliser=dp.normaliser, per_user_optimizer=opt_l,
                                     noise=noise,
                                     weight_decay=cfg.weight_decay)
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
