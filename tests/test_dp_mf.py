"""User-level DP step for MF: the closed-form per-user gradients are the true ones, and clipping bounds
what any single user can move."""

from __future__ import annotations

import torch

from fedrec.models.mf import BiasedMF
from fedrec.privacy.dp_mf import (
    UserBatch,
    clipped_item_gradient_sum,
    interaction_coefficients,
    per_user_item_coefficients,
)
from fedrec.privacy.noise import NoiseSource

N_USERS, N_ITEMS, DIM = 6, 15, 4


def setup() -> tuple[BiasedMF, UserBatch, torch.Tensor]:
    torch.manual_seed(0)
    model = BiasedMF(N_USERS, N_ITEMS, DIM, private_item_bias=False)
    with torch.no_grad():  # non-trivial biases, so the bias gradients are exercised too
        model.item_bias.weight.normal_()
    # users 1, 3, 4 sampled; user 3 has an item that is also a shared negative (item 7)
    batch = UserBatch(users=torch.tensor([1, 3, 4]), owner=torch.tensor([0, 0, 1, 1, 1, 2]),
                      items=torch.tensor([2, 5, 7, 9, 2, 11]))
    negatives = torch.tensor([7, 0, 13, 7])  # with a duplicate negative
    return model, batch, negatives


def test_closed_form_per_user_gradients_equal_autograd() -> None:
    # Prepare
    model, batch, negatives = setup()
    loss, coef, p = interaction_coefficients(model, batch, negatives)

    # Execute: closed form for every user at once
    a = per_user_item_coefficients(coef, batch, negatives, N_ITEMS)

    # Assert: each user's true gradient (autograd on that user's summed loss) is a_u ⊗ p_u and a_u
    for row in range(len(batch.users)):
        model.zero_grad()
        loss[batch.owner == row].sum().backward(retain_graph=True)
        expected_emb = torch.outer(a[row], p[row].detach())
        torch.testing.assert_close(model.item_emb.weight.grad, expected_emb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.item_bias.weight.grad.squeeze(1), a[row], rtol=1e-5, atol=1e-6)
        assert float(model.global_bias.grad.abs()) < 1e-5  # softmax is shift-invariant


def test_removing_one_user_moves_the_clipped_sum_by_at_most_c() -> None:
    # Prepare: the pre-noise clipped sums with and without user 3 (row 1), at a clip norm that binds
    model, batch, negatives = setup()
    clip = 0.05
    _, coef, p = interaction_coefficients(model, batch, negatives)
    a = per_user_item_coefficients(coef, batch, negatives, N_ITEMS)
    keep = torch.tensor([0, 2])

    # Execute
    emb_all, bias_all, norms = clipped_item_gradient_sum(a, p.detach(), clip)
    emb_wo, bias_wo, _ = clipped_item_gradient_sum(a[keep], p.detach()[keep], clip)

    # Assert: the difference (emb and bias together) is user 3's clipped contribution, of norm <= C
    diff = torch.sqrt((emb_all - emb_wo).pow(2).sum() + (bias_all - bias_wo).pow(2).sum())
    assert bool((norms > clip).all())  # clipping is active for everyone
    assert float(diff) <= clip * (1 + 1e-5)
    assert float(diff) >= clip * (1 - 1e-5)  # and it is exactly C when the user was clipped


