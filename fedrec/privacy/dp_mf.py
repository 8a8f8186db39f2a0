"""User-level DP-SGD for biased MF with sampled softmax, using the per-user gradient's closed form.

Why a closed form: per-example gradients of embedding tables are where generic DP libraries are slow
(Opacus' hooks materialise a dense per-user copy of every table). For MF under sampled softmax, the
gradient of one interaction t with respect to item row j is `coef[t, j] * p_u` (and `coef[t, j]` for the
item bias), where coef is softmax(logits) minus one on the positive. Summed over a user's interactions,
the user's whole contribution to the global item parameters is the rank-one matrix `a_u ⊗ [p_u, 1]`, whose
norm is `‖a_u‖ · sqrt(‖p_u‖² + 1)`. Clipping every user and summing is then one [n_items × B] @ [B × d]
product. The global bias gets no gradient: softmax is shift-invariant.

What is private here: the global item side (embeddings and shared bias). Per-user parameters and the silo's
private item bias are local and trained as usual: they never leave the silo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedrec.models.mf import BiasedMF
from fedrec.privacy.noise import NoiseSource


@dataclass(frozen=True)
class UserBatch:
    """The interactions of the users sampled for one step, user-major.

    `users` [B]: the sampled users (silo-local ids); `owner` [T]: for each interaction, the row of its user
    in `users`; `items` [T]: the positive item of each interaction.
    """

    users: torch.Tensor
    owner: torch.Tensor
    items: torch.Tensor


def interaction_coefficients(model: BiasedMF, batch: UserBatch, negatives: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-interaction softmax pieces: (loss per interaction [T], d loss/d logit [T, 1+K], user vectors [B, d]).

    Logits are [positive, K shared negatives]; a negative equal to the interaction's positive is masked.
    """
    p = model.user.emb(batch.users)
    pos = model.score_pairs(batch.users[batch.owner], batch.items)
    neg = model.score_matrix(batch.users[batch.owner], negatives)
    neg = neg.masked_fill(negatives.unsqueeze(0) == batch.items.unsqueeze(1), -torch.inf)
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    loss = F.cross_entropy(logits, torch.zeros(len(batch.items), dtype=torch.long), reduction="none")
    coef = torch.softmax(logits.detach(), dim=1)
    coef[:, 0] -= 1.0
    return loss, coef, p


def per_user_item_coefficients(coef: torch.Tensor, batch: UserBatch, negatives: torch.Tensor,
                               n_items: int) -> torch.Tensor:
    """`a_u` for every sampled user: [B, n_items], the user's summed d loss / d (item logit term)."""
    b = len(batch.users)
    a = torch.zeros(b, n_items, dtype=coef.dtype)
    a.index_put_((batch.owner, batch.items), coef[:, 0], accumulate=True)
    neg_sum = torch.zeros(b, len(negatives), dtype=coef.dtype).index_add_(0, batch.owner, coef[:, 1:])
    rows = torch.arange(b).unsqueeze(1).expand(-1, len(negatives))
    a.index_put_((rows, negatives.unsqueeze(0).expand(b, -1)), neg_sum, accumulate=True)
    return a


def clipped_item_gradient_sum(a: torch.Tensor, p: torch.Tensor, clip_norm: float, *, bias_tables: int = 1
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum over users of their clipped gradients: (item_emb grad [n, d], item_bias grad [n], norms [B]).

    `bias_tables` item-bias tables share the gradient `a_u` (the global one, and the silo-private one when
    the model has it): each adds ‖a_u‖² to the user's squared norm.
    """
    norms = a.norm(dim=1) * torch.sqrt(p.pow(2).sum(1) + float(bias_tables))
    # A user whose gradient is not finite (an overflow on a crafted or extreme model) contributes nothing:
    # still a bounded function of that user's own data. Left in, one NaN would spread to every coordinate
    # and turn the release into a test of whether that user is there.
    ok = torch.isfinite(norms)
    if not bool(ok.all()):
        a, p = torch.where(ok.unsqueeze(1), a, 0.0), torch.where(ok.unsqueeze(1), p, 0.0)
    scale = torch.where(ok, torch.clamp(clip_norm / (norms + 1e-12), max=1.0), 0.0)
    weighted = a * scale.unsqueeze(1)
    return weighted.T @ p, weighted.sum(0), norms


def dp_mf_step(
    model: BiasedMF,
    batch: UserBatch,
    negatives: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    global_optimizer: torch.optim.Optimizer,
    local_optimizer: torch.optim.Optimizer,
    noise: NoiseSource,
    weight_decay: float = 0.0,
    normaliser: float = 1.0,
) -> dict[str, float]:
    """One user-level DP step: each user's own rows by the gradient of their own loss, global ones by noised sum.

    The noisy global gradient is (Σ_u clip_C(g_u) + N(0, σ²C²)) / normaliser; `weight_decay` is applied to the
    whole global tables (data-independent), never through per-user gradients. Both scales are public
    constants: dividing by the number of users sampled (or in the silo) would make user v's hidden state
    depend on whether user u was sampled, and the release on the silo's size. A user's row gets the gradient
    of that user's summed loss only (no batch mean), for the same reason.
    """
    n_items = model.item_emb.num_embeddings
    private_bias = model.user.item_bias
    global_params = [model.item_emb.weight, model.item_bias.weight, model.global_bias]
    if private_bias is not None:  # silo-wide: trained through the clipped, noised sum like the global side
        global_params.append(private_bias.weight)
    # Autograd only for the local side: the global side's per-user gradients come from the closed form.
    for g in global_params:
        g.requires_grad_(False)
    try:
        loss, coef, p = interaction_coefficients(model, batch, negatives)
        # Local side (per-user parameters, private item bias): ordinary gradients, never released.
        local_optimizer.zero_grad(set_to_none=True)
        if len(batch.items):
            loss.sum().backward()
        local_optimizer.step()
    finally:
        for g in global_params:
            g.requires_grad_(True)

    # Global side: closed-form per-user gradients, clipped, summed, noised.
    with torch.no_grad():
        a = per_user_item_coefficients(coef, batch, negatives, n_items)
        g_emb, g_bias, norms = clipped_item_gradient_sum(a, p.detach(), clip_norm,
                                                         bias_tables=1 if private_bias is None else 2)
        std = noise_multiplier * clip_norm
        if private_bias is not None:  # same clipped sum, its own noise; never released
            g_private = g_bias + noise.normal(g_bias.shape, std)
            private_bias.weight.grad = (g_private / normaliser).unsqueeze(1) + weight_decay * private_bias.weight
        g_emb += noise.normal(g_emb.shape, std)
        g_bias += noise.normal(g_bias.shape, std)
        model.item_emb.weight.grad = g_emb / normaliser + weight_decay * model.item_emb.weight
        model.item_bias.weight.grad = (g_bias / normaliser).unsqueeze(1) + weight_decay * model.item_bias.weight
        model.global_bias.grad = torch.zeros_like(model.global_bias)
    global_optimizer.step()
    if len(norms) == 0:  # nobody sampled: the release is noise only, as the accounting assumes
        return {"loss": float("nan"), "clipped_fraction": 0.0}
    return {"loss": float(loss.detach().mean()), "clipped_fraction": float((norms > clip_norm).float().mean())}
