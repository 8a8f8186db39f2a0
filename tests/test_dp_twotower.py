"""User-level DP step for the two-tower model: per-user gradients are the true ones (exact norms with duplicate
rows), clipping bounds one user's influence, the noise covers every shared coordinate, user rows stay local."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedrec.models.twotower import TwoTower
from fedrec.privacy.dp_mf import UserBatch, interaction_coefficients
from fedrec.privacy.dp_twotower import clipped_shared_gradient_sum, dp_twotower_step, shared_parameters
from fedrec.privacy.noise import NoiseSource

N_USERS, N_ITEMS, DIM, HIDDEN = 30, 50, 8, 16


def setup(tower: str = "relu", private_bias: bool = False) -> tuple[TwoTower, UserBatch, torch.Tensor]:
    torch.manual_seed(0)
    model = TwoTower(N_USERS, N_ITEMS, DIM, HIDDEN, private_item_bias=private_bias)
    if tower == "tanh":  # not TwoTower's own tower: exercises the generic torch.func path
        model.item_tower = nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, DIM))
    with torch.no_grad():  # non-trivial item biases, so their gradients are exercised too
        model.item_bias.weight.normal_()
        if model.user.item_bias is not None:
            model.user.item_bias.weight.normal_()
    # user 7 (row 1) has item 11 twice and 11 is also a negative; user 20 (row 3) has negative 30 as a positive;
    # user 25 (row 4) has a repeated item that is not a negative; negative 13 is drawn twice
    batch = UserBatch(users=torch.tensor([3, 7, 12, 20, 25]), owner=torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4]),
                      items=torch.tensor([4, 9, 11, 11, 6, 25, 30, 2, 17, 17, 5]))
    negatives = torch.tensor([11, 0, 13, 30, 13, 40, 5])
    return model, batch, negatives


def brute_force_user_gradients(model: TwoTower, batch: UserBatch, negatives: torch.Tensor
                               ) -> list[dict[str, torch.Tensor]]:
    """Autograd of each user's summed loss alone (dp_mf's loss), w.r.t. the shared parameters."""
    shared = shared_parameters(model)
    loss, _, _ = interaction_coefficients(model, batch, negatives)  # type: ignore[arg-type]
    grads = []
    for row in range(len(batch.users)):
        g = torch.autograd.grad(loss[batch.owner == row].sum(), list(shared.values()), retain_graph=True)
        grads.append(dict(zip(shared, g, strict=True)))
    return grads


def total_norm(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))


def optimizers(model: TwoTower, lr: float = 0.1) -> dict[str, torch.optim.Optimizer]:
    return {"shared_optimizer": torch.optim.SGD(shared_parameters(model).values(), lr=lr),
            "per_user_optimizer": torch.optim.SGD([model.user.emb.weight], lr=lr)}


@pytest.mark.parametrize(("tower", "private_bias"), [("relu", False), ("tanh", False), ("relu", True)])
def test_per_user_gradients_and_norms_equal_brute_force(tower: str, private_bias: bool) -> None:
    # Prepare (with a silo-private item bias, it is one more shared parameter in each user's gradient)
    model, batch, negatives = setup(tower, private_bias)
    expected = brute_force_user_gradients(model, batch, negatives)

    # Execute: all users at once (no clipping), and each user alone
    sums, norms = clipped_shared_gradient_sum(model, batch, negatives, clip_norm=1e9)
    alone = [clipped_shared_gradient_sum(model, UserBatch(batch.users[[r]], batch.owner[batch.owner == r] * 0,
                                                          batch.items[batch.owner == r]), negatives, 1e9)
             for r in range(len(batch.users))]

    # Assert: exact per-user norms (duplicates summed before the norm), per-user gradients, and their sum
    torch.testing.assert_close(norms, torch.stack([total_norm(g) for g in expected]), rtol=1e-5, atol=1e-6)
    for (g_alone, _), g_true in zip(alone, expected, strict=True):
        for name in g_true:
            torch.testing.assert_close(g_alone[name], g_true[name], rtol=1e-4, atol=1e-6)
    for name, g in sums.items():
        torch.testing.assert_close(g, sum(e[name] for e in expected), rtol=1e-4, atol=1e-6)
    assert set(sums) == set(shared_parameters(model))  # the user tower is trained under DP too


def test_one_user_moves_the_clipped_sum_by_at_most_c() -> None:
    # Prepare: a clip norm that binds for everyone; user 7 (row 1) removed, or with other items
    model, batch, negatives = setup()
    clip = 0.05
    keep = batch.owner != 1
    without = UserBatch(batch.users[[0, 2, 3, 4]], torch.tensor([0, 0, 1, 2, 2, 3, 3, 3]), batch.items[keep])
    replaced = UserBatch(batch.users, batch.owner, torch.where(batch.owner == 1, torch.tensor(44), batch.items))

    # Execute
    s_all, norms = clipped_shared_gradient_sum(model, batch, negatives, clip)
    s_wo, _ = clipped_shared_gradient_sum(model, without, negatives, clip)
    s_rep, _ = clipped_shared_gradient_sum(model, replaced, negatives, clip)

    # Assert: add/remove (the accountant's neighbouring relation) moves the sum by exactly C here (clipped user);
    # replacing a user's items is remove + add, so up to 2C
    diff = float(total_norm({n: s_all[n] - s_wo[n] for n in s_all}))
    assert bool((norms > clip).all())
    assert 0.5 * clip < diff <= clip * (1 + 1e-5)
    assert diff >= clip * (1 - 1e-5)
    assert 0.0 < float(total_norm({n: s_all[n] - s_rep[n] for n in s_all})) <= 2 * clip * (1 + 1e-5)


def test_an_empty_batch_releases_noise_of_std_sigma_c_over_normaliser_on_every_coordinate() -> None:
    # Prepare: nobody sampled; SGD with lr 1 and no weight decay, so the step is exactly minus the noisy gradient
    empty = torch.zeros(0, dtype=torch.long)
    sigma, clip, normaliser = 1.5, 0.7, 4.0

    def noisy_step(seed: int) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        model, _, negatives = setup()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        stats = dp_twotower_step(model, UserBatch(empty, empty, empty), negatives, clip_norm=clip,
                                 noise_multiplier=sigma, normaliser=normaliser, **optimizers(model, lr=1.0),
                                 noise=NoiseSource("seeded", seed=seed))
        moved = torch.cat([(before[n] - p.detach()).flatten() for n, p in shared_parameters(model).items()])
        return moved, stats, model.user.emb.weight.detach() - before["user.emb.weight"]

    # Execute
    noise, stats, user_moved = noisy_step(0)
    again, _, _ = noisy_step(0)
    other, _, _ = noisy_step(1)

    # Assert: std σC/normaliser over ~1,000 coordinates (both towers, both tables), every one noised;
    # user rows untouched; the seed decides the noise
    target = sigma * clip / normaliser
    assert noise.numel() > 1000
    assert abs(float(noise.std()) / target - 1.0) < 0.1
    assert abs(float(noise.mean())) < 0.1 * target
    assert bool((noise != 0).all())
    assert torch.equal(noise, again)
    assert not torch.allclose(noise, other)
    assert bool((user_moved == 0).all())
    assert stats["clipped_fraction"] == 0.0 and stats["loss"] != stats["loss"]  # nan


def test_user_rows_of_unsampled_users_stay_and_a_private_item_bias_gets_its_own_noise() -> None:
    # Prepare
    model, batch, negatives = setup()
    before = model.user.emb.weight.detach().clone()
    sampled = torch.zeros(N_USERS, dtype=torch.bool)
    sampled[batch.users] = True

    # Execute: one step with noise on the shared side
    dp_twotower_step(model, batch, negatives, clip_norm=1.0, noise_multiplier=1.0, normaliser=5.0,
                     **optimizers(model), noise=NoiseSource("seeded", seed=0))

    # Assert: only sampled users' rows moved
    moved = (model.user.emb.weight.detach() != before).any(1)
    assert torch.equal(moved, sampled)
    private = TwoTower(N_USERS, N_ITEMS, DIM, HIDDEN)
    empty = torch.zeros(0, dtype=torch.long)
    g_before, p_before = private.item_bias.weight.detach().clone(), private.user.item_bias.weight.detach().clone()
    dp_twotower_step(private, UserBatch(empty, empty, empty), negatives, clip_norm=1.0, noise_multiplier=1.0,
                     normaliser=1.0, **optimizers(private, lr=1.0), noise=NoiseSource("seeded", seed=0))
    moved_g = (private.item_bias.weight.detach() - g_before).flatten()
    moved_p = (private.user.item_bias.weight.detach() - p_before).flatten()
    assert 0.5 < float(moved_p.std()) < 1.5 and not torch.allclose(moved_g, moved_p)
    with pytest.raises(ValueError, match="per_user_optimizer"):  # a shared parameter stepped without noise
        dp_twotower_step(model, batch, negatives, clip_norm=1.0, noise_multiplier=1.0, normaliser=5.0,
                         shared_optimizer=torch.optim.SGD(shared_parameters(model).values(), lr=0.1),
                         per_user_optimizer=torch.optim.SGD(model.user.parameters(), lr=0.1),
                         noise=NoiseSource("seeded", seed=0))


def test_without_noise_or_clipping_the_step_is_sgd_on_the_user_sum() -> None:
    # Prepare: σ=0, a clip norm that never binds, weight decay on the shared side only
    model, batch, negatives = setup()
    reference, _, _ = setup()
    normaliser, lr, wd = 4.0, 0.1, 0.01

    # Execute
    dp_twotower_step(model, batch, negatives, clip_norm=1e9, noise_multiplier=0.0, normaliser=normaliser,
                     **optimizers(model, lr), noise=NoiseSource("seeded", seed=0), weight_decay=wd)
    loss, _, _ = interaction_coefficients(reference, batch, negatives)  # type: ignore[arg-type]
    loss.sum().backward()

    # Assert: shared params by lr * (Σ_u g_u / normaliser + wd * param), user rows by lr * Σ_u g_u
    with torch.no_grad():
        for name, p in shared_parameters(reference).items():
            step = p.grad / normaliser + wd * p
            torch.testing.assert_close(dict(model.named_parameters())[name], p - lr * step, rtol=1e-5, atol=1e-6)
        row = reference.user.emb.weight
        torch.testing.assert_close(model.user.emb.weight, row - lr * row.grad, rtol=1e-5, atol=1e-6)


def test_a_few_noisy_steps_lower_the_loss() -> None:
    # Prepare: each user likes the 5 items of their cluster; all users sampled every step, little noise
    torch.manual_seed(0)
    model = TwoTower(N_USERS, N_ITEMS, DIM, HIDDEN, private_item_bias=False)
    gen = torch.Generator().manual_seed(0)
    users = torch.arange(N_USERS)
    owner = users.repeat_interleave(4)
    items = (owner % 10) * 5 + torch.randint(0, 5, (len(owner),), generator=gen)
    batch = UserBatch(users, owner, items)
    opts = {"shared_optimizer": torch.optim.Adam(shared_parameters(model).values(), lr=0.03),
            "per_user_optimizer": torch.optim.Adam([model.user.emb.weight], lr=0.03)}
    probe = torch.randint(0, N_ITEMS, (20,), generator=gen)

    def probe_loss() -> float:
        with torch.no_grad():
            return float(interaction_coefficients(model, batch, probe)[0].mean())  # type: ignore[arg-type]

    # Execute
    start = probe_loss()
    noise = NoiseSource("seeded", seed=1)
    for _ in range(40):
        stats = dp_twotower_step(model, batch, torch.randint(0, N_ITEMS, (20,), generator=gen), clip_norm=1.0,
                                 noise_multiplier=0.05, normaliser=float(N_USERS), **opts, noise=noise)

    # Assert
    assert probe_loss() < 0.8 * start
    assert 0.0 <= stats["clipped_fraction"] <= 1.0
