"""User-level DP-SGD for the two-tower model: exact per-user gradients over gathered rows, clipped, noised.

What must be private: every silo-wide parameter. The item side (`item_emb`, `item_tower`, `item_bias`) is
released; the user tower (`user.tower`) and the silo-private item bias (`user.item_bias`, when the model has
one) never leave, but every later release is trained against them, so un-noised they would carry users'
data out: they are clipped and noised like the item side. Only `user.emb` rows are trained plainly: each row depends
on its own user's data alone and never leaves the silo.

Why not a generic per-example library: a user's gradient on the item tables is sparse (their positives and
the K shared negatives), and materialising it densely ([B, n_items, d]) is what makes Opacus' hooks mode
orders of magnitude slower here (benchmarks/README.md). Instead the step works on gathered rows: one forward
pass over the batch's unique rows gives each user's d loss / d logit coefficients; per-user gradients follow
on the shared negatives and each user's own padded positives. The user tower (one row per user) goes
through torch.func vjps; the item tower too when it is arbitrary, but TwoTower's own Linear-ReLU-Linear
tower has a faster closed form (every cotangent of user u's rows is a multiple of the same user vector; see
`fedrec.privacy.item_tower_grads.MlpItemRows`).
A user's rows are made unique first (a positive that is also a negative, a repeated positive or negative:
their coefficients are summed), so the L2 norm over the user's rows and all tower parameters is the exact
norm of the user's full gradient, not a bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vjp, vmap

from fedrec.models.twotower import TwoTower
from fedrec.privacy.dp_mf import UserBatch
from fedrec.privacy.item_tower_grads import Params, item_rows, residual
from fedrec.privacy.noise import NoiseSource

PER_USER_KEY = "user.emb.weight"
"""The only parameter trained without noise: one row per user, touched only by that user's data."""


def shared_parameters(model: TwoTower) -> dict[str, nn.Parameter]:
    """Every parameter trained under DP: all but the per-user embedding rows (global ones and the user tower)."""
    return {n: p for n, p in model.named_parameters() if n != PER_USER_KEY}


@dataclass(frozen=True)
class _Rows:
    """Each user's unique item rows: the shared unique negatives, then the user's own other positives.

    `neg` [K']: unique negatives; `pos` [B, P]: each user's distinct positives that are not negatives (padded
    with item 0, whose coefficient stays 0, so padding adds nothing); `where` [T]: column of each interaction's
    positive in [neg | pos of its user] (< K' for a negative row, K' + slot otherwise); `neg_inv` [K]: column of
    each original negative in `neg`.
    """

    neg: torch.Tensor
    neg_inv: torch.Tensor
    pos: torch.Tensor
    where: torch.Tensor


def _unique_rows(batch: UserBatch, negatives: torch.Tensor, n_items: int) -> _Rows:
    """Deduplicate every user's rows (vectorised) so per-user gradients are summed per item before the norm."""
    neg, neg_inv = torch.unique(negatives, return_inverse=True)
    b = len(batch.users)
    col = torch.searchsorted(neg, batch.items).clamp(max=max(len(neg) - 1, 0))
    in_neg = neg[col] == batch.items if len(neg) else torch.zeros_like(batch.items, dtype=torch.bool)
    keys, key_inv = torch.unique(batch.owner[~in_neg] * n_items + batch.items[~in_neg], return_inverse=True)
    key_owner = keys // n_items
    counts = torch.bincount(key_owner, minlength=b)
    slot = torch.arange(len(keys)) - (torch.cumsum(counts, 0) - counts)[key_owner]
    width = int(counts.max()) if b and len(keys) else 0
    pos = torch.zeros(b, width, dtype=torch.long)
    pos[key_owner, slot] = keys % n_items
    where = col.clone()
    where[~in_neg] = len(neg) + slot[key_inv]
    return _Rows(neg=neg, neg_inv=neg_inv, pos=pos, where=where)


@dataclass(frozen=True)
class _StepParts:
    """What one step needs: clipped sums (shared params), per-user norms, interaction losses, user-row gradient."""

    sums: Params
    norms: torch.Tensor
    loss: torch.Tensor
    user_emb_grad: torch.Tensor


def _only(batch: UserBatch, keep: torch.Tensor) -> UserBatch:
    """The batch restricted to the users where `keep` [B] is True (their interactions, owners re-indexed)."""
    new_row = torch.cumsum(keep.long(), 0) - 1
    mine = keep[batch.owner]
    return UserBatch(users=batch.users[keep], owner=new_row[batch.owner[mine]], items=batch.items[mine])


