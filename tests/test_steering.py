"""Issue 16's harness: hostile silos that steer the global model, and the exposure measure that shows it.

The mods of `fedrec.flower.hostile_mods` run inside the real ClientApps on the in-process grid (no Ray):
- the targeted boost sends exactly the requested multiple of the silo's honest update norm and changes only the
  target's global bias (MF and two-tower), for one silo or several colluding; models without an item bias are
  refused;
- `fedrec.exposure.item_exposure` agrees with a brute-force top 20 (train and valid items excluded);
- end to end, a 5x boost from the smallest silo passes the screen and puts an obscure item in the top 20 of most
  of the other regions' test users (none in the clean run), and `run_exposure` re-scores each region exactly as
  its silo did;
- the screen lets a sign flip and noise at 2x the honest norm through and rejects noise at 50x (a direction rule was
  tried: honest MF updates of different silos are nearly orthogonal, cosine 0.03-0.08, so a flipped one is not
  told apart by its direction).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakegrid import run_in_process
from flwr.app import Context, Message

from fedrec.config import experiment_from_dict
from fedrec.data.split import SiloData, SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.experiment import run_experiment
from fedrec.exposure import ITEM_BIAS, item_at_bias_rank, item_bias_rank, item_exposure
from fedrec.flower.egress_recorder import Mod
from fedrec.flower.hostile_mods import (
    boost_update,
    check_boostable,
    flip_update,
    noise_update,
    norm_of,
    read_norm_log,
    scaled_noise,
    screen_limit_multiple,
    sign_flip,
    targeted_boost,
    update_norm_log,
)
from fedrec.messages import read_arrays, read_int, read_region
from fedrec.model_io import load_global_model
from fedrec.models import ModelSpec, build_model
from fedrec.run_exposure import exposure_from_run
from fedrec.settings import RunSettings
from fedrec.world import prepare_world

WORLD = SyntheticWorldConfig(n_users=300, n_items=80, region_only_items=4, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
Captured = dict[tuple[str, int], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def capture(store: Captured) -> Mod:
    """Keep (sent global model, reply's parameters) of every training reply as it passes this point."""
    def mod(msg: Message, ctx: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(msg, ctx)
        if msg.metadata.message_type == "train" and reply.has_content() and "arrays" in reply.content.array_records:
            key = (read_region(reply.content), read_int(reply.content, "meta", "server-round"))
            store[key] = (read_arrays(msg.content), read_arrays(reply.content))
        return reply
    return mod


def federate(world_dir: Path, out: Path, mods: list[Mod], *, model: str = "mf", rounds: int = 2) -> dict[str, Any]:
    s = RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=rounds, min_nodes=3, dim=6,
                    batch_size=64, n_negatives=16, model=model)
    run_in_process(s, client_mods=mods)
    return dict(json.loads((out / "federated_history.json").read_text()))


def update(pair: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    sent, reply = pair
    return {k: reply[k].astype(np.float64) - sent[k] for k in sent}


# --- the mods ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["mf", "twotower"])
def test_colluding_boosts_send_exactly_five_times_the_honest_norm_and_change_only_the_targets_bias(
        world_dir: Path, tmp_path: Path, model: str) -> None:
    sent_out: Captured = {}
    honest: Captured = {}
    item = 17
    federate(world_dir, tmp_path, [capture(sent_out), targeted_boost(["eu", "na"], item, 5.0), capture(honest)],
             model=model)

    assert {k for k in sent_out} == {k for k in honest} == {(r, n) for r in ("apac", "eu", "na") for n in (1, 2)}
    for (region, rnd), pair in sent_out.items():
        out, inner = pair[1], honest[region, rnd][1]
        changed = {k for k in out if not np.array_equal(out[k], inner[k])}
        if region == "apac":
            assert changed == set(), f"the honest silo's reply was changed: {changed}"
            continue
        assert changed == {ITEM_BIAS}
        rows = np.flatnonzero(out[ITEM_BIAS][:, 0] != inner[ITEM_BIAS][:, 0])
        assert list(rows) == [item] and out[ITEM_BIAS][item, 0] > inner[ITEM_BIAS][item, 0]
        ratio = norm_of(update(pair)) / norm_of(update(honest[region, rnd]))
        assert ratio == pytest.approx(5.0, rel=1e-5), (region, rnd, ratio)


def test_the_row_share_moves_only_the_targets_bias_and_row_and_the_norm_stays_exact() -> None:
    rng = np.random.default_rng(0)
    sent = {"item_emb.weight": rng.standard_normal((30, 4)).astype(np.float32),
            ITEM_BIAS: rng.standard_normal((30, 1)).astype(np.float32), "global_bias": np.zeros(1, np.float32)}
    reply = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in sent.items()}
    out = boost_update(reply, sent, item=3, multiple=2.0, row_share=0.5)
    diff = {k: np.argwhere(out[k] != reply[k])[:, 0].tolist() for k in out}
    assert diff == {"item_emb.weight": [3] * 4, ITEM_BIAS: [3], "global_bias": []}
    ratio = norm_of({k: out[k].astype(np.float64) - sent[k] for k in sent}) / norm_of(
        {k: reply[k].astype(np.float64) - sent[k] for k in sent})
    assert ratio == pytest.approx(2.0, rel=1e-5)
    for _ in range(20):  # at 1x the step may round to just below 0: never a refusal
        honest_too = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in sent.items()}
        same = boost_update(honest_too, sent, item=3, multiple=1.0)
        assert norm_of({k: same[k].astype(np.float64) - sent[k] for k in sent}) == pytest.approx(
            norm_of({k: honest_too[k].astype(np.float64) - sent[k] for k in sent}), rel=1e-5)
    flipped = flip_update(reply, sent)
    assert all(np.allclose(flipped[k] - sent[k], sent[k] - reply[k], atol=1e-6) for k in sent)
    noisy = noise_update(reply, sent, multiple=3.0, rng=np.random.default_rng(1))
    assert norm_of({k: noisy[k].astype(np.float64) - sent[k] for k in sent}) == pytest.approx(
        3.0 * norm_of({k: reply[k].astype(np.float64) - sent[k] for k in sent}), rel=1e-5)


