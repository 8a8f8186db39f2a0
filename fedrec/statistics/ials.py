"""iALS from per-item sufficient statistics: the silos solve their users, the coordinator solves the items.

A round (one ALS sweep): each silo receives the item factors H, solves its users' factors W_s inside the silo
(`fedrec.models.ials.solve_side`) and sends, over its own users:
- `stat.item_gram`  [n_items, d(d+1)/2]: Σ_{u∈U_i} w_u w_uᵀ for each item, upper triangle packed row by row;
- `stat.item_rhs`   [n_items, d]: Σ_{u∈U_i} w_u;
- `stat.user_gram`  [d(d+1)/2]: Σ_u w_u w_uᵀ over all its users (the α₀ term), packed;
- `stat.item_users` [n_items]: |U_i|, its users with item i; `stat.users` [1]: its number of users (both enter
  the frequency-scaled ridge λ(|U_i| + α₀|U|)^ν).
Each is a sum over users, so the silos' sum is the pooled data's statistic and the coordinator's item solve is
the pooled ALS half-step: after R rounds the federation holds the item factors of R sweeps of centralized
iALS on the pooled data (to float32 transmission). Users' factors never leave; the counts are what EASE's
Gram diagonal already tells the coordinator in a non-private run, plus the silo's number of users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.data.split import SiloData
from fedrec.errors import ConfigError
from fedrec.messages import STAT_PREFIX
from fedrec.models import ModelSpec, build_model
from fedrec.models.ials import (
    IALS,
    check_reply_size,
    pack,
    packed_grams,
    packed_size,
    ridge_rows,
    rows_per_chunk,
    unpack,
)
from fedrec.statistics.base import Arrays, StatShapes

ITEM_GRAM = STAT_PREFIX + "item_gram"
ITEM_RHS = STAT_PREFIX + "item_rhs"
USER_GRAM = STAT_PREFIX + "user_gram"
ITEM_USERS = STAT_PREFIX + "item_users"
USERS = STAT_PREFIX + "users"
FACTORS = "item.weight"
EXACT_COUNTS = 2**24
"""float32 holds every integer below this exactly: the most users a silo may have for exact counts."""
PSD_TOLERANCE = 1e-4
"""Relative slack (of the largest eigenvalue) for float32 rounding when checking positive semi-definiteness."""
_SUBNORMAL = 2.0**-149
"""Twice float32's largest absolute rounding error among subnormals."""


def ials_model(spec: ModelSpec) -> IALS:
    """The run's iALS (one user, one item): its validated hyperparameters α₀, λ, ν."""
    model = build_model(spec, n_users=1, n_items=1)
    assert isinstance(model, IALS)
    return model


def max_user_norm2(n_items: int, *, alpha0: float, lam: float, nu: float) -> float:
    """The largest ‖w_u‖² an honest silo's user can have: max over |I_u| = k ∈ [1, n_items] of k / (λ(k + α₀n)^ν).

    w_u minimises Σ_{i∈I_u} (⟨w, h_i⟩ − 1)² + α₀ Σ_i ⟨w, h_i⟩² + λ c_u^ν ‖w‖², whose value at w = 0 is k, so
    λ c_u^ν ‖w_u‖² ≤ k whatever the item factors: a bound from public hyperparameters and the catalog only.
    """
    k = np.arange(1, max(n_items, 1) + 1, dtype=np.float64)
    return float((k / (lam * (k + alpha0 * n_items) ** nu)).max())


def active_users(model: IALS) -> int:
    """Users with at least one training pair: the |U| of the item side's ridge.

    A user without any has w = 0 and no part in any sum, so counting them would only let a silo inflate every
    item's ridge for free (`check` also holds |U| ≤ Σ_i |U_i|).
    """
    return int((np.diff(sp.csr_matrix(model.history).indptr) > 0).sum())


def _psd(mats: torch.Tensor, slack: float) -> bool:
    """Every matrix's smallest eigenvalue ≥ −slack: M + slack·I has a Cholesky factor (much cheaper than eigvalsh)."""
    shifted = mats + slack * torch.eye(mats.shape[-1], dtype=mats.dtype)
    return not bool(torch.linalg.cholesky_ex(shifted).info.any())