def test_a_silo_private_item_bias_counts_in_the_norm_and_gets_its_own_noise() -> None:
    # Prepare: MF with the silo-private item bias (silo-wide, so it is trained under DP like the global side)
    torch.manual_seed(0)
    model = BiasedMF(N_USERS, N_ITEMS, DIM, private_item_bias=True)
    _, batch, negatives = setup()
    _, coef, p = interaction_coefficients(model, batch, negatives)
    a = per_user_item_coefficients(coef, batch, negatives, N_ITEMS)

    # Execute: the user's squared norm over (item_emb, global bias, private bias) = ‖a‖²(‖p‖² + 2)
    _, _, norms = clipped_item_gradient_sum(a, p.detach(), 1.0, bias_tables=2)
    full = []
    for row in range(len(batch.users)):
        g = torch.cat([torch.outer(a[row], p[row].detach()).flatten(), a[row], a[row]])
        full.append(float(g.norm()))

    # Assert
    torch.testing.assert_close(norms, torch.tensor(full), rtol=1e-5, atol=1e-6)

    # ... and an empty batch moves the private bias by noise independent of the global bias's
    from fedrec.privacy.dp_mf import dp_mf_step

    empty = torch.zeros(0, dtype=torch.long)
    shared = [model.item_emb.weight, model.item_bias.weight, model.global_bias, model.user.item_bias.weight]
    per_user = [model.user.emb.weight, model.user.bias.weight]
    before_g, before_p = model.item_bias.weight.detach().clone(), model.user.item_bias.weight.detach().clone()
    dp_mf_step(model, UserBatch(empty, empty, empty), negatives, clip_norm=1.0, noise_multiplier=1.0,
               normaliser=1.0, global_optimizer=torch.optim.SGD(shared, lr=1.0),
               local_optimizer=torch.optim.SGD(per_user, lr=1.0), noise=NoiseSource("seeded", seed=0))
    moved_g = (model.item_bias.weight.detach() - before_g).flatten()
    moved_p = (model.user.item_bias.weight.detach() - before_p).flatten()
    assert 0.5 < float(moved_p.std()) < 1.5
    assert abs(float(torch.corrcoef(torch.stack([moved_g, moved_p]))[0, 1])) < 0.6


def test_without_noise_or_clipping_the_step_is_plain_sgd_on_the_user_sum() -> None:
    # Prepare: two identical models; DP step with σ=0 and a clip norm that never binds
    from fedrec.privacy.dp_mf import dp_mf_step

    model, batch, negatives = setup()
    reference, _, _ = setup()
    glob = [model.item_emb.weight, model.item_bias.weight, model.global_bias]
    local = [p for n, p in model.named_parameters() if n.startswith("user.")]
    opt_g, opt_l = torch.optim.SGD(glob, lr=0.1), torch.optim.SGD(local, lr=0.1)

    # Execute
    dp_mf_step(model, batch, negatives, clip_norm=1e6, noise_multiplier=0.0, normaliser=3.0,
               global_optimizer=opt_g, local_optimizer=opt_l, noise=NoiseSource("seeded", seed=0))
    loss, _, _ = interaction_coefficients(reference, batch, negatives)
    (loss.sum() / 3.0).backward()

    # Assert: item side moved by lr * (summed gradient / expected users); global bias did not move
    with torch.no_grad():
        for mine, ref in ((model.item_emb.weight, reference.item_emb.weight),
                          (model.item_bias.weight, reference.item_bias.weight)):
            torch.testing.assert_close(mine, ref - 0.1 * ref.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.global_bias, reference.global_bias)
    # and the local side moved (users were trained)
    assert not torch.equal(model.user.emb.weight, reference.user.emb.weight)


def test_an_empty_poisson_batch_still_releases_noise() -> None:
    # Prepare: nobody sampled this step
    from fedrec.privacy.dp_mf import dp_mf_step

    model, _, negatives = setup()
    empty = torch.zeros(0, dtype=torch.long)
    before = model.item_emb.weight.detach().clone()
    glob = [model.item_emb.weight, model.item_bias.weight, model.global_bias]
    local = [p for n, p in model.named_parameters() if n.startswith("user.")]

    # Execute
    stats = dp_mf_step(model, UserBatch(empty, empty, empty), negatives, clip_norm=1.0, noise_multiplier=1.0,
                       normaliser=2.0, global_optimizer=torch.optim.SGD(glob, lr=0.1),
                       local_optimizer=torch.optim.SGD(local, lr=0.1), noise=NoiseSource("seeded", seed=0))

    # Assert: the item side moved (by noise / expected users only), and the stats are well defined
    moved = (model.item_emb.weight.detach() - before) / -0.1 * 2.0  # recovers the raw noise, std sigma*C = 1
    assert 0.7 < float(moved.std()) < 1.3
    assert stats["clipped_fraction"] == 0.0
