"""Per-user gradients of the item side of a two-tower model over gathered item rows (used by `dp_twotower`).

`item_rows` picks the closed form for TwoTower's own Linear-ReLU-Linear tower (`MlpItemRows`) or torch.func
vector-Jacobian products for any other tower (`VjpItemRows`). Both return, for one batch, each user's
squared gradient norm over the item tower and item rows, and a function of the clip scales giving the
clipped sums.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

Params: TypeAlias = dict[str, torch.Tensor]
Sums: TypeAlias = Callable[[torch.Tensor], tuple[Params, torch.Tensor, torch.Tensor]]


def residual(tower: nn.Module) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """Residual `x + tower(x)` with the tower's parameters as an explicit input (TwoTower's `_u` and `_i`)."""

    def f(params: Params, x: torch.Tensor) -> torch.Tensor:
        return x + functional_call(tower, params, (x,))

    return f


class ItemRows:
    """Item-tower pieces over the gathered rows.

    `v_neg` [K', d], `v_pos` [B, P, d]: item vectors, computed once. `per_user` takes the per-user cotangents
    (d L_u / d v_j = a_uj · u_u) and returns each user's squared gradient norm over the item tower and item
    embedding rows, and a function of the clip scales giving the clipped sums: (tower grads, rows of the
    negatives [K', d], rows of the positives [B, P, d]).
    """

    v_neg: torch.Tensor
    v_pos: torch.Tensor

    def per_user(self, a_neg: torch.Tensor, a_pos: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, Sums]:
        raise NotImplementedError


class VjpItemRows(ItemRows):
    """Any item tower: one forward over the rows, then per-user vector-Jacobian products (torch.func vmap)."""

    def __init__(self, tower: nn.Module, th: Params, e_neg: torch.Tensor, e_pos: torch.Tensor) -> None:
        self.f, self.th, self.e_pos = residual(tower), th, e_pos
        primal_and_vjp = vjp(self.f, th, e_neg)  # one forward on the shared negatives, reused by every user
        self.v_neg, self.vjp_neg = primal_and_vjp[0], primal_and_vjp[1]
        self.v_pos = self.f(th, e_pos.flatten(0, 1)).reshape(e_pos.shape)

    def per_user(self, a_neg: torch.Tensor, a_pos: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, Sums]:
        th_neg, g_neg = vmap(self.vjp_neg)(a_neg.unsqueeze(2) * u.unsqueeze(1))
        c_pos = a_pos.unsqueeze(2) * u.unsqueeze(1)
        th_pos, g_pos = vmap(lambda e, c: vjp(self.f, self.th, e)[1](c))(self.e_pos, c_pos)
        th_u = {n: th_neg[n] + th_pos[n] for n in self.th}
        sq = sum(g.pow(2).flatten(1).sum(1) for g in th_u.values()) + g_neg.pow(2).sum((1, 2))
        sq = sq + g_pos.pow(2).sum((1, 2))

        def sums(scale: torch.Tensor) -> tuple[Params, torch.Tensor, torch.Tensor]:
            tower = {n: torch.einsum("b,b...->...", scale, g) for n, g in th_u.items()}
            return tower, torch.einsum("b,bkd->kd", scale, g_neg), scale[:, None, None] * g_pos

        return sq, sums


class MlpItemRows(ItemRows):
    """The same for TwoTower's own tower, e + W2 relu(W1 e + b1) + b2, in closed form (the fast path).

    Every row's cotangent for user u is a multiple of the same vector u_u, so with w_u = W2ᵀ u_u: the W2
    gradient is the rank-one u_u ⊗ Σ_j a_uj r_j, the W1 gradient is diag(w_u) Σ_j a_uj m_j ⊗ e_j (m_j: ReLU
    mask), and row j's gradient is a_uj (u_u + W1ᵀ (m_j ⊙ w_u)). The generic vjp costs four [B·K', h]×[h, d]
    products on the shared negatives; this needs one ([B, K'] × [K', h·d]) plus one quadratic form for the
    row norms ‖W1ᵀ(m_j ⊙ w_u)‖² = (w_u ⊗ w_u) · (W1 W1ᵀ ⊙ m_j ⊗ m_j), over the upper triangle only.
    """

    def __init__(self, th: Params, e_neg: torch.Tensor, e_pos: torch.Tensor) -> None:
        self.e_neg, self.e_pos = e_neg, e_pos
        self.w1, self.b1, self.w2, self.b2 = (th[n] for n in ("0.weight", "0.bias", "2.weight", "2.bias"))
        pre_neg, pre_pos = e_neg @ self.w1.T + self.b1, e_pos @ self.w1.T + self.b1
        self.r_neg, self.r_pos = pre_neg.clamp(min=0), pre_pos.clamp(min=0)
        self.m_neg, self.m_pos = (pre_neg > 0).to(e_neg.dtype), (pre_pos > 0).to(e_neg.dtype)
        self.v_neg = e_neg + self.r_neg @ self.w2.T + self.b2
        self.v_pos = e_pos + self.r_pos @ self.w2.T + self.b2

    def per_user(self, a_neg: torch.Tensor, a_pos: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, Sums]:
        b, (k, h), d = len(u), self.m_neg.shape, u.shape[1]
        w = u @ self.w2  # [B, h]
        rho = a_neg @ self.r_neg + torch.einsum("bp,bph->bh", a_pos, self.r_pos)  # W2 grad = u ⊗ rho
        sigma = a_neg.sum(1) + a_pos.sum(1)  # b2 grad = sigma · u (zero up to rounding: softmax sums to one)
        mu = a_neg @ self.m_neg + torch.einsum("bp,bph->bh", a_pos, self.m_pos)  # b1 grad = w ⊙ mu
        n_neg = (a_neg @ (self.m_neg.unsqueeze(2) * self.e_neg.unsqueeze(1)).reshape(k, h * d)).reshape(b, h, d)
        n_all = n_neg + torch.einsum("bp,bph,bpd->bhd", a_pos, self.m_pos, self.e_pos)  # W1 grad = diag(w) n_all
        uu = u.pow(2).sum(1)
        sq = uu * (rho.pow(2).sum(1) + sigma.pow(2)) + (w * mu).pow(2).sum(1)
        sq = sq + (w.pow(2) * n_all.pow(2).sum(2)).sum(1)
        # negatives' rows: a_uj² ‖u + W1ᵀ(m_j ⊙ w)‖² = a_uj² (‖u‖² + 2 (w ⊙ W1 u)·m_j + quadratic form)
        i, j = torch.triu_indices(h, h)
        gram = (self.w1 @ self.w1.T)[i, j] * torch.where(i == j, 1.0, 2.0)
        quad = (w[:, i] * w[:, j]) @ (self.m_neg[:, i] * self.m_neg[:, j] * gram).T  # [B, K']
        row_sq = (uu.unsqueeze(1) + 2 * (w * (u @ self.w1.T)) @ self.m_neg.T + quad).clamp(min=0)
        sq = sq + (a_neg.pow(2) * row_sq).sum(1)
        g_pos = a_pos.unsqueeze(2) * (u.unsqueeze(1) + (self.m_pos * w.unsqueeze(1)) @ self.w1)  # [B, P, d]
        sq = sq + g_pos.pow(2).sum((1, 2))

        def sums(scale: torch.Tensor) -> tuple[Params, torch.Tensor, torch.Tensor]:
            su, sw = scale.unsqueeze(1) * u, scale.unsqueeze(1) * w
            delta_neg = (a_neg.T @ sw) * self.m_neg  # [K', h]: Σ_u s_u a_uj w_u ⊙ m_j
            delta_pos = (scale.unsqueeze(1) * a_pos).unsqueeze(2) * w.unsqueeze(1) * self.m_pos  # [B, P, h]
            tower = {
                "0.weight": delta_neg.T @ self.e_neg + torch.einsum("bph,bpd->hd", delta_pos, self.e_pos),
                "0.bias": (sw * mu).sum(0),
                "2.weight": su.T @ rho,
                "2.bias": (scale * sigma) @ u,
            }
            rows_neg = a_neg.T @ su + delta_neg @ self.w1
            return tower, rows_neg, scale[:, None, None] * g_pos

        return sq, sums


def item_rows(tower: nn.Module, th: Params, e_neg: torch.Tensor, e_pos: torch.Tensor) -> ItemRows:
    """The closed form for TwoTower's Linear-ReLU-Linear tower, torch.func vjps for any other tower."""
    layers = list(tower.children()) if isinstance(tower, nn.Sequential) else []
    if [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear] and all(m.bias is not None for m in layers[::2]):
        return MlpItemRows(th, e_neg, e_pos)
    return VjpItemRows(tower, th, e_neg, e_pos)
