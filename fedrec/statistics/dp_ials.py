"""iALS under user-level DP: each silo releases noised sums with a bounded part per user; the coordinator solves.

DP alternating least squares in the spirit of Chien et al. (ICML 2021): the user side is solved exactly inside
each silo (user factors never leave), the item side at the coordinator from Gaussian-noised sufficient
statistics. A round, in the silo (`release`), given the received item factors H (public):
1. solve every user's factors w_u from their own history and H (`fedrec.models.ials.solve_side`);
2. put each on the sphere of radius C (`clip_norm`): w̃_u = C·w_u/‖w_u‖. A user's part of every sum is then
   bounded whatever their data, and every user weighs the same; a user without training pairs takes no part;
3. keep at most k (`max_per_user`) of each user's items, chosen by the silo's CSPRNG without looking at them;
4. release, each with Gaussian noise N(0, (σΔ/ω)²) for the block weight ω below:
   - `stat.item_rhs`   [n_items, d]  Σ_{u∈U_i} w̃_u                  (ω = 1; one user moves it ≤ √k·C)
   - `stat.item_users` [n_items]     |U_i|                           (ω = `COUNT_WEIGHT`·C; ≤ √k)
   - `stat.user_gram`  [d(d+1)/2]    Σ_u w̃_u w̃_uᵀ, packed           (ω = `GRAM_WEIGHT`/C; ≤ ‖w̃ w̃ᵀ‖_F = C²)
   - `stat.users`      [1]           users with training pairs       (ω = `USERS_WEIGHT`·C; 1)
   and `stat.noise_var` [1], the variance (σΔ)² of the noise on `item_rhs` (public: from the silo's plan).
   Scaling block j by ω_j before one Gaussian mechanism on the concatenation makes its L2 sensitivity
   Δ = C·√(k(1 + COUNT_WEIGHT²) + GRAM_WEIGHT² + USERS_WEIGHT²) (`sensitivity`), so a round is one Gaussian
   release with noise multiplier σ: `GaussianSteps(1, σ, 1)` for the silo's accountant.

Unlike the exact protocol (`fedrec.statistics.ials`) no per-item Gram Σ_{u∈U_i} w̃ w̃ᵀ is released (its
d(d+1)/2 numbers per item would drown in noise): the coordinator approximates it by the item's share of the
users' Gram, A_i ≈ (|U_i|/|U|)·G, which makes every item's system (s_i G + r_i I) h_i = b_i diagonal in G's
eigenbasis (`solve`). The noise on `item_rhs` is absorbed by a ridge that grows with it (`NOISE_RIDGE` ×
its total standard deviation). Everything the coordinator computes is post-processing of the releases.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.data.split import SiloData
from fedrec.messages import STAT_PREFIX
from fedrec.models import ModelSpec
from fedrec.models.ials import IALS, check_reply_size, pack, packed_size, pairs_matrix
from fedrec.privacy.noise import NoiseSource
from fedrec.privacy.plan import STATISTICS_CLIP_RANGE
from fedrec.privacy.sampling import CappedHistories
from fedrec.statistics.base import Arrays, StatShapes
from fedrec.statistics.ials import FACTORS, ITEM_RHS, ITEM_USERS, USER_GRAM, USERS, ials_model, rhs_and_gram

NOISE_VAR = STAT_PREFIX + "noise_var"
DP_RELEASE = frozenset({ITEM_RHS, ITEM_USERS, USER_GRAM, USERS, NOISE_VAR})
"""The names of a silo's DP release: the only statistics the egress contract lets out under DP."""
COUNT_WEIGHT = 0.3
"""Weight of the item counts against the right-hand sides (relative to C): counts are large sums that need
less precision than each item's direction (simulations/README.md, "DP iALS")."""
GRAM_WEIGHT = 0.3
"""Weight of the users' Gram (relative to 1/C): one d×d sum over every user, it stays precise at a low weight."""
USERS_WEIGHT = 0.3
"""Weight of the user count (relative to C)."""
NOISE_RIDGE = 10.0
"""The item solve's extra ridge, in standard deviations of the summed noise on one `item_rhs` entry: it
shrinks items whose sums are mostly noise (few users) towards zero (simulations/README.md, "DP iALS")."""


