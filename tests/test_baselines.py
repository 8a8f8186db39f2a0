"""Simple baselines: EASE and ItemKNN against direct references, pooling, validation-only tuning, refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from fedrec.baselines import (
    evaluate_scores,
    fit_ease,
    fit_itemknn,
    itemknn,
    pooled_matrix,
    run_baselines,
    silo_matrix,
)
from fedrec.baselines.itemknn import knn_weights, neighbours
from fedrec.baselines.matrix import count_matrix
from fedrec.bounds import popularity
from fedrec.data.split import SiloData, SplitConfig, split_silos
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.evaluation import SiloEvaluation, evaluate_model, pool
from fedrec.metrics import METRICS, evaluate_full_ranking

SMALL = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def silos() -> dict[str, SiloData]:
    return split_silos(generate_world(SMALL), SplitConfig())


# --- references written directly from the definitions ----------------------------------------------------------


def dense_binary(silo: SiloData) -> np.ndarray:
    x = np.zeros((silo.n_users, silo.n_items))
    x[silo.train[0], silo.train[1]] = 1.0
    return x


def concatenated(silos: dict[str, SiloData]) -> tuple[np.ndarray, dict[str, int]]:
    """All silos' binary training rows, region after region in sorted order, and each region's first row."""
    regions = sorted(silos)
    starts = np.cumsum([0] + [silos[r].n_users for r in regions])
    return np.vstack([dense_binary(silos[r]) for r in regions]), {r: int(starts[i]) for i, r in enumerate(regions)}


def ease_reference(x: np.ndarray, lam: float) -> np.ndarray:
    """B = I - P / diag(P) with P = (XᵀX + λI)⁻¹, in float64."""
    n = x.shape[1]
    p = np.linalg.inv(x.T @ x + lam * np.eye(n))
    return np.eye(n) - p / np.diag(p)


def evaluate_rows(scores: np.ndarray, silo: SiloData, split: str) -> SiloEvaluation:
    """Metric sums of a silo from a full [n_users, n_items] score matrix (valid excludes train; test train+valid)."""
    target = silo.valid if split == "valid" else silo.test
    exclude = [silo.train[:2]] + ([silo.valid[:2]] if split == "test" else [])
    per_user = evaluate_full_ranking(lambda u: torch.as_tensor(scores[u.numpy()], dtype=torch.float32),
                                     n_items=silo.n_items, targets=target[:2], exclude=exclude)
    return SiloEvaluation(sums={m: float(per_user[m].sum()) for m in METRICS}, n_users=len(per_user["users"]))


def assert_same_sums(a: SiloEvaluation, b: SiloEvaluation) -> None:
    assert a.n_users == b.n_users
    for m in METRICS:
        assert a.sums[m] == pytest.approx(b.sums[m], rel=1e-6, abs=1e-9), m


# --- EASE --------------------------------------------------------------------------------------------------------


def test_ease_equals_the_closed_form_and_has_a_zero_diagonal() -> None:
    # Prepare: a tiny matrix with one repeated (user, item) pair, which EASE must count once
    rng = np.random.default_rng(3)
    users, items = np.nonzero(rng.random((12, 7)) < 0.4)
    users, items = np.append(users, users[0]), np.append(items, items[0])
    x = np.zeros((12, 7))
    x[users, items] = 1.0

    # Execute
    b = fit_ease(count_matrix(users, items, n_users=12, n_items=7), 5.0).numpy()

    # Assert
    np.testing.assert_allclose(b, ease_reference(x, 5.0), atol=1e-5)
    assert (np.diag(b) == 0).all()


def test_pooled_matrix_stacks_regions_in_sorted_order_with_offset_users(silos: dict[str, SiloData]) -> None:
    reference, _ = concatenated(silos)

    np.testing.assert_array_equal(pooled_matrix(silos).toarray() > 0, reference > 0)


def test_pooled_ease_is_ease_on_the_concatenated_matrix_and_local_only_is_each_silo_alone(
        silos: dict[str, SiloData]) -> None:
    # Prepare
    x, start = concatenated(silos)
    b_pooled = ease_reference(x, 100.0)

    # Execute
    res = run_baselines(silos, ["ease"], grids={"ease": [100.0]})["ease"]

    # Assert
    for r, silo in silos.items():
        rows = x[start[r]:start[r] + silo.n_users]
        assert_same_sums(res.centralized[r], evaluate_rows(rows @ b_pooled, silo, "test"))
        alone = dense_binary(silo)
        assert_same_sums(res.local_only[r], evaluate_rows(alone @ ease_reference(alone, 100.0), silo, "test"))
    assert any(res.local_only[r].sums != res.centralized[r].sums for r in silos)


# --- ItemKNN -----------------------------------------------------------------------------------------------------


def test_itemknn_keeps_the_k_most_cosine_similar_items_per_column(silos: dict[str, SiloData]) -> None:
    # Prepare
    silo = silos[sorted(silos)[0]]
    cos = cosine_similarity(dense_binary(silo).T)
    np.fill_diagonal(cos, -np.inf)

    # Execute: as the k grid does it, 5 neighbours out of a search for 20
    w = knn_weights(*neighbours(silo_matrix(silo), 20), 5).toarray()

    # Assert
    kept = w != 0
    assert kept.sum(axis=0).max() <= 5
    assert not np.diag(kept).any()
    np.testing.assert_allclose(w[kept], cos[kept], atol=1e-6)
    for j in range(w.shape[1]):
        if kept[:, j].any():
            assert w[kept[:, j], j].min() >= cos[~kept[:, j], j].max() - 1e-6, j


def test_itemknn_similarities_do_not_depend_on_the_column_block_size(
        silos: dict[str, SiloData], monkeypatch: pytest.MonkeyPatch) -> None:
    x = silo_matrix(silos[sorted(silos)[0]])
    whole = fit_itemknn(x, 5).toarray()

    monkeypatch.setattr(itemknn, "BLOCK_ELEMENTS", 7 * x.shape[1])  # blocks of 7 columns
    blocked = fit_itemknn(x, 5).toarray()

    np.testing.assert_allclose(blocked, whole, atol=1e-7)


# --- popularity and evaluation -------------------------------------------------------------------------------------


def test_local_popularity_is_the_popularity_bound(silos: dict[str, SiloData]) -> None:
    res = run_baselines(silos, ["popularity"])["popularity"]

    for r, silo in silos.items():
        assert res.local_only[r] == popularity(silo)


def test_popularity_counts_repeated_interactions_like_the_bound() -> None:
    # Prepare: item 0 has one user but three interactions, item 1 two users; user 3's test item is item 0
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    train = (np.array([0, 0, 0, 1, 2, 3]), np.array([0, 0, 0, 1, 1, 3]), np.ones(6, np.float32))
    silo = SiloData(region="a", n_users=4, n_items=4, explicit=False, train=train, valid=empty,
                    test=(np.array([3]), np.array([0]), np.ones(1, np.float32)))

    # Execute
    res = run_baselines({"a": silo}, ["popularity"])["popularity"]

    # Assert
    assert res.local_only["a"] == popularity(silo)
    assert res.local_only["a"].sums["ndcg@20"] == pytest.approx(1.0)


class ScoresOnly(torch.nn.Module):
    """What `evaluate_model` needs of an implicit-feedback model: `score_all`."""

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores[users]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_scores_has_evaluate_models_targets_and_exclusions(silos: dict[str, SiloData], split: str) -> None:
    silo = silos[sorted(silos)[0]]
    model = ScoresOnly(np.random.default_rng(0).random((silo.n_users, silo.n_items)))

    ours = evaluate_scores(model.score_all, silo, split=split)

    assert ours == evaluate_model(model, silo, split=split)  # type: ignore[arg-type]


# --- hyperparameters: validation only ----------------------------------------------------------------------------


def test_chosen_lambdas_are_the_argmax_of_validation_ndcg(silos: dict[str, SiloData]) -> None:
    # Prepare
    grid = [1.0, 30.0, 3000.0]
    x, start = concatenated(silos)

    # Execute
    res = run_baselines(silos, ["ease"], grids={"ease": grid})["ease"]

    # Assert: pooled, by pooled validation NDCG@20
    curve = {}
    for lam in grid:
        b = ease_reference(x, lam)
        valid = {r: evaluate_rows(x[start[r]:start[r] + s.n_users] @ b, s, "valid") for r, s in silos.items()}
        curve[lam] = pool(valid)[1]["ndcg@20"]
    assert res.centralized_choice is not None
    assert res.centralized_choice.valid_ndcg == pytest.approx(curve, rel=1e-6)
    assert res.centralized_choice.value == max(grid, key=curve.__getitem__)
    # local-only, each silo by its own validation NDCG@20
    for r, silo in silos.items():
        alone = dense_binary(silo)
        own = {lam: evaluate_rows(alone @ ease_reference(alone, lam), silo, "valid").means()["ndcg@20"]
               for lam in grid}
        assert res.local_choice[r].value == max(grid, key=own.__getitem__), r


def test_a_test_split_rigged_for_another_lambda_does_not_move_the_choice(silos: dict[str, SiloData]) -> None:
    # Prepare: every test user's target becomes the item the *unchosen* λ ranks first
    grid = [1.0, 3000.0]
    honest = run_baselines(silos, ["ease"], grids={"ease": grid})["ease"]
    assert honest.centralized_choice is not None
    chosen = honest.centralized_choice.value
    other = next(v for v in grid if v != chosen)
    x, start = concatenated(silos)
    b_other = ease_reference(x, other)
    rigged = {}
    for r, s in silos.items():
        scores = x[start[r]:start[r] + s.n_users] @ b_other
        for part in (s.train, s.valid):
            scores[part[0], part[1]] = -np.inf
        users = np.unique(s.test[0])
        rigged[r] = replace(s, test=(users, scores[users].argmax(axis=1), np.ones(len(users), np.float32)))

    # Execute
    res = run_baselines(rigged, ["ease"], grids={"ease": grid})["ease"]
    only = {v: run_baselines(rigged, ["ease"], grids={"ease": [v]})["ease"] for v in grid}

    # Assert: the test split now prefers `other`, the choice still follows validation
    assert pool(only[other].centralized)[1]["ndcg@20"] > pool(only[chosen].centralized)[1]["ndcg@20"] + 0.1
    assert res.centralized_choice is not None and res.centralized_choice.value == chosen
    assert res.centralized == only[chosen].centralized


def test_without_a_validation_split_the_default_value_is_used(silos: dict[str, SiloData]) -> None:
    no_valid = split_silos(generate_world(SMALL), SplitConfig(valid_fraction=0.0))

    res = run_baselines(no_valid, ["ease"], grids={"ease": [1.0, 10.0]})["ease"]

    assert res.centralized_choice is not None
    assert res.centralized_choice.value == 300.0 and res.centralized_choice.valid_ndcg == {}
    assert all(c.value == 300.0 for c in res.local_choice.values())


# --- refusals and errors -----------------------------------------------------------------------------------------


def test_ease_above_max_items_is_skipped_with_a_reason(silos: dict[str, SiloData]) -> None:
    res = run_baselines(silos, ["ease", "popularity"], max_items=10)

    assert res["ease"].skipped is not None and "max_items=10" in res["ease"].skipped
    assert res["ease"].centralized == {} and res["ease"].local_only == {}
    assert res["popularity"].skipped is None and set(res["popularity"].centralized) == set(silos)


def test_an_unknown_baseline_is_a_config_error_naming_the_valid_ones(silos: dict[str, SiloData]) -> None:
    with pytest.raises(ConfigError, match="ease, itemknn, popularity"):
        run_baselines(silos, ["ease", "slim"])


@pytest.mark.parametrize("grids", [{"ease": [0.0]}, {"itemknn": [2.5]}, {"ease": []}, {"popularity": [1.0]}])
def test_a_bad_grid_is_a_config_error(silos: dict[str, SiloData], grids: dict[str, list[float]]) -> None:
    with pytest.raises(ConfigError):
        run_baselines(silos, ["ease", "itemknn", "popularity"], grids=grids)


# --- the whole pipeline on the default synthetic world -----------------------------------------------------------


def test_pooled_ease_beats_popularity_on_the_default_synthetic_world() -> None:
    world = split_silos(generate_world(SyntheticWorldConfig()), SplitConfig())

    res = run_baselines(world, ["ease", "popularity"], grids={"ease": [300.0]})

    ease = pool(res["ease"].centralized)[1]["ndcg@20"]
    assert ease > pool(res["popularity"].centralized)[1]["ndcg@20"]
    assert ease > pool(res["popularity"].local_only)[1]["ndcg@20"]
