"""A hostile co-silo against `model=ials`: statistics that no users' factors could give must not pass the screen.

The screen used to check Cauchy–Schwarz on each item's right-hand side only in trace form, ‖b_i‖² ≤ |U_i|·tr(A_i),
and to bound nothing's size. One invented user was then enough to point b_t (hence the solved h_t) along the
direction other regions' users share, paying the trace with a large A_t in a direction nobody uses: on a
3 × 600-user world that put a tail item into the top-20 of 60% / 50% of the other regions' test users (4% / 3%
honest; 80 invented users with honest statistics reach 14%; `/tmp/redteam-ials/steer2.py` in the review). Now
|U_i|·A_i − b_i b_iᵀ must be positive semi-definite and every user's factors within the bound the model's public
hyperparameters give (`max_user_norm2`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakegrid import run_in_process
from flwr.app import Array, ArrayRecord, Context, Message

from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.model_io import load_global_model
from fedrec.models import ModelSpec
from fedrec.models.ials import pack, unpack
from fedrec.settings import RunSettings
from fedrec.statistics import solve_curve, statistics_family, sum_statistics
from fedrec.statistics.ials import ITEM_GRAM, ITEM_RHS, ITEM_USERS, USER_GRAM, USERS, max_user_norm2
from fedrec.training import initial_global_arrays
from fedrec.world import prepare_world

KW = {"alpha0": 0.3, "lam": 0.05, "nu": 1.0}
SPEC = ModelSpec(name="ials", dim=6, kwargs=KW)
WORLD = SyntheticWorldConfig(n_users=150, n_items=50, region_only_items=3, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=10.0, min_interactions=4)
TARGET = 7


@pytest.fixture(scope="module")
def silos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SiloData]:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).silos


def steer(stats: dict[str, np.ndarray], h: np.ndarray, beta: float) -> dict[str, np.ndarray]:
    """One invented user of TARGET: b_t += β·v (v: the items' mean direction), the trace paid as β² along u ⊥ v."""
    out = {k: v.copy() for k, v in stats.items()}
    d = h.shape[1]
    v = h.astype(np.float64).sum(0)
    v /= np.linalg.norm(v)
    u = np.eye(d)[int(np.argmin(np.abs(v)))] - v[int(np.argmin(np.abs(v)))] * v
    u /= np.linalg.norm(u)
    junk = beta**2 * np.outer(u, u)
    a = unpack(torch.from_numpy(out[ITEM_GRAM][TARGET].astype(np.float64)), d).numpy() + junk
    g = unpack(torch.from_numpy(out[USER_GRAM].astype(np.float64)), d).numpy() + junk
    out[ITEM_GRAM][TARGET] = pack(torch.from_numpy(a)).numpy()
    out[USER_GRAM] = pack(torch.from_numpy(g)).numpy().astype(np.float32)
    out[ITEM_RHS][TARGET] += (beta * v).astype(np.float32)
    out[ITEM_USERS][TARGET] += 1
    out[USERS] += 1
    return out


def invented_users(stats: dict[str, np.ndarray], w: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """`count` invented users of TARGET whose factors are all `w` (Cauchy–Schwarz holds with equality)."""
    out = {k: v.copy() for k, v in stats.items()}
    add = pack(torch.from_numpy(count * np.outer(w, w))).numpy().astype(np.float32)
    out[ITEM_GRAM][TARGET] += add
    out[USER_GRAM] += add
    out[ITEM_RHS][TARGET] += (count * w).astype(np.float32)
    out[ITEM_USERS][TARGET] += count
    out[USERS] += count
    return out


def honest(silo: SiloData, rounds: int = 1, spec: ModelSpec = SPEC) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The silo's honest statistics after `rounds - 1` pooled sweeps on it alone, and the H they answer."""
    family = statistics_family(spec)
    arrays = (initial_global_arrays(spec, n_items=silo.n_items, seed=0) if rounds == 1 else
              solve_curve(spec, [silo], n_items=silo.n_items, seed=0, rounds=[rounds - 1])[rounds - 1])
    return family.local_statistics(silo, arrays, spec), arrays["item.weight"]


@pytest.mark.parametrize("beta", [3.0, 30.0, 300.0])
def test_a_right_hand_side_pointing_where_no_factors_are_is_refused(silos: dict[str, SiloData], beta: float) -> None:
    stats, h = honest(silos["apac"], rounds=2)
    assert statistics_family(SPEC).check(stats, SPEC) is None
    why = statistics_family(SPEC).check(steer(stats, h, beta), SPEC) or ""
    assert "points where its users' factors do not" in why or "users' factors can be" in why, why


def test_factors_beyond_what_the_hyperparameters_allow_are_refused(silos: dict[str, SiloData]) -> None:
    # Prepare: invented users whose statistics are consistent (matrix Cauchy–Schwarz holds) but whose factors
    # are longer than any user of this model can have, whatever the item factors: λ c_u^ν ‖w_u‖² ≤ |I_u|
    stats = {k: np.zeros_like(v) for k, v in honest(silos["apac"])[0].items()}  # a silo of invented users only
    bound = max_user_norm2(silos["apac"].n_items, **KW)
    direction = np.ones(SPEC.dim) / np.sqrt(SPEC.dim)
    check = statistics_family(SPEC).check

    # Execute / Assert: just inside the bound passes, beyond it does not
    assert check(invented_users(stats, direction * np.sqrt(bound) * 0.99, 3), SPEC) is None
    assert "users' factors can be" in (check(invented_users(stats, direction * np.sqrt(bound) * 1.1, 3), SPEC) or "")


def test_the_bound_is_the_largest_norm_over_history_lengths() -> None:
    # ν ≤ 1: the longest history; ν > 1: an interior maximum at k = α₀n / (ν − 1)
    assert max_user_norm2(100, alpha0=0.1, lam=0.01, nu=1.0) == pytest.approx(100 / (0.01 * 110))
    assert max_user_norm2(100, alpha0=0.1, lam=0.01, nu=0.0) == pytest.approx(100 / 0.01)
    assert max_user_norm2(100, alpha0=1.0, lam=1.0, nu=2.0) == pytest.approx(100 / 200**2)


@pytest.mark.parametrize("kwargs", [KW, {"alpha0": 0.01, "lam": 1e-4, "nu": 0.0},
                                    {"alpha0": 2.0, "lam": 1.0, "nu": 2.0}, {"alpha0": 0.1, "lam": 0.01, "nu": 0.5}])
@pytest.mark.parametrize("rounds", [1, 4])
def test_honest_statistics_pass_the_screen(silos: dict[str, SiloData], kwargs: dict, rounds: int) -> None:
    spec = ModelSpec(name="ials", dim=12, kwargs=kwargs)
    for region in sorted(silos):
        stats, _ = honest(silos[region], rounds, spec)
        assert statistics_family(spec).check(stats, spec) is None, (region, kwargs, rounds)


def steering_mod(msg: Message, ctx: Context, call_next) -> Message:  # type: ignore[no-untyped-def]
    """apac's statistics with one invented user steering TARGET, every round."""
    reply = call_next(msg, ctx)
    meta = reply.content.config_records.get("meta")
    if msg.metadata.message_type != "train" or meta is None or meta["region"] != "apac":
        return reply
    h = msg.content.array_records["arrays"]["item.weight"].numpy()
    stats = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
    reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in steer(stats, h, 30.0).items()})
    return reply