def _parts(model: TwoTower, batch: UserBatch, negatives: torch.Tensor, clip_norm: float) -> _StepParts:
    """Per-user gradients of every shared parameter over gathered rows; clip each user; sum."""
    assert model.user.tower is not None
    shared = shared_parameters(model)
    b = len(batch.users)
    if b == 0:
        zeros = {n: torch.zeros_like(p) for n, p in shared.items()}
        return _StepParts(zeros, torch.zeros(0), torch.zeros(0), torch.zeros_like(model.user.emb.weight))
    rows = _unique_rows(batch, negatives, model.item_emb.num_embeddings)
    user_f = residual(model.user.tower)
    th_i = {n: p.detach() for n, p in model.item_tower.named_parameters()}
    th_u = {n: p.detach() for n, p in model.user.tower.named_parameters()}
    emb, bias = model.item_emb.weight.detach(), model.item_bias.weight.detach().squeeze(1)
    private = model.user.item_bias  # silo-wide: same coefficients as the global bias, its own clip share and noise
    if private is not None:
        bias = bias + private.weight.detach().squeeze(1)

    with torch.no_grad():
        # Forward once: user vectors [B, d], item vectors of the unique negatives [K', d] and positives [B, P, d].
        e_user = model.user.emb.weight.detach()[batch.users]
        u = user_f(th_u, e_user)
        e_neg, e_pos = emb[rows.neg], emb[rows.pos]
        items = item_rows(model.item_tower, th_i, e_neg, e_pos)
        v_neg, v_pos, b_neg, b_pos = items.v_neg, items.v_pos, bias[rows.neg], bias[rows.pos]
        loss, a_neg, a_pos = _softmax_coefficients(batch, rows, u, v_neg, v_pos, b_neg, b_pos)

        # Per-user cotangents: d L_u / d v_j = a_uj u_u, d L_u / d u_u = Σ_j a_uj v_j, d L_u / d b_j = a_uj.
        g_u = a_neg @ v_neg + torch.einsum("bp,bpd->bd", a_pos, v_pos)
        gu_th, gu_e = vmap(lambda e, g: vjp(user_f, th_u, e)[1](g))(e_user, g_u)
        sq_items, item_sums = items.per_user(a_neg, a_pos, u)
        sq = sum(g.pow(2).flatten(1).sum(1) for g in gu_th.values()) + sq_items
        bias_tables = 1 if private is None else 2
        norms = (sq + bias_tables * (a_neg.pow(2).sum(1) + a_pos.pow(2).sum(1))).sqrt()
        ok = torch.isfinite(norms) & torch.isfinite(gu_e).all(1)
        if not bool(ok.all()):
            # A user whose gradient overflowed (a crafted or extreme model) contributes nothing, a bounded
            # function of their own data; left in, one NaN would spread to every coordinate of the release.
            parts = _parts(model, _only(batch, ok), negatives, clip_norm)
            kept = torch.zeros_like(norms).masked_scatter_(ok, parts.norms)
            return _StepParts(parts.sums, torch.where(ok, kept, norms), parts.loss, parts.user_emb_grad)
        scale = torch.clamp(clip_norm / (norms + 1e-12), max=1.0)

        sums: Params = {f"user.tower.{n}": torch.einsum("b,b...->...", scale, g) for n, g in gu_th.items()}
        tower, rows_neg, rows_pos = item_sums(scale)
        sums |= {f"item_tower.{n}": g for n, g in tower.items()}
        g_emb = torch.zeros_like(emb).index_add_(0, rows.neg, rows_neg)
        sums["item_emb.weight"] = g_emb.index_add_(0, rows.pos.flatten(), rows_pos.flatten(0, 1))
        g_bias = torch.zeros_like(bias).index_add_(0, rows.neg, scale @ a_neg)
        g_bias.index_add_(0, rows.pos.flatten(), (scale[:, None] * a_pos).flatten())
        sums["item_bias.weight"] = g_bias.unsqueeze(1)
        if private is not None:
            sums["user.item_bias.weight"] = g_bias.unsqueeze(1).clone()
        user_grad = torch.zeros_like(model.user.emb.weight).index_add_(0, batch.users, gu_e)
    return _StepParts({n: sums[n] for n in shared}, norms, loss, user_grad)