def sensitivity(clip_norm: float, max_per_user: int) -> float:
    """L2 bound on what one user changes in the weighted concatenation of a silo's release (module docstring)."""
    if clip_norm <= 0 or max_per_user < 1:
        raise ValueError(f"clip_norm={clip_norm} must be > 0 and max_per_user={max_per_user} >= 1")
    return clip_norm * math.sqrt(max_per_user * (1 + COUNT_WEIGHT**2) + GRAM_WEIGHT**2 + USERS_WEIGHT**2)


def _weights(clip_norm: float) -> dict[str, float]:
    return {ITEM_RHS: 1.0, ITEM_USERS: COUNT_WEIGHT * clip_norm, USER_GRAM: GRAM_WEIGHT / clip_norm,
            USERS: USERS_WEIGHT * clip_norm}


def on_sphere(w: np.ndarray, radius: float) -> np.ndarray:
    """Each row of `w` scaled to L2 norm `radius`; a row that is zero or not finite becomes 0.

    Each row is divided by its largest |entry| before its norm is taken: ‖w‖ computed directly squares the
    entries, and a crafted H with a huge λ gives factors near 1e-162 whose squares are subnormal (components
    below ~1.6e-162 then count 0), which made w·C/‖w‖ up to √(d/2) times longer than C.
    """
    scale = np.max(np.abs(w), axis=1) if w.size else np.zeros(len(w))
    active = np.isfinite(scale) & (scale > 0)
    out = np.zeros_like(w, dtype=np.float64)
    unit = w[active] / scale[active, None]  # largest |entry| 1: the norm lies in [1, √d], no under- or overflow
    out[active] = unit * (radius / np.linalg.norm(unit, axis=1))[:, None]
    return out


def bounded_statistics(silo: SiloData, global_arrays: Arrays, spec: ModelSpec, *, clip_norm: float,
                       max_per_user: int | None = None, noise: NoiseSource | None = None) -> Arrays:
    """The sums a silo's release noises (float64), before noise: steps 1-3 of the module docstring.

    With `max_per_user`, `noise` draws one uniform key per distinct training pair (as secret as the noise) and
    each user keeps the pairs with the smallest keys; None keeps every pair (the noise-free reference).
    """
    model = IALS(silo.n_users, silo.n_items, spec.dim, **spec.kwargs)
    model.item.weight.copy_(torch.as_tensor(np.asarray(global_arrays[FACTORS])))
    model.attach_history(silo.train[0], silo.train[1])
    w = on_sphere(model.user_factors().numpy(), clip_norm)
    active = np.any(w != 0, axis=1)
    pairs = sp.coo_matrix(sp.csr_matrix(model.history))  # user-major: each user's pairs (and keys) together
    users, items = pairs.row.astype(np.int64), pairs.col.astype(np.int64)
    if max_per_user is not None:
        if noise is None:
            raise ValueError("capping each user's pairs needs the silo's noise source for the keys")
        kept = CappedHistories.build(users, items, n_users=silo.n_users, max_per_user=max_per_user,
                                     keys=noise.uniform(len(users)).numpy())
        users = np.repeat(np.arange(silo.n_users), kept.count.numpy())
        items = kept.items.numpy()
    by_item = pairs_matrix(items, users, (silo.n_items, silo.n_users))
    return {ITEM_RHS: by_item @ w,
            ITEM_USERS: np.asarray(by_item.sum(axis=1), dtype=np.float64).ravel(),
            USER_GRAM: pack(torch.from_numpy(w.T @ w)).numpy(),
            USERS: np.array([float(active.sum())])}


def release(silo: SiloData, global_arrays: Arrays, spec: ModelSpec, *, clip_norm: float, max_per_user: int,
            noise_multiplier: float, noise: NoiseSource) -> Arrays:
    """A silo's DP release for one round (float32 `stat.*` arrays): bounded sums plus Gaussian noise."""
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier={noise_multiplier} must be > 0 (no noise is not DP)")
    if not STATISTICS_CLIP_RANGE[0] <= clip_norm <= STATISTICS_CLIP_RANGE[1]:
        raise ValueError(f"clip_norm={clip_norm} must lie in {STATISTICS_CLIP_RANGE} (the Gram's noise scales as C²)")
    stats = bounded_statistics(silo, global_arrays, spec, clip_norm=clip_norm, max_per_user=max_per_user,
                               noise=noise)
    std = noise_multiplier * sensitivity(clip_norm, max_per_user)
    out = {name: (stats[name] + noise.normal(stats[name].shape, std / weight, dtype=torch.float64).numpy()
                  ).astype(np.float32) for name, weight in _weights(clip_norm).items()}
    out[NOISE_VAR] = np.array([std**2], dtype=np.float32)
    return out