def test_a_co_silo_steering_with_one_invented_user_is_left_out(tmp_path: Path) -> None:
    # Prepare
    world = prepare_world(generate_world(WORLD), SplitConfig(), tmp_path / "world")
    s = RunSettings(data_dir=str(world.data_dir), output_dir=str(tmp_path / "out"), num_rounds=2, min_nodes=3,
                    model="ials", dim=6, model_kwargs=json.dumps(KW))

    # Execute
    run_in_process(s, client_mods=[steering_mod])

    # Assert: apac is rejected by the screen every round; the model is eu and na's
    log = json.loads((tmp_path / "out" / "federated_history.json").read_text())["round_log"]
    assert [e["participants"] for e in log] == [["eu", "na"], ["eu", "na"]]
    assert all("users' factors" in e["rejected"]["apac"] for e in log), log
    family, n_items = statistics_family(SPEC), world.n_items
    arrays = initial_global_arrays(SPEC, n_items=n_items, seed=s.seed)
    for _ in range(2):
        arrays = family.solve(sum_statistics(family.local_statistics(world.silos[r], arrays, SPEC)
                                             for r in ("eu", "na")), arrays, SPEC, n_items)
    got, _, _ = load_global_model(tmp_path / "out" / "global_model.safetensors")
    np.testing.assert_allclose(got["item.weight"], arrays["item.weight"], atol=1e-6)