def _softmax_coefficients(batch: UserBatch, rows: _Rows, u: torch.Tensor, v_neg: torch.Tensor, v_pos: torch.Tensor,
                          b_neg: torch.Tensor, b_pos: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dp_mf's loss per interaction [T] and d L_u / d logit folded onto each user's unique rows: a_neg, a_pos.

    Logits over the K' unique negatives carry + log(multiplicity), which is the same softmax as over the K
    negatives with their duplicates; the negative equal to an interaction's positive is masked.
    """
    b, k, width = len(u), len(rows.neg), rows.pos.shape[1]
    u_t = u[batch.owner]
    flat = torch.where(rows.where < k, rows.where, rows.where + batch.owner * width)  # into [neg rows; pos rows]
    pos_logit = (u_t * torch.cat([v_neg, v_pos.flatten(0, 1)])[flat]).sum(1) + torch.cat([b_neg, b_pos.flatten()])[flat]
    mult = torch.bincount(rows.neg_inv, minlength=k).to(u.dtype)
    logits = torch.cat([pos_logit.unsqueeze(1), torch.addmm(b_neg + mult.log(), u_t, v_neg.T)], dim=1)
    in_neg = rows.where < k
    logits[in_neg.nonzero().squeeze(1), 1 + rows.where[in_neg]] = -torch.inf
    logp = torch.log_softmax(logits, dim=1)
    coef = logp.exp()
    coef[:, 0] -= 1.0
    a = torch.zeros(b, k + width, dtype=u.dtype)
    a[:, :k] = torch.zeros(b, k, dtype=u.dtype).index_add_(0, batch.owner, coef[:, 1:])
    a.index_put_((batch.owner, rows.where), coef[:, 0], accumulate=True)
    return -logp[:, 0], a[:, :k], a[:, k:]


def clipped_shared_gradient_sum(model: TwoTower, batch: UserBatch, negatives: torch.Tensor, clip_norm: float
                                ) -> tuple[Params, torch.Tensor]:
    """Pre-noise release: (Σ_u clip_C(g_u) per shared parameter name, each user's exact gradient norm [B]).

    g_u is the gradient of user u's summed sampled-softmax loss w.r.t. all shared parameters jointly.
    """
    parts = _parts(model, batch, negatives, clip_norm)
    return parts.sums, parts.norms


def dp_twotower_step(
    model: TwoTower,
    batch: UserBatch,
    negatives: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    shared_optimizer: torch.optim.Optimizer,
    per_user_optimizer: torch.optim.Optimizer,
    noise: NoiseSource,
    weight_decay: float = 0.0,
    normaliser: float = 1.0,
) -> dict[str, float]:
    """One user-level DP step: each user's row by their own loss's gradient, shared ones by clipped + noised sum.

    Shared gradient = (Σ_u clip_C(g_u) + N(0, σ²C²) on every coordinate) / normaliser + weight_decay · param
    (`normaliser` a public constant, never a count of users: see `dp_mf.dp_mf_step`)
    (the decay is data independent, so it needs no noise). The per-user loss is dp_mf's: sampled softmax over
    [positive, K shared negatives], a negative equal to the positive masked.
    """
    shared = shared_parameters(model)
    user_emb = model.user.emb.weight
    _check_optimizers(shared_optimizer, per_user_optimizer, shared, user_emb)
    parts = _parts(model, batch, negatives, clip_norm)

    per_user_optimizer.zero_grad(set_to_none=True)
    user_emb.grad = parts.user_emb_grad
    per_user_optimizer.step()

    std = noise_multiplier * clip_norm
    with torch.no_grad():
        for name, p in shared.items():
            noisy = parts.sums[name] + noise.normal(p.shape, std)
            p.grad = noisy / normaliser + weight_decay * p.detach()
    shared_optimizer.step()
    if len(parts.norms) == 0:  # nobody sampled: the release is noise only, as the accounting assumes
        return {"loss": float("nan"), "clipped_fraction": 0.0}
    return {"loss": float(parts.loss.mean()), "clipped_fraction": float((parts.norms > clip_norm).float().mean())}


def _check_optimizers(shared_optimizer: torch.optim.Optimizer, per_user_optimizer: torch.optim.Optimizer,
                      shared: dict[str, nn.Parameter], user_emb: torch.Tensor) -> None:
    """Refuse optimizers that would step a shared parameter without noise (or user rows with noise)."""
    in_shared = {id(p) for g in shared_optimizer.param_groups for p in g["params"]}
    in_user = {id(p) for g in per_user_optimizer.param_groups for p in g["params"]}
    if in_user - {id(user_emb)}:
        raise ValueError(f"per_user_optimizer may only hold {PER_USER_KEY}: other parameters are silo-wide")
    if id(user_emb) in in_shared or in_shared - {id(p) for p in shared.values()}:
        raise ValueError(f"shared_optimizer must hold only the shared parameters {sorted(shared)}")
