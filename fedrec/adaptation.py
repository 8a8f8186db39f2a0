"""A global version adapted to one region's own data, inside its silo (`adopt: adapt`): Flower-free math.

Adaptation uses only the silo's own training data and is never sent, so it costs no privacy. The silo
(`fedrec.silo.adaptation`) scores the variants on its validation users and serves the best.

- iALS (`adapt_ials`): a MAP item solve with the candidate as prior. With the silo's users solved against the
  candidate H and its own exact statistics (A_i = Σ_{u∈U_i} w_u w_uᵀ, b_i = Σ_{u∈U_i} w_u, G = Σ_u w_u w_uᵀ,
  the frequency-scaled ridge of its own counts), each item solves
  (A_i + α₀G + ridge_i·I + μI) h_i = b_i + μ h_i^cand, i.e. argmin of the silo's own iALS objective
  + μ Σ_i ‖h_i − h_i^cand‖². μ = 0 is the silo's local solve from the candidate's user factors
  (`fedrec.silo.round.solve_alone`); μ = ∞ is the candidate itself.
- EASE: nothing to adapt. Its solve does not start from the global B, so EASE adapted to the silo's data is
  its local EASE, which the region's own line already is.
- SGD models (mf, twotower) are fine-tuned by the silo's own training round (`fedrec.silo.round.train_round`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedrec.data.split import SiloData
from fedrec.models import ModelSpec
from fedrec.models.ials import IALS, ridge_rows, unpack
from fedrec.statistics import is_statistics_model, statistics_family, sum_statistics
from fedrec.statistics.ials import FACTORS, ITEM_GRAM, ITEM_RHS, ITEM_USERS, USER_GRAM, USERS
from fedrec.training import Arrays

Adapter = Callable[[SiloData, Arrays, ModelSpec, Sequence[float], int], dict[float, Arrays]]


def map_item_solve(own: Arrays, spec: ModelSpec, prior: np.ndarray, mu: float) -> np.ndarray:
    """Every item's (A_i + α₀G + ridge_i·I + μI) h_i = b_i + μ·prior_i from one silo's statistics (float64).

    `own` holds the silo's statistics summed in float64 (`sum_statistics`), as the coordinator's solve reads
    them; the ridge is iALS's λ(|U_i| + α₀|U|)^ν of the silo's own counts.
    """
    model = IALS(1, 1, spec.dim, **spec.kwargs)
    dim = spec.dim
    g = unpack(torch.from_numpy(np.asarray(own[USER_GRAM], dtype=np.float64)), dim).numpy()
    counts = np.asarray(own[ITEM_USERS], dtype=np.float64)
    ridge = model.lam * (counts + model.alpha0 * float(own[USERS][0])) ** model.nu
    rhs = np.asarray(own[ITEM_RHS], dtype=np.float64)
    if mu:
        rhs, ridge = rhs + mu * np.asarray(prior, dtype=np.float64), ridge + mu
    return ridge_rows(np.asarray(own[ITEM_GRAM], dtype=np.float64), rhs, model.alpha0 * g, ridge)


def adapt_ials(silo: SiloData, global_arrays: Arrays, spec: ModelSpec, strengths: Sequence[float], sweeps: int = 1
               ) -> dict[float, Arrays]:
    """For each μ in `strengths`, the candidate's item factors adapted to the silo's data (μ = inf: the candidate).

    `sweeps` alternating sweeps of the MAP objective: the silo's users re-solved against the current item
    factors, then the MAP item solve, always towards the candidate (the first sweep's statistics, against the
    candidate itself, are shared by every μ).

    A μ whose solve fails (a system that does not factor: with crafted arrays, whether it does depends on the
    silo's data) or is not finite in float32 is left out, never raised: an error would leave the silo as an
    error reply to the evaluation message, a release about its data.
    """
    if sweeps < 1:
        raise ValueError(f"sweeps={sweeps} must be >= 1")
    family = statistics_family(spec)
    first = sum_statistics([family.local_statistics(silo, global_arrays, spec)])
    prior = np.asarray(global_arrays[FACTORS], dtype=np.float64)
    out: dict[float, Arrays] = {}
    for mu in strengths:
        if math.isinf(mu):
            out[mu] = dict(global_arrays)
            continue
        own, h = first, prior.astype(np.float32)
        try:
            for sweep in range(sweeps):
                if sweep:
                    own = sum_statistics([family.local_statistics(silo, {FACTORS: h}, spec)])
                h = map_item_solve(own, spec, prior, mu).astype(np.float32)
                if not np.isfinite(h).all():
                    raise ValueError("not finite")
        except (RuntimeError, ValueError):  # torch.linalg.LinAlgError is a RuntimeError
            continue
        out[mu] = {FACTORS: h}
    return out


ADAPTERS: dict[str, Adapter] = {"ials": adapt_ials}
"""Statistics models with a prior-aware adaptation, by model name (the others: none, see the module doc)."""


def adapt_statistics_model(silo: SiloData, global_arrays: Arrays, spec: ModelSpec, strengths: Sequence[float],
                           sweeps: int = 1) -> dict[float, Arrays]:
    """A statistics model's adapted global arrays per prior strength after `sweeps`; {} when it has none (EASE)."""
    if not is_statistics_model(spec):
        raise ValueError(f"model {spec.name!r} is trained by SGD: the silo fine-tunes it (train_round)")
    adapter = ADAPTERS.get(spec.name)
    return adapter(silo, global_arrays, spec, strengths, sweeps) if adapter is not None else {}

