"""iALS (implicit alternating least squares; Hu et al. 2008, as revisited by Rendle et al., RecSys 2022).

Objective over a binary matrix of observed (user, item) pairs S, user factors W and item factors H:

    Σ_{(u,i)∈S} (⟨w_u, h_i⟩ − 1)²  +  α₀ Σ_u Σ_i ⟨w_u, h_i⟩²  +  λ Σ_u c_u^ν ‖w_u‖²  +  λ Σ_i c_i^ν ‖h_i‖²,

with c_u = |I_u| + α₀·n_items and c_i = |U_i| + α₀·n_users (Rendle's frequency-scaled regularisation; ν=0 is
plain L2). Fixing one side, each row of the other is a ridge regression with a closed form:

    w_u = (Σ_{i∈I_u} h_i h_iᵀ + α₀ HᵀH + λ c_u^ν I)⁻¹ Σ_{i∈I_u} h_i          (and symmetrically h_i).

As a fedrec model: global (travels) `item.weight`, H [n_items, dim], solved at the coordinator from the silos'
summed statistics (`fedrec.statistics.ials`); local: nothing persisted. A silo's user factors are solved from
its own users' histories and the received H whenever they are needed (`user_factors`): they never leave and
there is nothing to keep between rounds. Like EASE, the training loop refuses this model (buffers, no
parameters).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from fedrec.errors import ConfigError
from fedrec.models.base import RecModel

DEFAULT_ALPHA0 = 0.3
DEFAULT_LAMBDA = 0.01
DEFAULT_NU = 1.0
INIT_STD = 0.1
"""Initial item factors ~ N(0, (INIT_STD/√dim)²), as in Rendle et al.'s iALS benchmarks."""
_CHUNK_BYTES = 128 * 2**20
"""Memory for one chunk of rows' packed outer products or unpacked d×d systems (float64): rows per chunk
= _CHUNK_BYTES / (8 d²), so a silo's solve holds a bounded working set whatever its number of users."""
MAX_DIM = 512
"""Largest model.dim: a user's solve costs d³ and its statistics d² per item (a run config cannot ask more)."""
MAX_REPLY_BYTES = 2 * 2**30
"""Largest `stat.item_gram` a silo sends (n_items · d(d+1)/2 float32): beyond it, lower model.dim."""
MIN_RIDGE = 1e-8
"""Smallest ridge λ(α₀·n)^ν a row's system may get: below it a rank-deficient H leaves the system singular."""


INITS = ("random", "features")
"""Where the first item factors come from: seeded noise, or the catalog's public item features (`feature_factors`)."""


def feature_factors(features: np.ndarray, dim: int) -> np.ndarray:
    """Item factors [n_items, dim] from public item features: their principal directions, largest first.

    Column j is the j-th left singular vector of the centred feature matrix times s_j/s_0 (the first has the
    norm 1, the others their share); columns beyond the features' rank are zero. Public: no interaction enters.
    """
    centred = np.asarray(features, dtype=np.float64) - np.asarray(features, dtype=np.float64).mean(axis=0)
    # One BLAS thread: the coordinator calls this from the ServerApp's thread, where OpenBLAS's thread pool was
    # seen to spin forever in this SVD (twice, in a second simulation in one process); the matrix is
    # n_items x n_features, milliseconds on one thread.
    with threadpool_limits(limits=1, user_api="blas"):
        u, sv, _ = np.linalg.svd(centred, full_matrices=False)
    out = np.zeros((len(centred), dim))
    k = min(dim, int((sv > sv[0] * 1e-9).sum()) if sv.size and sv[0] > 0 else 0)
    out[:, :k] = u[:, :k] * (sv[:k] / sv[0])
    return out


def check_hyperparameters(alpha0: object, lam: object, nu: object, dim: int) -> None:
    """α₀ > 0, λ > 0, 0 ≤ ν ≤ 2, 1 ≤ dim ≤ MAX_DIM, each a number: say which one is wrong and what it means."""
    for name, value, ok, what in [
        ("alpha0", alpha0, lambda v: v > 0, "the weight of unobserved pairs, a number > 0 (e.g. 0.3)"),
        ("lam", lam, lambda v: v > 0, "the L2 strength, a number > 0 (e.g. 0.01)"),
        ("nu", nu, lambda v: 0 <= v <= 2, "the frequency-scaling exponent, a number in [0, 2] (0: plain L2, "
                                          "1: scaled)"),
    ]:
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
            raise ConfigError(f"model.kwargs.{name}={value!r} is invalid: iALS's {name} is {what}")
    if not 1 <= dim <= MAX_DIM:
        raise ConfigError(f"model.dim={dim} is invalid: iALS takes 1 to {MAX_DIM} factors (a user's solve "
                          "costs dim³, its statistics dim² per item)")