def test_a_capped_boost_keeps_the_targets_bias_at_the_cap_and_changes_nothing_else() -> None:
    """What an attacker inside SecAgg+ can send: the bias raised to just inside the clipping range, no further."""
    rng = np.random.default_rng(2)
    sent = {"item_emb.weight": rng.standard_normal((30, 4)).astype(np.float32),
            ITEM_BIAS: rng.standard_normal((30, 1)).astype(np.float32), "global_bias": np.zeros(1, np.float32)}
    reply = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in sent.items()}
    out = boost_update(reply, sent, item=3, multiple=1000.0, cap=7.5)
    assert out[ITEM_BIAS][3, 0] == pytest.approx(7.5)
    assert all(np.array_equal(out[k], reply[k]) for k in ("item_emb.weight", "global_bias"))
    assert np.array_equal(np.delete(out[ITEM_BIAS], 3), np.delete(reply[ITEM_BIAS], 3))
    small = boost_update(reply, sent, item=3, multiple=1.0001, cap=7.5)  # under the cap: the multiple decides
    assert small[ITEM_BIAS][3, 0] < 7.5
    rows = boost_update(reply, sent, item=3, multiple=1000.0, row_share=0.5, cap=7.5)
    assert np.max(np.abs(rows["item_emb.weight"][3])) == pytest.approx(7.5)  # the row pushed to the range's edge
    assert rows[ITEM_BIAS][3, 0] == pytest.approx(7.5)
    assert np.array_equal(np.delete(rows["item_emb.weight"], 3, 0), np.delete(reply["item_emb.weight"], 3, 0))
    above = {k: v.copy() for k, v in reply.items()}
    above[ITEM_BIAS][3, 0] = 9.0  # honest training already above the cap: the boost adds nothing, removes nothing
    assert boost_update(above, sent, item=3, multiple=5.0, cap=7.5)[ITEM_BIAS][3, 0] == pytest.approx(9.0)