def declared_noise_problem(stats: Arrays, privacy: dict[str, float] | None, *, max_per_user: int) -> str | None:
    """What is wrong with a release's declared noise variance (None when it is the one its DP report gives).

    An honest silo declares (σ·Δ(C, k))², from its plan's σ and C (in its reply's DP report) and the run's cap
    k. The coordinator's solve adds a ridge that grows with the summed declared variances, so one silo that
    declared more than its report gives would shrink every item for everyone. A silo whose report claims a
    huge σ still passes (a tiny budget legitimately gives one): weighing silos by their noise is issue 16's.
    """
    if privacy is None:
        return "a DP release without the silo's DP report"
    try:
        expected = (privacy["noise_multiplier"] * sensitivity(privacy["clip_norm"], max_per_user)) ** 2
    except (KeyError, ValueError, OverflowError):
        return "its DP report gives no valid noise multiplier and clip norm"
    declared = float(stats[NOISE_VAR][0])
    if not math.isclose(declared, expected, rel_tol=1e-5):
        return (f"declared noise variance {declared:.6g} is not the {expected:.6g} its DP report gives "
                f"(σ={privacy['noise_multiplier']:g}, C={privacy['clip_norm']:g}, k={max_per_user})")
    return None


class DpIalsStatistics:
    """`StatisticsFamily` of `model=ials` under `privacy=user_dp`: what the coordinator screens and solves.

    `local_statistics` gives the sums of unit-length user factors over every pair, without noise (the
    noise-free reference the tests and bounds compare with); silos release with `release`.
    """

    rounds_needed: int | None = None

    def statistic_shapes(self, n_items: int, spec: ModelSpec) -> StatShapes:
        return {ITEM_RHS: ((n_items, spec.dim), "float32"), ITEM_USERS: ((n_items,), "float32"),
                USER_GRAM: ((packed_size(spec.dim),), "float32"), USERS: ((1,), "float32"),
                NOISE_VAR: ((1,), "float32")}

    def local_statistics(self, silo: SiloData, global_arrays: Arrays, spec: ModelSpec) -> Arrays:
        stats = bounded_statistics(silo, global_arrays, spec, clip_norm=1.0)
        return {**{k: v.astype(np.float32) for k, v in stats.items()}, NOISE_VAR: np.zeros(1, np.float32)}

    def check(self, stats: Arrays, spec: ModelSpec) -> str | None:
        """Noise hides whatever a release holds; only the declared noise can be checked (it must be > 0).

        A silo that sends statistics of invented users within the noise's reach can steer the items (issue
        16, robust aggregation); no check here could tell them from noise.
        """
        var = float(stats[NOISE_VAR][0])
        if not var > 0:
            return f"{NOISE_VAR}: a DP release declares the variance of its noise (> 0), got {var:g}"
        return None

    def solve(self, summed: Arrays, global_arrays: Arrays, spec: ModelSpec, n_items: int) -> Arrays:
        """Items' factors from the summed releases (float64): post-processing only (module docstring)."""
        del global_arrays
        model = ials_model(spec)
        rhs, gram = rhs_and_gram(summed, n_items, spec.dim)
        eig, vec = torch.linalg.eigh(gram)
        eig = eig.clamp(min=0.0).numpy()  # the nearest positive semi-definite matrix
        vec = vec.numpy()
        users = max(float(summed[USERS][0]), 1.0)
        counts = np.clip(np.asarray(summed[ITEM_USERS], dtype=np.float64), 0.0, users)
        ridge = model.lam * (counts + model.alpha0 * users) ** model.nu
        ridge += NOISE_RIDGE * math.sqrt(max(float(summed[NOISE_VAR][0]), 0.0))
        scale = counts / users + model.alpha0  # A_i + α₀G ≈ (|U_i|/|U| + α₀) G
        projected = rhs @ vec  # [n_items, d] in G's eigenbasis
        h = (projected / (scale[:, None] * eig[None, :] + ridge[:, None])) @ vec.T
        return {FACTORS: h.astype(np.float32)}

    def check_catalog(self, n_items: int, spec: ModelSpec) -> None:
        check_reply_size(n_items, spec.dim)