def check_ridge(alpha0: float, lam: float, nu: float, n_items: int) -> None:
    """The user side's smallest ridge λ(α₀·n_items)^ν must keep every system solvable (≥ `MIN_RIDGE`)."""
    if lam * (alpha0 * n_items) ** nu < MIN_RIDGE:
        raise ConfigError(f"model.kwargs lam={lam:g}, alpha0={alpha0:g}, nu={nu:g} give a ridge "
                          f"λ(α₀·n_items)^ν = {lam * (alpha0 * n_items) ** nu:.3g} below {MIN_RIDGE:g} for "
                          f"{n_items} items: the solves would be singular; raise lam or alpha0")


def rows_per_chunk(dim: int) -> int:
    """Rows of d×d float64 matrices that fit in `_CHUNK_BYTES`."""
    return max(1, _CHUNK_BYTES // (8 * dim * dim))


def check_reply_size(n_items: int, dim: int) -> None:
    """A silo's per-item Gram (n_items · d(d+1)/2 float32) must stay under `MAX_REPLY_BYTES`."""
    size = n_items * packed_size(dim) * 4
    if size > MAX_REPLY_BYTES:
        raise ConfigError(f"model=ials with model.dim={dim} and {n_items} items sends a per-item Gram of "
                          f"{size / 2**30:.1f} GiB per silo per round (limit {MAX_REPLY_BYTES / 2**30:.0f} GiB): "
                          "lower model.dim")


def packed_size(dim: int) -> int:
    """Entries of a d×d symmetric matrix's upper triangle."""
    return dim * (dim + 1) // 2


def pack(mats: torch.Tensor) -> torch.Tensor:
    """Upper triangles of [..., d, d] symmetric matrices, row by row: [..., d(d+1)/2]."""
    i, j = torch.triu_indices(mats.shape[-1], mats.shape[-1])
    return mats[..., i, j]


def unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """The symmetric [..., d, d] matrices of `pack`'s output."""
    i, j = torch.triu_indices(dim, dim)
    out = torch.zeros(*packed.shape[:-1], dim, dim, dtype=packed.dtype)
    out[..., i, j] = packed
    out[..., j, i] = packed
    return out


def pairs_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csc_matrix:
    """The binary [n_rows, n_cols] matrix with a 1 at each (row, col) pair (pairs given once each)."""
    return sp.csc_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


def packed_grams(matrix: sp.csc_matrix, fixed: np.ndarray) -> np.ndarray:
    """Σ_{c: matrix[r, c]=1} f_c f_cᵀ for every row r, packed: [n_rows, d(d+1)/2] float64.

    One sparse-dense product per `rows_per_chunk(d)` rows of `fixed` (its packed outer products): memory n_rows·d²/2
    plus one chunk, never one d×d matrix per pair.
    """
    d = fixed.shape[1]
    i, j = (t.numpy() for t in torch.triu_indices(d, d))
    out = np.zeros((matrix.shape[0], len(i)))
    step = rows_per_chunk(d)
    for lo in range(0, fixed.shape[0], step):
        f = fixed[lo:lo + step]
        out += matrix[:, lo:lo + step] @ (f[:, i] * f[:, j])
    return out


def ridge_rows(grams: np.ndarray, rhs: np.ndarray, shared: np.ndarray, ridge: np.ndarray, *,
               singular_to_zero: bool = False) -> np.ndarray:
    """Solve (unpack(grams[r]) + shared + ridge[r]·I) x_r = rhs[r] for every row r, by batched Cholesky.

    `shared` (α₀ times the other side's Gram) is positive semi-definite and ridge > 0, so each system is
    positive definite when `grams` holds true Gram matrices; in floating point it can still fail to factor
    when the ridge is below the Gram's resolution (item factors of ±1e3 against λ = 1e-8). By default that
    raises (the coordinator's item solve: statistics that break it are rejected); `singular_to_zero` gives
    such a row 0 instead (a silo's user solve, where whether it raised would depend on one user's history).
    A bounded chunk of rows is unpacked at a time.
    """
    d = rhs.shape[1]
    out = np.empty((len(rhs), d))
    eye, base = torch.eye(d, dtype=torch.float64), torch.as_tensor(shared, dtype=torch.float64)
    step = rows_per_chunk(d)
    for lo in range(0, len(rhs), step):
        systems = unpack(torch.as_tensor(grams[lo:lo + step]), d) + base
        systems += torch.as_tensor(ridge[lo:lo + step]).view(-1, 1, 1) * eye
        if not singular_to_zero:
            factor = torch.linalg.cholesky(systems)
            out[lo:lo + step] = torch.cholesky_solve(torch.as_tensor(rhs[lo:lo + step]).unsqueeze(2),
                                                     factor).squeeze(2).numpy()
            continue
        factor, info = torch.linalg.cholesky_ex(systems)
        failed = info != 0
        factor[failed] = eye  # a well-defined solve for the failed rows, overwritten with 0 below
        x = torch.cholesky_solve(torch.as_tensor(rhs[lo:lo + step]).unsqueeze(2), factor).squeeze(2)
        x[failed] = 0.0
        out[lo:lo + step] = x.numpy()
    return out


def solve_side(matrix: sp.spmatrix, fixed: np.ndarray, *, alpha0: float, lam: float, nu: float) -> np.ndarray:
    """One half-step of ALS: every row's factors given the other side's `fixed` factors (float64 throughout).

    `matrix` is binary [n_rows, len(fixed)]; a row without pairs gets 0 (its right-hand side is 0), and so does
    a row whose system does not factor in float64 (only crafted `fixed` and hyperparameters give one): a silo
    solves its users' rows here, and an error that depends on one user's history would be a release. The
    frequency-scaled ridge is λ(|row's pairs| + α₀·len(fixed))^ν (for users: the catalog size; the item side,
    solved at the coordinator, counts only users with a pair: `fedrec.statistics.ials`). Rows are solved
    in chunks of `rows_per_chunk(dim)`, so memory stays bounded however many rows there are.
    """
    fixed = np.asarray(fixed, dtype=np.float64)
    by_row = sp.csr_matrix(matrix)
    shared = alpha0 * fixed.T @ fixed
    out = np.empty((by_row.shape[0], fixed.shape[1]))
    step = rows_per_chunk(fixed.shape[1])
    for lo in range(0, by_row.shape[0], step):
        part = by_row[lo:lo + step]
        ridge = lam * (np.asarray(part.sum(axis=1)).ravel() + alpha0 * len(fixed)) ** nu
        out[lo:lo + step] = ridge_rows(packed_grams(part.tocsc(), fixed), part @ fixed, shared, ridge,
                                       singular_to_zero=True)
    return out


class NoUserState(nn.Module):
    """iALS keeps nothing per user between rounds: user factors are re-solved from the history when needed."""


class ItemFactors(nn.Module):
    """The global item factors H (a buffer: solved, not trained)."""

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(n_items, dim) * (INIT_STD / dim**0.5))
        self.weight: torch.Tensor


