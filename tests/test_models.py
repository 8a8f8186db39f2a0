"""Every registered model: the global/local parameter split, scoring consistency, training, the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data.split import SiloData, SplitConfig, split_silos
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.models import (
    LOCAL_PREFIX,
    ModelSpec,
    available_models,
    build_model,
    global_state,
    load_global_state,
    local_state,
    register_model,
)
from fedrec.models import registry as model_registry
from fedrec.models.base import PER_USER_KEYS
from fedrec.models.mf import BiasedMF
from fedrec.training import TrainConfig, batch_loss, train_epochs

MODELS = ["mf", "twotower"]
N_ITEMS = 37



def spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, dim=8)


def test_both_models_are_registered() -> None:
    assert set(MODELS) <= set(available_models())


@pytest.mark.parametrize("name", MODELS)
def test_global_and_local_state_split_the_state_dict(name: str) -> None:
    # Prepare
    model = build_model(spec(name), n_users=11, n_items=N_ITEMS)

    # Execute
    glob, loc = global_state(model), local_state(model)

    # Assert: disjoint, together everything; local = the per-user rows (+ an optional private item bias)
    assert not any(k.startswith(LOCAL_PREFIX) for k in glob)
    assert loc and all(k.startswith(LOCAL_PREFIX) for k in loc)
    assert set(glob) | set(loc) == set(model.state_dict())
    assert all(loc[k].shape[0] == 11 for k in PER_USER_KEYS if k in loc)
    assert "user.emb.weight" in loc
    # every other local tensor (private item bias, private user tower) does not grow with the users
    bigger = local_state(build_model(spec(name), n_users=50, n_items=N_ITEMS))
    assert all(bigger[k].shape == v.shape for k, v in loc.items() if k not in PER_USER_KEYS)


@pytest.mark.parametrize("name", MODELS)
def test_global_shapes_do_not_depend_on_the_number_of_users(name: str) -> None:
    # Execute
    small = global_state(build_model(spec(name), n_users=3, n_items=N_ITEMS))
    large = global_state(build_model(spec(name), n_users=50, n_items=N_ITEMS))

    # Assert: what leaves a silo cannot reveal how many users it has
    assert {k: tuple(v.shape) for k, v in small.items()} == {k: tuple(v.shape) for k, v in large.items()}


@pytest.mark.parametrize("name", MODELS)
def test_load_global_state_copies_the_global_parameters_only(name: str) -> None:
    # Prepare: two models with different users and different random initialisations
    torch.manual_seed(0)
    source = build_model(spec(name), n_users=3, n_items=N_ITEMS)
    torch.manual_seed(1)
    target = build_model(spec(name), n_users=50, n_items=N_ITEMS)
    local_before = local_state(target)

    # Execute
    load_global_state(target, global_state(source))

    # Assert
    for k, v in global_state(source).items():
        assert torch.equal(global_state(target)[k], v), k
    for k, v in local_before.items():
        assert torch.equal(local_state(target)[k], v), k


@pytest.mark.parametrize("name", MODELS)
def test_load_global_state_refuses_local_missing_and_misshaped_parameters(name: str) -> None:
    # Prepare
    model = build_model(spec(name), n_users=5, n_items=N_ITEMS)
    good = global_state(model)
    key = "item_emb.weight"
    with_local = {**good, **local_state(model)}
    missing = {k: v for k, v in good.items() if k != key}
    misshaped = {**good, key: torch.zeros(N_ITEMS + 1, 8)}

    # Execute / Assert
    with pytest.raises(ValueError, match="local"):
        load_global_state(model, with_local)
    with pytest.raises(ValueError, match="do not match"):
        load_global_state(model, missing)
    with pytest.raises(ValueError, match=r"item_emb\.weight.*shape"):
        load_global_state(model, misshaped)
    assert torch.equal(global_state(model)[key], good[key])


@pytest.mark.parametrize("name", MODELS)
def test_score_all_agrees_with_score_pairs_and_score_matrix(name: str) -> None:
    # Prepare: perturb every parameter so biases and towers all matter
    torch.manual_seed(3)
    model = build_model(spec(name), n_users=6, n_items=N_ITEMS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    users = torch.tensor([4, 0, 2])
    items = torch.tensor([5, 0, 36, 17])

    # Execute
    with torch.no_grad():
        full = model.score_all(users)
        matrix = model.score_matrix(users, items)
        pairs_1d = model.score_pairs(users.repeat_interleave(4), items.repeat(3)).reshape(3, 4)
        pairs_2d = model.score_pairs(users, items.repeat(3, 1))

    # Assert
    assert full.shape == (3, N_ITEMS)
    torch.testing.assert_close(matrix, full[:, items])
    torch.testing.assert_close(pairs_1d, full[:, items])
    torch.testing.assert_close(pairs_2d, full[:, items])


def test_mf_score_is_the_biased_dot_product() -> None:
    # Prepare: set every parameter by hand
    model = BiasedMF(n_users=2, n_items=3, dim=2)
    with torch.no_grad():
        model.user.emb.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        assert model.user.bias is not None
        model.user.bias.weight.copy_(torch.tensor([[0.5], [-0.5]]))
        model.item_emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]))
        model.item_bias.weight.copy_(torch.tensor([[0.1], [0.2], [0.3]]))
        model.global_bias.fill_(1.0)

    # Execute
    with torch.no_grad():
        scores = model.score_all(torch.tensor([0, 1]))

    # Assert: user 0 / item 2: <(1,2),(2,2)> = 6, + 0.3 + 0.5 + 1 = 7.8;  user 1 / item 1: -1 + 0.2 - 0.5 + 1 = -0.3
    assert scores[0, 2].item() == pytest.approx(7.8)
    assert scores[1, 1].item() == pytest.approx(-0.3)
    assert scores[0, 0].item() == pytest.approx(1 + 0.1 + 0.5 + 1)


@pytest.fixture(scope="module")
def tiny_silo() -> SiloData:
    world = generate_world(SyntheticWorldConfig(n_users=80, n_items=40, region_only_items=0, region_sizes=(1.0,),
                                                mean_interactions=12.0, min_interactions=5))
    return split_silos(world, SplitConfig())["eu"]


def full_loss(model, silo: SiloData, cfg: TrainConfig) -> float:
    """The loss over all training interactions with a fixed draw of negatives."""
    u, i, r = (torch.as_tensor(a) for a in silo.train)
    with torch.no_grad():
        return float(batch_loss(model, u.long(), i.long(), r.float(), n_items=silo.n_items, cfg=cfg,
                                generator=torch.Generator().manual_seed(123)))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("loss", ["softmax", "full_softmax", "bpr", "mse"])
def test_training_reduces_the_loss(name: str, loss: str, tiny_silo: SiloData) -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model(spec(name), n_users=tiny_silo.n_users, n_items=tiny_silo.n_items)
    cfg = TrainConfig(loss=loss, batch_size=64, lr=0.02, n_negatives=16, epochs=20)
    before = full_loss(model, tiny_silo, cfg)

    # Execute
    last_epoch = train_epochs(model, tiny_silo.train, n_items=tiny_silo.n_items, cfg=cfg,
                              generator=torch.Generator().manual_seed(0))
    after = full_loss(model, tiny_silo, cfg)

    # Assert: at least 10% lower on the same negatives
    assert np.isfinite(last_epoch)
    assert after < 0.9 * before


def test_unknown_model_is_a_config_error_listing_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"'nope'.*available: ease, ials, mf, twotower"):
        build_model(ModelSpec(name="nope"), n_users=2, n_items=3)


def test_unknown_model_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'mf' rejected its arguments"):
        build_model(ModelSpec(name="mf", kwargs={"hidden": 3}), n_users=2, n_items=3)


def test_register_model_refuses_to_overwrite_without_force(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a private copy of the registry so nothing leaks into other tests
    monkeypatch.setattr(model_registry, "_MODELS", dict(model_registry._MODELS))

    def tiny_mf(n_users: int, n_items: int, dim: int = 32) -> BiasedMF:
        return BiasedMF(n_users, n_items, dim=2)

    # Execute / Assert
    with pytest.raises(ValueError, match=r"'mf' is already registered.*force=True"):
        register_model("mf", tiny_mf)
    assert build_model(ModelSpec(name="mf", dim=8), n_users=2, n_items=3).item_emb.embedding_dim == 8

    register_model("mf", tiny_mf, force=True)
    register_model("tiny", tiny_mf)
    assert build_model(ModelSpec(name="mf", dim=8), n_users=2, n_items=3).item_emb.embedding_dim == 2
    assert "tiny" in available_models()
