"""iALS: the closed-form sweeps against a dense reference written from the objective, federated = pooled, and
what the coordinator's screen refuses.

The reference solves each row's ridge regression one at a time with numpy on the dense binary matrix, straight
from Rendle et al. (RecSys 2022), eq. for the frequency-scaled regulariser; fedrec's batched, grouped solves
must agree with it, and the federation (silos solve users, the coordinator solves items from summed per-item
statistics) must equal centralized iALS on the pooled matrix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakegrid import run_in_process
from flwr.app import Array, ArrayRecord, Context, Message

from fedrec.baselines import pooled_matrix, silo_matrix
from fedrec.config import experiment_from_dict
from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError
from fedrec.experiment import run_experiment
from fedrec.model_io import load_global_model
from fedrec.models import ModelSpec, build_model, global_state, local_state
from fedrec.models.ials import feature_factors, pack, unpack
from fedrec.settings import RunSettings
from fedrec.statistics import solve_silos, statistics_family, sum_statistics
from fedrec.statistics.ials import ITEM_GRAM, ITEM_RHS, ITEM_USERS, USER_GRAM, USERS
from fedrec.training import TrainConfig, assemble_model, initial_global_arrays, train_epochs
from fedrec.world import prepare_world
from tests.test_config import typed

KW = {"alpha0": 0.3, "lam": 0.05, "nu": 1.0}
SPEC = ModelSpec(name="ials", dim=6, kwargs=KW)
WORLD = SyntheticWorldConfig(n_users=150, n_items=50, region_only_items=3, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=10.0, min_interactions=4)


@pytest.fixture(scope="module")
def silos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SiloData]:
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world"))
    return world.silos


def reference_half_step(x: np.ndarray, fixed: np.ndarray, alpha0: float, lam: float, nu: float,
                        n_cols: int | None = None) -> np.ndarray:
    """Each row r of binary x: argmin Σ_j x_rj (f_j·w − 1)² + α₀ Σ_j (f_j·w)² + λ(Σ_j x_rj + α₀ n_cols)^ν ‖w‖².

    n_cols: x's columns by default (users: the catalog); for items, the users with at least one pair.
    """
    n_cols = x.shape[1] if n_cols is None else n_cols
    d = fixed.shape[1]
    out = np.zeros((x.shape[0], d))
    for r in range(x.shape[0]):
        seen = fixed[x[r] > 0]
        a = seen.T @ seen + alpha0 * fixed.T @ fixed + lam * (x[r].sum() + alpha0 * n_cols) ** nu * np.eye(d)
        out[r] = np.linalg.solve(a, seen.sum(0))
    return out


def objective(x: np.ndarray, w: np.ndarray, h: np.ndarray, alpha0: float, lam: float, nu: float) -> float:
    s = w @ h.T
    fit = ((s - 1) ** 2 * x).sum() + alpha0 * (s**2).sum()
    reg_u = ((x.sum(1) + alpha0 * x.shape[1]) ** nu * (w**2).sum(1)).sum()
    reg_i = ((x.sum(0) + alpha0 * x.shape[0]) ** nu * (h**2).sum(1)).sum()
    return float(fit + lam * (reg_u + reg_i))


def test_item_factors_are_global_and_nothing_per_user_is_kept() -> None:
    model = build_model(SPEC, n_users=5, n_items=7)
    assert set(global_state(model)) == {"item.weight"} and local_state(model) == {}
    assert list(model.parameters()) == []  # solved, never trained


def test_pack_and_unpack_round_trip_a_symmetric_matrix() -> None:
    a = torch.randn(3, 5, 5, dtype=torch.float64)
    sym = a + a.transpose(1, 2)
    assert pack(sym).shape == (3, 15)
    torch.testing.assert_close(unpack(pack(sym), 5), sym)


def test_a_silo_s_user_factors_are_the_reference_ridge_solves(silos: dict[str, SiloData]) -> None:
    silo = silos["eu"]
    init = initial_global_arrays(SPEC, n_items=silo.n_items, seed=1)
    model = assemble_model(SPEC, silo, init, None, seed=1)
    w = model.user_factors().numpy()  # type: ignore[operator]
    x = silo_matrix(silo).toarray()
    np.testing.assert_allclose(w, reference_half_step(x, init["item.weight"].astype(np.float64), **KW), atol=1e-9)
    scores = model.score_all(torch.arange(silo.n_users)).numpy()
    np.testing.assert_allclose(scores, (w @ init["item.weight"].T.astype(np.float64)), rtol=1e-4, atol=1e-6)


def test_federated_sweeps_are_centralized_ials_on_the_pooled_matrix_and_lower_its_objective(
        silos: dict[str, SiloData]) -> None:
    # Prepare: the dense reference from the same initial item factors, on the pooled binary matrix
    x = pooled_matrix(silos).toarray()
    h = initial_global_arrays(SPEC, n_items=x.shape[1], seed=0)["item.weight"].astype(np.float64)
    losses = []
    for _ in range(3):
        w = reference_half_step(x, h, **KW)
        h = reference_half_step(x.T, w, **KW, n_cols=int((x.sum(1) > 0).sum()))
        losses.append(objective(x, w, h, **KW))

    # Execute: three rounds of silos' statistics summed and solved (what the coordinator does)
    got = solve_silos(SPEC, [silos[r] for r in sorted(silos)], n_items=x.shape[1], seed=0, rounds=3)["item.weight"]

    # Assert
    np.testing.assert_allclose(got, h, atol=1e-5)
    assert losses[0] > losses[1] > losses[2]  # ALS never increases the objective


def test_the_summed_statistics_are_the_pooled_data_s(silos: dict[str, SiloData]) -> None:
    family = statistics_family(SPEC)
    init = initial_global_arrays(SPEC, n_items=silos["eu"].n_items, seed=0)
    parts = [family.local_statistics(silos[r], init, SPEC) for r in sorted(silos)]
    summed = sum_statistics(parts)
    x = pooled_matrix(silos).toarray()
    w = reference_half_step(x, init["item.weight"].astype(np.float64), **KW)
    a = np.einsum("ui,ud,ue->ide", x, w, w)
    np.testing.assert_allclose(unpack(torch.from_numpy(summed[ITEM_GRAM]), 6).numpy(), a, atol=1e-5)
    np.testing.assert_allclose(summed[ITEM_RHS], x.T @ w, atol=1e-5)
    np.testing.assert_allclose(unpack(torch.from_numpy(summed[USER_GRAM]), 6).numpy(), w.T @ w, atol=1e-5)
    np.testing.assert_array_equal(summed[ITEM_USERS], x.sum(0))
    assert summed[USERS][0] == x.shape[0]
    assert all(family.check(p, SPEC) is None for p in parts)


def tampered(silo: SiloData, change: str) -> dict[str, np.ndarray]:
    family = statistics_family(SPEC)
    stats = {k: v.copy() for k, v in family.local_statistics(
        silo, initial_global_arrays(SPEC, n_items=silo.n_items, seed=0), SPEC).items()}
    used = int(np.flatnonzero(stats[ITEM_USERS] > 0)[0])
    unused = np.flatnonzero(stats[ITEM_USERS] == 0)
    if change == "fractional count":
        stats[ITEM_USERS][used] += 0.5
    elif change == "more users than the silo":
        stats[ITEM_USERS][used] = stats[USERS][0] + 1
    elif change == "indefinite item gram":
        a = unpack(torch.from_numpy(stats[ITEM_GRAM]), 6)
        a[used] = -a[used]
        stats[ITEM_GRAM] = pack(a).numpy()
    elif change == "item gram above the user gram":
        a = unpack(torch.from_numpy(stats[ITEM_GRAM]), 6)
        a[used] = a[used] + 10 * unpack(torch.from_numpy(stats[USER_GRAM]), 6)
        stats[ITEM_GRAM] = pack(a).numpy()
    elif change == "boosted right-hand side":
        stats[ITEM_RHS][used] *= 50.0
    elif change == "more users than pairs":
        stats[USERS][0] = stats[ITEM_USERS].sum() + 1
        stats[ITEM_USERS][:] = np.minimum(stats[ITEM_USERS], stats[USERS][0])
    elif change == "an item nobody has":
        stats[ITEM_RHS][unused[0] if len(unused) else used] += 1.0
        stats[ITEM_USERS][unused[0] if len(unused) else used] = 0.0
    return stats


@pytest.mark.parametrize(("change", "why"), [
    ("fractional count", "whole numbers"),
    ("more users than the silo", "more users than the silo"),
    ("indefinite item gram", "not positive semi-definite"),
    ("item gram above the user gram", f"exceeds {USER_GRAM}"),
    ("boosted right-hand side", "larger than its users' factors allow"),
    ("an item nobody has", "no user has"),
    ("more users than pairs", "more users with training data than user-item pairs"),
])
def test_the_screen_refuses_statistics_no_users_could_have(silos: dict[str, SiloData], change: str, why: str) -> None:
    assert why in (statistics_family(SPEC).check(tampered(silos["apac"], change), SPEC) or "")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"alpha0": 0}, "alpha0=0 is invalid"),
    ({"lam": -1.0}, "lam=-1.0 is invalid"),
    ({"nu": "one"}, "nu='one' is invalid"),
    ({"beta": 1}, "rejected its arguments"),
    ({"nu": 3.0}, "nu=3.0 is invalid"),
    ({"lam": 1e-12, "alpha0": 1e-3}, "below 1e-08"),
])
def test_bad_hyperparameters_are_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(ModelSpec("ials", 4, kwargs), n_users=2, n_items=3)


@pytest.mark.parametrize(("overrides", "match"), [
    (["model=ials", "federation.local_epochs=2"], "local_epochs=2 has no meaning"),
    (["model=ials", "strategy=fedadam"], "strategy=fedadam"),
])
def test_runs_that_make_no_sense_for_ials_are_config_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        typed(overrides)


def test_sgd_refuses_ials(silos: dict[str, SiloData]) -> None:
    model = build_model(SPEC, n_users=silos["eu"].n_users, n_items=silos["eu"].n_items)
    with pytest.raises(ConfigError, match="not trained by SGD"):
        train_epochs(model, silos["eu"].train, n_items=silos["eu"].n_items, cfg=TrainConfig(),
                     generator=torch.Generator(), epochs=1)


def test_the_federation_on_the_real_apps_is_centralized_ials(tmp_path: Path) -> None:
    # Prepare
    dataset = {"name": "synthetic", "n_users": 300, "n_items": 60, "region_only_items": 4,
               "region_sizes": [2.0, 1.0, 1.0], "seed": 5}
    cfg = experiment_from_dict({"dataset": dataset, "model": {"name": "ials", "dim": 8, "kwargs": KW},
                                "federation": {"rounds": 4}, "baselines": []})

    # Execute: the real ServerApp and ClientApps in process
    res = run_experiment(cfg, tmp_path, log=lambda *_: None, engine=run_in_process)

    # Assert: the global factors are 4 sweeps of pooled iALS; every region's metrics are the centralized bound's
    world = {r: SiloData.load(tmp_path / "world" / f"silo_{r}.npz") for r in ("apac", "eu", "na")}
    expected = solve_silos(cfg.model, [world[r] for r in sorted(world)], n_items=world["eu"].n_items, seed=cfg.seed,
                         rounds=4)
    arrays, spec, _ = load_global_model(tmp_path / "global_model.safetensors")
    assert spec.name == "ials" and [v["round"] for v in res["model_versions"]][-1] == 4
    np.testing.assert_allclose(arrays["item.weight"], expected["item.weight"], atol=1e-6)
    assert res["final"]["federated"] == res["final"]["centralized"]
    assert res["final"]["federated"]["overall"]["ndcg@20"] > res["final"]["popularity"]["overall"]["ndcg@20"]
    rounds = [e["overall"]["ndcg@20"] for e in res["rounds"]]
    assert rounds[-1] > rounds[0]  # the sweeps learn


def hostile(msg: Message, ctx: Context, call_next) -> Message:  # type: ignore[no-untyped-def]
    """apac's statistics, tampered with after its ClientApp built them: round 1 a boosted item, round 2 a
    negative count; its honest reply in round 3."""
    reply = call_next(msg, ctx)
    meta = reply.content.config_records.get("meta")
    rnd = int(meta["server-round"]) if meta is not None else 0  # type: ignore[call-overload]
    if msg.metadata.message_type != "train" or meta is None or meta["region"] != "apac" or rnd == 3:
        return reply
    arrays = {k: v.numpy().copy() for k, v in reply.content.array_records["arrays"].items()}
    if rnd == 1:
        arrays[ITEM_RHS][0] *= 100.0
    else:
        arrays[ITEM_USERS][0] = -1.0
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return reply


def test_a_co_silo_s_impossible_statistics_are_rejected_and_the_others_solve(tmp_path: Path) -> None:
    # Prepare
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world")
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / "out"), num_rounds=3, min_nodes=3,
                    model="ials", dim=6, model_kwargs=json.dumps(KW))

    # Execute
    run_in_process(s, client_mods=[hostile])

    # Assert: apac is left out of rounds 1-2 with the screen's reason, back in round 3
    log = json.loads((tmp_path / "out" / "federated_history.json").read_text())["round_log"]
    reasons = [e["rejected"].get("apac", "") for e in log]
    assert "larger than its users' factors allow" in reasons[0]
    assert "whole numbers" in reasons[1] and reasons[2] == ""
    assert [e["participants"] for e in log] == [["eu", "na"], ["eu", "na"], ["apac", "eu", "na"]]
    # the global factors are what the honest rounds give: 2 sweeps on eu+na, then one on everyone
    n_items = world.silos["eu"].n_items
    family, spec = statistics_family(SPEC), SPEC
    arrays = initial_global_arrays(spec, n_items=n_items, seed=s.seed)
    for members in (("eu", "na"), ("eu", "na"), ("apac", "eu", "na")):
        summed = sum_statistics(family.local_statistics(world.silos[r], arrays, spec) for r in members)
        arrays = family.solve(summed, arrays, spec, n_items)
    got, _, _ = load_global_model(tmp_path / "out" / "global_model.safetensors")
    np.testing.assert_allclose(got["item.weight"], arrays["item.weight"], atol=1e-6)


def test_a_dimension_beyond_the_limit_is_refused_before_any_solve() -> None:
    with pytest.raises(ConfigError, match=r"model\.dim=513 is invalid: iALS takes 1 to 512"):
        build_model(ModelSpec("ials", 513), n_users=2, n_items=3)
    with pytest.raises(ConfigError, match=r"per-item Gram of .* GiB"):  # the reply, checked by the silo too
        build_model(ModelSpec("ials", 512), n_users=2, n_items=40_000)


def test_users_solved_in_small_chunks_are_the_same_factors(silos: dict[str, SiloData],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    silo = silos["eu"]
    init = initial_global_arrays(SPEC, n_items=silo.n_items, seed=2)
    whole = assemble_model(SPEC, silo, init, None, seed=2).user_factors().clone()  # type: ignore[operator]
    monkeypatch.setattr("fedrec.models.ials._CHUNK_BYTES", 8 * 6 * 6 * 7)  # 7 rows at a time
    chunked = assemble_model(SPEC, silo, init, None, seed=2).user_factors()  # type: ignore[operator]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_a_forked_region_serves_ials_of_its_own_data(tmp_path: Path) -> None:
    # Prepare: apac forks at version 0 and does not contribute; its line is one sweep of its own data per round
    dataset = {"name": "synthetic", "n_users": 300, "n_items": 60, "region_only_items": 4,
               "region_sizes": [2.0, 1.0, 1.0], "seed": 5}
    cfg = experiment_from_dict({"dataset": dataset, "model": {"name": "ials", "dim": 8, "kwargs": KW},
                                "federation": {"rounds": 3}, "baselines": [],
                                "adoption": {"apac": {"fork": 0, "contribute": False}}})

    # Execute
    res = run_experiment(cfg, tmp_path, log=lambda *_: None, engine=run_in_process)

    # Assert: the others federate; apac serves exactly local-only iALS after as many sweeps
    assert [e["participants"] for e in res["round_log"]] == [["eu", "na"]] * 3
    assert res["adoption"]["apac"]["serving"].startswith("fork:")
    served = res["final"]["served"]["per_region"]["apac"]
    assert served == pytest.approx(res["final"]["local_only"]["per_region"]["apac"], abs=1e-9, rel=0)
    assert served != pytest.approx(res["final"]["federated"]["per_region"]["apac"], abs=1e-6, rel=0)


def test_feature_factors_are_the_public_features_principal_directions_by_weight() -> None:
    # Prepare: 6 features of rank 4 (two are combinations of others), shifted by a constant
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 4))
    features = np.hstack([base, base[:, :2] @ rng.normal(size=(2, 2))]) + 3.0

    # Execute
    h = feature_factors(features, 6)

    # Assert: orthogonal columns, the first of norm 1, norms falling, zero beyond the rank; the shift is ignored
    norms = np.linalg.norm(h, axis=0)
    gram = h.T @ h
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-10)
    assert norms[0] == pytest.approx(1.0) and bool((np.diff(norms[:4]) <= 0).all()) and bool((norms[:4] > 0).all())
    np.testing.assert_allclose(norms[4:], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(feature_factors(features - 3.0, 6)), np.abs(h), atol=1e-10)


def test_the_first_item_factors_come_from_public_features_when_asked() -> None:
    spec = ModelSpec(name="ials", dim=3, kwargs={"init": "features"})
    features = np.random.default_rng(1).normal(size=(20, 5)).astype(np.float32)
    arrays = initial_global_arrays(spec, n_items=20, seed=0, item_features=features)
    np.testing.assert_allclose(arrays["item.weight"], feature_factors(features, 3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="needs the catalog's public item features"):
        initial_global_arrays(spec, n_items=20, seed=0)
    with pytest.raises(ConfigError, match=r"model.kwargs.init='tags' is invalid"):
        initial_global_arrays(ModelSpec(name="ials", dim=3, kwargs={"init": "tags"}), n_items=20, seed=0)