class IALS(RecModel):
    """Scores ⟨w_u, h_i⟩; w_u solved inside the silo from its users' histories and the current H."""

    user: NoUserState  # type: ignore[assignment]  # no per-user tensors: they are derived, never stored

    def __init__(self, n_users: int, n_items: int, dim: int = 64, *, alpha0: float = DEFAULT_ALPHA0,
                 lam: float = DEFAULT_LAMBDA, nu: float = DEFAULT_NU, init: str = "random") -> None:
        super().__init__()
        check_hyperparameters(alpha0, lam, nu, dim)
        if init not in INITS:
            raise ConfigError(f"model.kwargs.init={init!r} is invalid: choose one of {INITS} (features: the first "
                              "item factors from the catalog's public item features)")
        self.init = init
        check_ridge(float(alpha0), float(lam), float(nu), n_items)
        check_reply_size(n_items, dim)
        self.alpha0, self.lam, self.nu = float(alpha0), float(lam), float(nu)
        self.user = NoUserState()
        self.item = ItemFactors(n_items, dim)
        self.history = pairs_matrix(np.zeros(0, np.int64), np.zeros(0, np.int64), (n_users, n_items))
        self._cached: tuple[tuple[int, int], torch.Tensor] | None = None

    def attach_history(self, users: np.ndarray, items: np.ndarray) -> None:
        """Keep the silo's binary user × item training matrix (repeats count once, as in EASE)."""
        pairs = np.unique(np.stack([np.asarray(users, np.int64), np.asarray(items, np.int64)]), axis=1)
        self.history = pairs_matrix(pairs[0], pairs[1], self.history.shape)
        self._cached = None

    def user_factors(self) -> torch.Tensor:
        """W [n_users, dim] (float64) solved from the history and the current H; cached until H changes."""
        h = self.item.weight
        key = (h.data_ptr(), h._version)
        if self._cached is None or self._cached[0] != key:
            w = solve_side(self.history, h.numpy(), alpha0=self.alpha0, lam=self.lam, nu=self.nu)
            self._cached = (key, torch.from_numpy(w))
        return self._cached[1]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_factors()[users].to(self.item.weight.dtype) @ self.item.weight.T

    def score_matrix(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.user_factors()[users].to(self.item.weight.dtype) @ self.item.weight[items].T

    def score_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        w = self.user_factors()[users].to(self.item.weight.dtype)
        if items.dim() == 2:
            return torch.einsum("nd,nkd->nk", w, self.item.weight[items])
        return (w * self.item.weight[items]).sum(-1)

    def regularizer(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return torch.zeros(())

    @property
    def wants_features(self) -> bool:
        """Whether the first item factors come from public item features (`init_from_features`)."""
        return self.init == "features"

    def init_from_features(self, features: np.ndarray) -> None:
        """Set H from the catalog's public item features (`feature_factors`)."""
        if len(features) != self.item.weight.shape[0]:
            raise ConfigError(f"{len(features)} item feature rows for a catalog of {self.item.weight.shape[0]} items")
        self.item.weight.copy_(torch.from_numpy(feature_factors(features, self.item.weight.shape[1])))

    def item_rows(self, items: torch.Tensor) -> torch.Tensor:
        return self.item.weight[items]