def rhs_and_gram(summed: Arrays, n_items: int, dim: int) -> tuple[np.ndarray, torch.Tensor]:
    """The summed `item_rhs` [n_items, dim] and the unpacked `user_gram` [dim, dim], float64 (shape checked)."""
    rhs = np.asarray(summed[ITEM_RHS], dtype=np.float64)
    if rhs.shape != (n_items, dim):
        raise ValueError(f"{ITEM_RHS} is {rhs.shape}, expected {(n_items, dim)}")
    return rhs, unpack(torch.from_numpy(np.asarray(summed[USER_GRAM], dtype=np.float64)), dim)


class IalsStatistics:
    """`StatisticsFamily` of `model=ials`: one ALS sweep per round, as many rounds as the run has."""

    rounds_needed: int | None = None

    def statistic_shapes(self, n_items: int, spec: ModelSpec) -> StatShapes:
        p = packed_size(spec.dim)
        return {ITEM_GRAM: ((n_items, p), "float32"), ITEM_RHS: ((n_items, spec.dim), "float32"),
                USER_GRAM: ((p,), "float32"), ITEM_USERS: ((n_items,), "float32"), USERS: ((1,), "float32")}

    def local_statistics(self, silo: SiloData, global_arrays: Arrays, spec: ModelSpec) -> Arrays:
        """The silo's users' factors solved from the received H, then their per-item sums (float64 → float32)."""
        if silo.n_users >= EXACT_COUNTS:
            raise ConfigError(f"silo {silo.region!r} has {silo.n_users} users: float32 counts are exact only "
                              f"below {EXACT_COUNTS}")
        model = IALS(silo.n_users, silo.n_items, spec.dim, **spec.kwargs)
        model.item.weight.copy_(torch.as_tensor(np.asarray(global_arrays[FACTORS])))
        model.attach_history(silo.train[0], silo.train[1])
        w = model.user_factors().numpy()
        by_item = model.history.T.tocsc()  # [n_items, n_users]
        return {ITEM_GRAM: packed_grams(by_item, w).astype(np.float32),
                ITEM_RHS: (by_item @ w).astype(np.float32),
                USER_GRAM: pack(torch.from_numpy(w.T @ w)).numpy().astype(np.float32),
                ITEM_USERS: np.asarray(by_item.sum(axis=1)).ravel().astype(np.float32),
                USERS: np.array([active_users(model)], dtype=np.float32)}

    def check(self, stats: Arrays, spec: ModelSpec) -> str | None:
        """What no honest silo's statistics look like (necessary conditions, checked on float64 copies).

        Counts are whole, in [0, 2²⁴), |U_i| ≤ |U|. Each item's Gram A_i = Σ_{u∈U_i} w_u w_uᵀ is positive
        semi-definite and so is G − A_i (G = Σ_u w_u w_uᵀ ⪰ A_i); an item nobody has has A_i = 0 and b_i = 0;
        ‖b_i‖² ≤ |U_i| tr(A_i), and in every direction, |U_i|·A_i − b_i b_iᵀ ⪰ 0 (Cauchy–Schwarz on
        b_i = Σ w_u, in matrix form: the trace form alone lets b_i point where A_i has nothing, paying the
        trace in another direction). Every honest user's factors are bounded by the model's public
        hyperparameters (`max_user_norm2`), so tr(A_i) ≤ |U_i|·B and tr(G) ≤ |U|·B: a huge eigenvalue cannot
        be invented to widen the float32 tolerances. A silo can still send any statistics of users it
        invented within these bounds (a co-silo's steering is issue 16's), but not ones no users could have.
        """
        counts, users = stats[ITEM_USERS].astype(np.float64), float(stats[USERS][0])
        for name, c in ((ITEM_USERS, counts), (USERS, np.array([users]))):
            if bool((c < 0).any()) or bool((c >= EXACT_COUNTS).any()) or not bool((np.floor(c) == c).all()):
                return f"{name}: counts must be whole numbers in [0, {EXACT_COUNTS})"
        if bool((counts > users).any()):
            return f"{ITEM_USERS}: an item has more users than the silo ({STAT_PREFIX}users)"
        if users > counts.sum():
            return (f"{USERS}: more users with training data than user-item pairs ({ITEM_USERS} sums to "
                    f"{counts.sum():g})")
        dim = stats[ITEM_RHS].shape[1]
        model = ials_model(spec)
        bound = max_user_norm2(len(counts), alpha0=model.alpha0, lam=model.lam, nu=model.nu) * (1 + PSD_TOLERANCE)
        g = unpack(torch.from_numpy(stats[USER_GRAM].astype(np.float64)), dim)
        if float(g.diagonal().sum()) > users * bound:
            return f"{USER_GRAM}: larger than {STAT_PREFIX}users users' factors can be (‖w_u‖² ≤ {bound:.4g})"
        eig = torch.linalg.eigvalsh(g)
        slack = PSD_TOLERANCE * max(1.0, float(eig.max()))
        if float(eig.min()) < -slack:
            return f"{USER_GRAM}: not positive semi-definite (no sum of w wᵀ is)"
        empty = counts == 0
        if bool(stats[ITEM_GRAM][empty].any()) or bool(stats[ITEM_RHS][empty].any()):
            return f"{ITEM_GRAM}/{ITEM_RHS}: non-zero for an item no user has"
        held, step = np.flatnonzero(~empty), rows_per_chunk(dim)  # d×d float64 matrices, a bounded chunk at a time
        for lo in range(0, len(held), step):
            why = self._check_items(stats, counts, held[lo:lo + step], g, slack, bound)
            if why:
                return why
        return None

    @staticmethod
    def _check_items(stats: Arrays, counts: np.ndarray, rows: np.ndarray, g: torch.Tensor, slack: float,
                     bound: float) -> str | None:
        """The per-item conditions on items some user holds (|U_i| > 0).

        One batched Cholesky each for |U_i|·A_i − b_i b_iᵀ ⪰ 0 (which implies A_i ⪰ 0) and G − A_i ⪰ 0; more
        only to name a failure.
        """
        rhs = torch.from_numpy(stats[ITEM_RHS][rows].astype(np.float64))
        a = unpack(torch.from_numpy(stats[ITEM_GRAM][rows].astype(np.float64)), rhs.shape[1])
        trace, c = a.diagonal(dim1=1, dim2=2).sum(1), torch.from_numpy(counts[rows])
        # |U_i|·A_i − b_i b_iᵀ ⪰ 0 up to float32 rounding, |fl(x) − x| ≤ 2⁻²⁴|x| + 2⁻¹⁵⁰ (subnormals: a model
        # regularised towards 0 underflows A_i before b_i): in norm below 2⁻²⁴(|U_i| tr A_i + 2‖b_i‖²) +
        # 2⁻¹⁴⁹(|U_i| d + 2‖b_i‖√d). The relative part is taken from the item's own statistics, not from G's
        # largest eigenvalue, which a silo could inflate in a direction nobody uses.
        norm_b, d = rhs.norm(dim=1), rhs.shape[1]
        tol = (PSD_TOLERANCE * (c * trace.abs() + 2 * norm_b**2) + _SUBNORMAL * (c * d + 2 * norm_b * d**0.5)
               + torch.finfo(torch.float64).tiny)
        cov = c.view(-1, 1, 1) * a - rhs.unsqueeze(2) * rhs.unsqueeze(1)
        if bool(torch.linalg.cholesky_ex(cov + tol.view(-1, 1, 1) * torch.eye(d, dtype=a.dtype)).info.any()):
            if not _psd(a, slack):
                return f"{ITEM_GRAM}: an item's matrix is not positive semi-definite"
            if bool((rhs.pow(2).sum(1) > c * trace * (1 + PSD_TOLERANCE) + slack).any()):
                return f"{ITEM_RHS}: larger than its users' factors allow (‖Σ w‖² ≤ |U_i|·Σ‖w‖²)"
            return f"{ITEM_RHS}: points where its users' factors do not (|U_i|·A_i − b_i b_iᵀ is not PSD)"
        if not _psd(g - a, slack):
            return f"{ITEM_GRAM}: an item's matrix exceeds {USER_GRAM} (its users are among the silo's users)"
        if bool((trace > c * bound).any()):
            return f"{ITEM_GRAM}: larger than its users' factors can be (‖w_u‖² ≤ {bound:.4g})"
        return None

    def solve(self, summed: Arrays, global_arrays: Arrays, spec: ModelSpec, n_items: int) -> Arrays:
        """Each item's ridge regression on the summed statistics (float64), stored as float32 factors."""
        del global_arrays
        model = ials_model(spec)
        rhs, gram = rhs_and_gram(summed, n_items, spec.dim)
        g = gram.numpy()
        counts = np.asarray(summed[ITEM_USERS], dtype=np.float64)
        ridge = model.lam * (counts + model.alpha0 * float(summed[USERS][0])) ** model.nu
        h = ridge_rows(np.asarray(summed[ITEM_GRAM], dtype=np.float64), rhs, model.alpha0 * g, ridge)
        return {FACTORS: h.astype(np.float32)}

    def check_catalog(self, n_items: int, spec: ModelSpec) -> None:
        check_reply_size(n_items, spec.dim)
