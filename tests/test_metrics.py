"""Full-ranking metrics against hand-computed cases.

Every case uses a fixed score matrix, so the ranking is known and the expected values are worked out by hand
below (DCG discounts a hit at rank r by 1/log2(r + 1); the ideal DCG puts min(|test|, K) hits at ranks 1..).
"""

from __future__ import annotations

from math import log2

import numpy as np
import pytest
import torch

from fedrec.metrics import METRICS, evaluate_full_ranking, rmse, summarize


def ranked_by_id(n_users: int, n_items: int) -> torch.Tensor:
    """Scores under which every user ranks item 0 first, item 1 second, ... (score = n_items - item)."""
    return torch.arange(n_items, 0, -1, dtype=torch.float32).repeat(n_users, 1)


def pairs(mapping: dict[int, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """{user: [items]} -> (user array, item array)."""
    users = [u for u, items in mapping.items() for _ in items]
    items = [i for items in mapping.values() for i in items]
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def dcg(ranks: list[int]) -> float:
    return sum(1.0 / log2(r + 1) for r in ranks)


# --- a 25-item catalog ranked by id ---------------------------------------------------------------------------

N_ITEMS = 25
TARGETS = {
    0: [2, 5],  # ranks 3 and 6
    1: [10],  # rank 11: outside the top 10, inside the top 20
    2: [11],  # rank 12, but user 2's two top-scored items (0, 1) are excluded -> rank 10
    3: list(range(1, 23)),  # 22 test items, item 0 (rank 1) is not one of them
    5: [0, 4],  # item 0 is top-scored but excluded (a train item): only item 4 can be a hit, at rank 4
}
EXCLUDE = {2: [0, 1], 4: [7], 5: [0]}  # user 4 has training items but no test item: not evaluated

# user 0: hits at ranks 3, 6; ideal: 2 hits at ranks 1, 2
#   DCG = 1/log2(4) + 1/log2(7) = 0.5 + 0.35621 = 0.85621;  IDCG = 1/log2(2) + 1/log2(3) = 1 + 0.63093 = 1.63093
#   NDCG@10 = NDCG@20 = 0.85621 / 1.63093 = 0.52498; Recall@20 = 2/2; HR@10 = 1
U0_NDCG = (0.5 + 1 / log2(7)) / (1 + 1 / log2(3))
# user 1: one hit at rank 11 -> HR@10 = 0, NDCG@10 = 0, Recall@20 = 1/1, NDCG@20 = (1/log2(12)) / 1 = 0.27894
U1_NDCG20 = 1 / log2(12)
# user 2: after removing items 0 and 1 item 11 is at rank 10 -> HR@10 = 1, NDCG = 1/log2(11) = 0.28906 at both cuts
U2_NDCG = 1 / log2(11)
# user 3: 22 test items, hits at ranks 2..20 (19 of them) in the top 20 and ranks 2..10 (9) in the top 10.
#   Recall@20 = 19/22 = 0.86364 (denominator: all test items)
#   IDCG@20 is capped at 20 items: sum_{r=1..20} 1/log2(r+1) = 7.04027; DCG@20 = that minus the rank-1 term (1.0)
#   NDCG@20 = (IDCG20 - 1) / IDCG20 = 0.85796;  NDCG@10 = (IDCG10 - 1) / IDCG10 with IDCG10 = 4.54356 -> 0.77991
U3_NDCG20 = dcg(list(range(2, 21))) / dcg(list(range(1, 21)))
U3_NDCG10 = dcg(list(range(2, 11))) / dcg(list(range(1, 11)))
# user 5: item 0 excluded, item 4 moves up to rank 4 and is the only hit; 2 test items
#   Recall@20 = 1/2; HR@10 = 1; NDCG = (1/log2(5)) / (1 + 1/log2(3)) = 0.43068 / 1.63093 = 0.26407
U5_NDCG = (1 / log2(5)) / (1 + 1 / log2(3))

EXPECTED_25 = {
    "users": [0, 1, 2, 3, 5],
    "recall@20": [1.0, 1.0, 1.0, 19 / 22, 0.5],
    "ndcg@20": [U0_NDCG, U1_NDCG20, U2_NDCG, U3_NDCG20, U5_NDCG],
    "hr@10": [1.0, 0.0, 1.0, 1.0, 1.0],
    "ndcg@10": [U0_NDCG, 0.0, U2_NDCG, U3_NDCG10, U5_NDCG],
}


def test_hand_computed_metrics_on_a_25_item_catalog() -> None:
    # Prepare
    scores = ranked_by_id(6, N_ITEMS)

    # Execute
    out = evaluate_full_ranking(lambda users: scores[users], n_items=N_ITEMS, targets=pairs(TARGETS),
                                exclude=[pairs(EXCLUDE)])

    # Assert
    np.testing.assert_array_equal(out["users"], EXPECTED_25["users"])
    for m in METRICS:
        np.testing.assert_allclose(out[m], EXPECTED_25[m], rtol=1e-6, err_msg=m)


def test_relevant_item_ranked_eleventh_misses_hr10_but_counts_for_recall20() -> None:
    # Prepare
    scores = ranked_by_id(1, N_ITEMS)

    # Execute
    out = evaluate_full_ranking(lambda users: scores[users], n_items=N_ITEMS, targets=pairs({0: [10]}), exclude=[])

    # Assert
    assert out["hr@10"][0] == 0.0
    assert out["ndcg@10"][0] == 0.0
    assert out["recall@20"][0] == 1.0
    assert out["ndcg@20"][0] == pytest.approx(1 / log2(12))


def test_excluded_items_are_not_ranked_even_when_top_scored() -> None:
    # Prepare: the user's only test item is ranked 12th; the 2 items above the top-10 cut it needs to climb
    # are its training items
    scores = ranked_by_id(1, N_ITEMS)
    targets = pairs({0: [11]})

    # Execute
    without = evaluate_full_ranking(lambda users: scores[users], n_items=N_ITEMS, targets=targets, exclude=[])
    with_exclusion = evaluate_full_ranking(lambda users: scores[users], n_items=N_ITEMS, targets=targets,
                                           exclude=[pairs({0: [0]}), pairs({0: [1]})])

    # Assert: rank 12 -> no HR@10; rank 10 once items 0 and 1 are gone (exclusions given as two parts)
    assert without["hr@10"][0] == 0.0
    assert with_exclusion["hr@10"][0] == 1.0
    assert with_exclusion["ndcg@10"][0] == pytest.approx(1 / log2(11))


def test_more_than_20_test_items_caps_the_ideal_dcg_at_20() -> None:
    # Prepare: 22 test items occupy ranks 1..22, so the top 20 is all hits: a perfect ranking
    scores = ranked_by_id(1, N_ITEMS)

    # Execute
    out = evaluate_full_ranking(lambda users: scores[users], n_items=N_ITEMS,
                                targets=pairs({0: list(range(22))}), exclude=[])

    # Assert: NDCG is 1 at both cuts (an uncapped IDCG over 22 items would give < 1); recall = 20/22
    assert out["ndcg@20"][0] == pytest.approx(1.0)
    assert out["ndcg@10"][0] == pytest.approx(1.0)
    assert out["recall@20"][0] == pytest.approx(20 / 22)
    assert out["hr@10"][0] == 1.0


def test_catalog_smaller_than_the_cutoffs() -> None:
    # Prepare: 5 items ranked by id
    scores = ranked_by_id(3, 5)
    targets = pairs({0: [4], 1: [1, 3], 2: [2]})
    exclude = [pairs({2: [0]})]

    # Execute
    out = evaluate_full_ranking(lambda users: scores[users], n_items=5, targets=targets, exclude=exclude)

    # Assert
    # user 0: item 4 at rank 5 -> every metric counts it; NDCG = 1/log2(6) = 0.38685
    # user 1: hits at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068; IDCG = 1 + 0.63093
    #         NDCG = 1.06161 / 1.63093 = 0.65092
    # user 2: item 0 excluded, item 2 at rank 2: NDCG = 1/log2(3) = 0.63093
    u1 = (1 / log2(3) + 1 / log2(5)) / (1 + 1 / log2(3))
    np.testing.assert_allclose(out["ndcg@20"], [1 / log2(6), u1, 1 / log2(3)], rtol=1e-6)
    np.testing.assert_allclose(out["ndcg@10"], [1 / log2(6), u1, 1 / log2(3)], rtol=1e-6)
    np.testing.assert_array_equal(out["recall@20"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out["hr@10"], [1.0, 1.0, 1.0])


def test_excluded_test_item_is_never_a_hit_in_a_small_catalog() -> None:
    # Prepare: 5 items ranked by id; item 0 is both a training (excluded) and a test item, item 3 a test item
    scores = ranked_by_id(1, 5)

    # Execute
    out = evaluate_full_ranking(lambda users: scores[users], n_items=5, targets=pairs({0: [0, 3]}),
                                exclude=[pairs({0: [0]})])

    # Assert: as in the 25-item catalog, only item 3 (rank 3 once item 0 is gone) can be a hit:
    # Recall@20 = 1/2; NDCG = (1/log2(4)) / (1 + 1/log2(3)) = 0.5 / 1.63093 = 0.30657
    assert out["recall@20"][0] == pytest.approx(0.5)
    assert out["ndcg@20"][0] == pytest.approx(0.5 / (1 + 1 / log2(3)))


def naive_metrics(row: np.ndarray, relevant: set[int], excluded: set[int]) -> dict[str, float]:
    """Reference: sort the non-excluded items by score and walk the list."""
    ranking = [i for i in np.argsort(-row, kind="stable").tolist() if i not in excluded]
    out: dict[str, float] = {}
    for cut in (10, 20):
        hit_ranks = [r + 1 for r, i in enumerate(ranking[:cut]) if i in relevant]
        out[f"ndcg@{cut}"] = dcg(hit_ranks) / dcg(list(range(1, min(len(relevant), cut) + 1)))
    out["recall@20"] = sum(i in relevant for i in ranking[:20]) / len(relevant)
    out["hr@10"] = float(any(i in relevant for i in ranking[:10]))
    return out


@pytest.mark.parametrize("batch_size", [1, 2, 3, 512])
def test_batch_size_does_not_change_results(batch_size: int) -> None:
    # Prepare: random scores (no ties), 9 user ids of which only some have targets, random train exclusions
    rng = np.random.default_rng(7)
    n_users, n_items = 9, 40
    scores = torch.as_tensor(rng.permutation(n_users * n_items).reshape(n_users, n_items), dtype=torch.float32)
    targets = {u: rng.choice(n_items, size=int(rng.integers(1, 25)), replace=False).tolist() for u in (0, 2, 3, 5, 8)}
    exclude = {u: [i for i in rng.choice(n_items, size=8, replace=False).tolist() if i not in targets.get(u, [])]
               for u in range(n_users)}

    # Execute
    out = evaluate_full_ranking(lambda users: scores[users], n_items=n_items, targets=pairs(targets),
                                exclude=[pairs(exclude)], batch_size=batch_size)

    # Assert: every batch size agrees with the one-user-at-a-time reference
    np.testing.assert_array_equal(out["users"], [0, 2, 3, 5, 8])
    for k, u in enumerate(out["users"].tolist()):
        ref = naive_metrics(scores[u].numpy(), set(targets[u]), set(exclude[u]))
        for m in METRICS:
            assert out[m][k] == pytest.approx(ref[m]), (u, m)


def test_summarize_is_the_user_weighted_mean() -> None:
    # Prepare
    per_user = {"users": np.array([0, 4, 7]), "ndcg@20": np.array([0.2, 0.4, 0.9]),
                "recall@20": np.array([1.0, 0.0, 0.5]), "hr@10": np.array([1.0, 0.0, 0.0]),
                "ndcg@10": np.array([0.0, 0.0, 0.3])}

    # Execute
    means = summarize(per_user)

    # Assert: (0.2 + 0.4 + 0.9) / 3 = 0.5; (1 + 0 + 0.5) / 3 = 0.5; 1/3; 0.3 / 3 = 0.1
    assert means == pytest.approx({"ndcg@20": 0.5, "recall@20": 0.5, "hr@10": 1 / 3, "ndcg@10": 0.1})


def test_summarize_of_no_users_is_nan() -> None:
    # Prepare
    per_user = {"users": np.zeros(0, dtype=np.int64), **{m: np.zeros(0) for m in METRICS}}

    # Execute
    means = summarize(per_user)

    # Assert
    assert set(means) == set(METRICS)
    assert all(np.isnan(v) for v in means.values())


def test_rmse_returns_the_sum_of_squared_errors_and_the_count() -> None:
    # Prepare: prediction = user + item, so the predictions are 1, 2, 4 against ratings 1, 3, 3
    test = (np.array([0, 1, 2]), np.array([1, 1, 2]), np.array([1.0, 3.0, 3.0], dtype=np.float32))

    # Execute
    sq_error, count = rmse(lambda u, i: (u + i).to(torch.float32), test)

    # Assert: errors 0, -1, +1 -> squared sum 2 over 3 ratings
    assert sq_error == pytest.approx(2.0)
    assert count == 3


def test_rmse_is_reported_only_for_a_model_trained_to_predict_ratings() -> None:
    from fedrec.data.split import SiloData
    from fedrec.evaluation import evaluate_model
    from fedrec.models import ModelSpec, build_model

    rng = np.random.default_rng(0)
    part = lambda n: (rng.integers(0, 4, n), rng.integers(0, 10, n), rng.integers(1, 6, n).astype(np.float32))  # noqa: E731
    silo = SiloData(region="r", n_users=4, n_items=10, explicit=True, train=part(20), valid=part(4), test=part(4))
    model = build_model(ModelSpec(name="mf", dim=4), n_users=4, n_items=10)
    assert "rmse" not in evaluate_model(model, silo).means()  # ranked, not rated: an RMSE would mean nothing
    assert evaluate_model(model, silo, rmse_too=True).means()["rmse"] > 0
