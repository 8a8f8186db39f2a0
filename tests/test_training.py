"""The full-softmax loss against a reference written out by hand, its gradients, and its refusal under DP."""

from __future__ import annotations

import pytest
import torch

from fedrec.data.split import SiloData, SplitConfig, split_silos
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.models import ModelSpec, build_model
from fedrec.privacy.dp_round import DP_LOSSES, DpTrainConfig, check_dp_loss, train_round_dp
from fedrec.settings import RunSettings
from fedrec.training import LOSSES, TrainConfig, batch_loss, initial_global_arrays

N_USERS, N_ITEMS = 6, 9
SPECS = [ModelSpec("mf", 4), ModelSpec("twotower", 4, {"hidden": 5})]


def tiny(spec: ModelSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(spec, n_users=N_USERS, n_items=N_ITEMS)
    with torch.no_grad():  # biases start at zero: make them count, so a loss that dropped them would differ
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0.0, 0.5)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    users = torch.tensor([0, 1, 1, 4, 5])
    items = torch.tensor([2, 0, 8, 2, 7])
    return users, items, torch.ones(5)


def full_softmax_reference(model: torch.nn.Module, users: torch.Tensor, items: torch.Tensor,
                           weight_decay: float) -> torch.Tensor:
    """Mean over the batch of -log softmax over the whole catalog, one example at a time, plus the L2 term."""
    terms = []
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        scores = model.score_pairs(torch.full((N_ITEMS,), u), torch.arange(N_ITEMS))  # pairwise, not score_all
        terms.append(torch.logsumexp(scores, 0) - scores[i])
    l2 = sum(model.user.emb.weight[u].pow(2).sum() + model.item_emb.weight[i].pow(2).sum()
             for u, i in zip(users.tolist(), items.tolist(), strict=True))
    return torch.stack(terms).mean() + weight_decay * l2 / len(users)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_full_softmax_equals_cross_entropy_over_the_whole_catalog(spec: ModelSpec) -> None:
    # Prepare
    model = tiny(spec)
    users, items, ratings = batch()
    cfg = TrainConfig(loss="full_softmax", weight_decay=0.01, n_negatives=3)

    # Execute
    loss = batch_loss(model, users, items, ratings, n_items=N_ITEMS, cfg=cfg, generator=torch.Generator())
    sampled = batch_loss(model, users, items, ratings, n_items=N_ITEMS, cfg=TrainConfig(loss="softmax", n_negatives=3,
                         weight_decay=0.01), generator=torch.Generator().manual_seed(0))

    # Assert: the reference, whatever n_negatives says; sampled softmax over 3 negatives is a different number
    assert loss.item() == pytest.approx(full_softmax_reference(model, users, items, 0.01).item(), rel=1e-5)
    assert loss.item() != pytest.approx(sampled.item(), rel=1e-3)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_full_softmax_gradient_reaches_every_item_and_only_the_batch_users(spec: ModelSpec) -> None:
    # Prepare
    model = tiny(spec)
    users, items, ratings = batch()
    cfg = TrainConfig(loss="full_softmax")

    # Execute
    batch_loss(model, users, items, ratings, n_items=N_ITEMS, cfg=cfg, generator=torch.Generator()).backward()

    # Assert: every catalog item is a negative (rows of unseen items move too); users outside the batch do not
    item_rows = model.item_emb.weight.grad.abs().sum(1)
    assert bool((item_rows > 0).all())
    assert bool((model.item_bias.weight.grad.abs() > 0).all())
    user_rows = model.user.emb.weight.grad.abs().sum(1)
    in_batch = torch.zeros(N_USERS, dtype=torch.bool)
    in_batch[users] = True
    assert bool((user_rows[in_batch] > 0).all())
    assert bool((user_rows[~in_batch] == 0).all())


def test_full_softmax_is_a_known_loss_and_dp_names_what_it_supports() -> None:
    assert "full_softmax" in LOSSES
    assert DP_LOSSES == ("softmax",)
    with pytest.raises(ConfigError, match="unknown; choose one of"):
        TrainConfig(loss="fullsoftmax")


@pytest.fixture(scope="module")
def silo() -> SiloData:
    world = generate_world(SyntheticWorldConfig(n_users=40, n_items=N_ITEMS, region_only_items=0, region_sizes=(1.0,)))
    return split_silos(world, SplitConfig())["eu"]


SPEC_DP = ModelSpec("mf", 4)
DP = DpTrainConfig(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.2, steps_per_round=1)


@pytest.mark.parametrize("loss", ["full_softmax", "bpr", "mse"])
def test_dp_refuses_a_loss_it_does_not_implement(loss: str, silo: SiloData) -> None:
    # The run config a coordinator proposes (simulation and deployment both go through it)
    with pytest.raises(ConfigError, match=rf"train\.loss='{loss}' is not supported under privacy=user_dp.*softmax"):
        RunSettings(loss=loss, privacy="user_dp")
    # The DP round itself, called directly (a silo's code path without a run config)
    with pytest.raises(ConfigError, match=r"implements softmax only"):
        train_round_dp(silo, SPEC_DP, initial_global_arrays(SPEC_DP, n_items=N_ITEMS, seed=0), None,
                       TrainConfig(loss=loss), DP, seed=0)


def test_without_dp_every_loss_is_accepted_and_dp_keeps_sampled_softmax(silo: SiloData) -> None:
    for loss in LOSSES:
        assert RunSettings(loss=loss).train_config().loss == loss
    assert RunSettings(loss="softmax", privacy="user_dp").train_config().loss == "softmax"
    check_dp_loss("softmax")
    out = train_round_dp(silo, SPEC_DP, initial_global_arrays(SPEC_DP, n_items=N_ITEMS, seed=0), None,
                         TrainConfig(loss="softmax", n_negatives=4), DP, seed=0)
    assert set(out.global_after) == {"item_emb.weight", "item_bias.weight", "global_bias"}