def test_a_model_without_a_global_item_bias_is_refused() -> None:
    check_boostable(ModelSpec("mf", 4), 20)
    check_boostable(ModelSpec("twotower", 4), 20)
    with pytest.raises(ValueError, match="no global item bias"):
        check_boostable(ModelSpec("ials", 4), 20)
    with pytest.raises(ValueError, match="needs a global item bias"):
        boost_update({"stat.gram": np.ones((2, 2))}, {"stat.gram": np.zeros((2, 2))}, item=0, multiple=2.0)
    with pytest.raises(ValueError, match="multiple >= 1"):
        targeted_boost("eu", 3, 0.5)


def test_the_screen_limit_is_the_least_room_over_rounds_with_the_attackers_own_norm_in_the_median() -> None:
    norms = {1: {"a": 1.0, "b": 1.0, "c": 1.0}, 2: {"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0}}
    assert screen_limit_multiple({1: norms[1]}, "a") == pytest.approx(10.0)  # median: m x 1 itself at most
    assert screen_limit_multiple(norms, "a") == pytest.approx(5.0)  # round 2: 2m <= 10 x median 1
    five = {1: {r: 1.0 for r in "abcde"}}
    assert screen_limit_multiple(five, ["a", "b"], norm_factor=4.0) == pytest.approx(4.0)  # median stays 1
    assert screen_limit_multiple(norms, ["a", "b"]) == math.inf  # two of four set the median themselves
    with pytest.raises(ValueError, match="3 or more"):
        screen_limit_multiple({1: {"a": 1.0, "b": 1.0}}, "a")


# --- the measure -------------------------------------------------------------------------------------------------

def test_exposure_counts_the_test_users_whose_brute_force_top_20_holds_the_item(world_dir: Path) -> None:
    silo = SiloData.load(world_dir / "silo_apac.npz")
    torch.manual_seed(3)
    model = build_model(ModelSpec("mf", 6), n_users=silo.n_users, n_items=silo.n_items)
    with torch.no_grad():
        model.item_bias.weight.normal_(std=0.3)  # spread the items so the top 20 differs across the catalog
        scores = model.score_all(torch.arange(silo.n_users)).numpy()
    for users, items in (silo.train[:2], silo.valid[:2]):
        scores[users, items] = -np.inf
    test_users = np.unique(silo.test[0])
    top20 = np.argsort(-scores[test_users], axis=1, kind="stable")[:, :20]
    expected = {i: int((top20 == i).any(1).sum()) for i in range(silo.n_items)}
    got = {i: item_exposure(model, silo, i).n_exposed for i in range(silo.n_items)}
    assert got == expected
    assert 0 < max(got.values()) <= len(test_users) and min(got.values()) == 0
    seen = int(silo.train[1][0])  # an item in a user's train or valid history is never shown to that user
    with torch.no_grad():
        model.item_bias.weight[seen] = 100.0
    had_it = {int(u) for part in (silo.train, silo.valid) for u, i in zip(part[0], part[1], strict=True) if i == seen}
    assert item_exposure(model, silo, seen).n_exposed == len(set(test_users.tolist()) - had_it) < len(test_users)
    bias = model.item_bias.weight.detach().numpy()
    item = item_at_bias_rank({ITEM_BIAS: bias}, 7)
    assert item_bias_rank({ITEM_BIAS: bias}, item) == 7 == 1 + int((bias > bias[item]).sum())


# --- end to end --------------------------------------------------------------------------------------------------

DATASET = {"name": "synthetic", "n_users": 600, "n_items": 120, "region_only_items": 6,
           "region_sizes": [2.0, 1.0, 1.0], "seed": 5}


NO_DEFENCES = {"federation": {"rounds": 4}, "strategy": {"robust": "none"},
               "adoption": {"default": {"adopt": "always", "guard": False}}}


def experiment(out: Path, mods: list[Mod]) -> dict[str, Any]:
    """The end-to-end world without any defence beyond the norm screen (no row clipping, no region-side guard)."""
    cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": "mf", "dim": 8}, "train": {"n_negatives": 32},
                                "bounds": [], "baselines": [], **NO_DEFENCES})
    return run_experiment(cfg, out, log=lambda *_: None, engine=functools.partial(run_in_process, client_mods=mods))


def test_without_defences_a_five_fold_boost_from_the_smallest_silo_passes_the_screen_and_reaches_the_others(
        tmp_path: Path) -> None:
    """The hole of issue 16 without its defences (`test_defences.py` has them on)."""
    clean = experiment(tmp_path / "clean", [])
    facts = clean["dataset"]["regions"]
    attacker = min(facts, key=lambda r: facts[r]["train_interactions"])
    arrays, _, _ = load_global_model(tmp_path / "clean" / "global_model.safetensors")
    target = item_at_bias_rank(arrays, round(0.886 * len(arrays[ITEM_BIAS])))
    boosted = experiment(tmp_path / "boost", [targeted_boost(attacker, target, 5.0)])

    assert all(not e["rejected"] for e in boosted["round_log"]), boosted["round_log"]
    before, after = exposure_from_run(tmp_path / "clean", target), exposure_from_run(tmp_path / "boost", target)
    for region in facts:  # the reader re-scores each region exactly as its silo did at the last round
        assert before[region].ndcg == pytest.approx(clean["final"]["federated"]["per_region"][region]["ndcg@20"],
                                                    abs=1e-12)
        assert after[region].ndcg == pytest.approx(boosted["final"]["federated"]["per_region"][region]["ndcg@20"],
                                                   abs=1e-12)
    honest = [r for r in facts if r != attacker]
    assert max(before[r].exposure.fraction for r in honest) <= 0.05
    assert min(after[r].exposure.fraction for r in honest) >= 0.5, {r: after[r].exposure for r in honest}
    boosted_arrays, _, _ = load_global_model(tmp_path / "boost" / "global_model.safetensors")
    assert item_bias_rank(boosted_arrays, target) <= 3 < item_bias_rank(arrays, target)


@pytest.mark.parametrize(("mod", "multiple", "rejected"), [
    (lambda: sign_flip("eu"), 1.0, False),
    (lambda: scaled_noise("eu", 2.0), 2.0, False),
    (lambda: scaled_noise("eu", 50.0), 50.0, True),
])
def test_the_screen_passes_a_sign_flip_and_mild_noise_and_rejects_loud_noise(
        world_dir: Path, tmp_path: Path, mod: Callable[[], Mod], multiple: float, rejected: bool) -> None:
    history = federate(world_dir, tmp_path, [update_norm_log(tmp_path / "sent.jsonl"), mod(),
                                             update_norm_log(tmp_path / "honest.jsonl")], rounds=3)
    sent, honest = read_norm_log(tmp_path / "sent.jsonl"), read_norm_log(tmp_path / "honest.jsonl")
    assert [e["round"] for e in history["round_log"]] == [1, 2, 3]
    for entry in history["round_log"]:
        rnd = entry["round"]
        assert set(entry["rejected"]) == ({"eu"} if rejected else set()), entry["rejected"]
        assert sent[rnd]["apac"] == honest[rnd]["apac"] and sent[rnd]["na"] == honest[rnd]["na"]
        assert sent[rnd]["eu"] == pytest.approx(multiple * honest[rnd]["eu"], rel=1e-5)


def test_no_fedrec_module_can_switch_a_hostile_mod_on() -> None:
    """Research tooling only: nothing a deployment or a run config reaches imports the hostile mods."""
    from tests.test_layering import ROOT, imports_of

    users = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if p.name != "hostile_mods.py"
             and any("hostile_mods" in module for _, module in imports_of(p))]
    assert users == []
