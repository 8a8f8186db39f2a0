"""Red team of issue 16's defences (region-side guard, row clipping, attribution): failing-first tests.

Every test here states what the defence should guarantee; those marked `FAILS NOW` failed against the first guard
(f000164: a bound from the candidate's own jumps, flagged items withheld) and record the violation measured then;
they pass against the guard whose bound is k x the median row's move and which serves a flagged row as the region's
own training moves it. The one still failing is marked xfail with the reason.
Worlds are `tests/test_defences.py`'s (600 users, 138 items, regions eu 2.0 / na 1.0 / apac 1.0, MF dim 8, 4
rounds), in process (no Ray). Attacker: `na` (the smallest silo). Exposure: `exposure_from_run(..., served=True)` on
the honest regions' test users; "supported": above the median of the region's own training counts (the exposure
cap's rule).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakegrid import run_in_process
from redteam_kit import (
    DATASET,
    EMB,
    claim_weight,
    coordinator,
    experiment,
    multi_boost,
    served_exposure_all,
    set_arrays,
    supported,
)

from fedrec.adoption_policy import AdoptionPolicy
from fedrec.config import experiment_from_dict
from fedrec.experiment import run_experiment
from fedrec.exposure import ITEM_BIAS
from fedrec.flower.hostile_mods import hostile_mod, targeted_boost
from fedrec.messages import read_arrays, read_int
from fedrec.run_exposure import exposure_from_run
from fedrec.silo.guard import guard_version
from fedrec.silo.serving import RegionServing

ATTACKER, HONEST = "na", ("eu", "apac")
N_ITEMS, DIM = 200, 4


def _world(rng: np.random.Generator, n: int = N_ITEMS) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A reference and a candidate in which every row moved a little (an honest round)."""
    ref = {EMB: rng.standard_normal((n, DIM)).astype(np.float32),
           ITEM_BIAS: rng.standard_normal((n, 1)).astype(np.float32), "global_bias": np.zeros(1, np.float32)}
    cand = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in ref.items()}
    return ref, cand


# --- unit: the guard's bound ------------------------------------------------------------------------------------

def test_guard_flags_a_row_that_moved_alone() -> None:
    """FAILS NOW. A hostile coordinator sends what the region serves with one item's bias raised by 50: the
    only non-zero jump in the table is its own quantile, so ratio = 1/k = 0.333 and nothing is flagged."""
    ref, _ = _world(np.random.default_rng(0))
    cand = {k: v.copy() for k, v in ref.items()}
    cand[ITEM_BIAS][5] += 50.0
    g = guard_version(ref, cand, n_items=N_ITEMS)
    assert g.flagged[5], g.evidence


def test_guard_flags_two_rows_pushed_alike_in_an_honest_round() -> None:
    """FAILS NOW. Every row moves ~0.01 (honest), two items' biases jump by 5 (500x), in a 138-item catalog (the
    end-to-end world's): np.quantile(jumps, 0.99) interpolates at position 0.99 x 137 = 135.6, i.e. 63% of the way
    to the 2nd-largest jump (a pushed row), so the bound is ~1.9x the push and nothing is flagged. In general
    floor(0.01 (n - 1)) + 2 equally pushed rows set the bound themselves (3 of 200, 11 of 1000)."""
    ref, cand = _world(np.random.default_rng(1), n=138)
    cand[ITEM_BIAS][[5, 6]] += 5.0
    g = guard_version(ref, cand, n_items=138)
    assert g.flagged[5] and g.flagged[6], g.evidence


def test_guard_flags_every_pushed_row_when_a_few_percent_of_rows_are_pushed() -> None:
    """FAILS NOW. The same with 1% + 1 of the catalog pushed (3 of 200): the attacker's own rows set the bound."""
    ref, cand = _world(np.random.default_rng(2))
    cand[ITEM_BIAS][[5, 6, 7]] += 5.0
    assert guard_version(ref, cand, n_items=N_ITEMS).flagged[[5, 6, 7]].all()


def test_guard_never_serves_a_non_finite_row_unflagged() -> None:
    """FAILS NOW (defence in depth only: `check_received` refuses NaN before the guard today, so no message reaches
    this). A NaN row's jump is NaN: `jump > 0` drops it from the quantile and `ratio > 1` is False for it, so the
    guard serves the NaN row unflagged (max_ratio reported as nan); the finite push on item 5 is still flagged."""
    ref, cand = _world(np.random.default_rng(3))
    cand[EMB][9, 0] = np.nan
    cand[ITEM_BIAS][5] += 10.0
    g = guard_version(ref, cand, n_items=N_ITEMS)
    assert g.flagged[5] and g.flagged[9], g.evidence
    assert np.array_equal(g.arrays[EMB][9], ref[EMB][9]) and np.isfinite(g.evidence["max_ratio"])


# --- end to end, default configuration ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("clean") / "run"
    res = experiment(out, [])
    return out, res, served_exposure_all(out)


def _targets(clean: tuple[Path, dict[str, Any], dict[str, np.ndarray]]) -> dict[str, int]:
    """Per honest region, the item its own data supports that its served model shows least (the attacker's pick)."""
    out, _, exp = clean
    picks: dict[str, int] = {}
    for r in HONEST:
        ok = supported(out, r)
        ok[list(picks.values())] = False
        picks[r] = int(np.flatnonzero(ok)[np.argmin(exp[r][ok])])
    return picks


def test_two_targets_pushed_at_once_reach_no_honest_user_by_default(tmp_path: Path, clean: Any) -> None:
    """FAILS NOW. `na` pushes two items' biases by the same amount, 5x its honest update norm (the push of
    `test_defences.py`, split over two targets), each target supported in one honest region. Measured: the guard
    flags nothing in any round; item 18 reaches 76.7% of eu's test users (0.3% clean), item 88 72.0% of apac's
    (0.0% clean); neither is withheld by the exposure cap (both supported). The same at 1.1x the honest norm
    (indistinguishable by norm): 72.7% of eu, 70.7% of apac; at 2x: 76.7% / 72.0% (eu NDCG@20 0.3834 -> 0.3392)."""
    targets = _targets(clean)
    exp_clean = clean[2]
    experiment(tmp_path, [multi_boost(ATTACKER, list(targets.values()), 5.0)])
    for region, item in targets.items():
        assert exp_clean[region][item] <= 0.01
        served = exposure_from_run(tmp_path, item, regions=[region], served=True)[region]
        assert served.exposure.fraction <= 0.01, (region, item, served.exposure)


def test_a_small_push_cannot_censor_an_item_other_regions_like(tmp_path: Path, clean: Any) -> None:
    """The guard as a censorship tool: `na` raises the bias of the item both honest regions show most at 1.2x its
    honest norm. Measured against the first guard (bound from the candidate's own jumps, flagged items withheld):
    withheld in every region for the whole run (item 34: eu 57.3% -> 0.0%, apac 77.3% -> 0.0%). Now the pushed row
    is flagged and served as the region's own training moves it (never withheld: the item is supported), so the
    item is ranked as the region's own data ranks it (its exposure may drop: 65.3% -> 16.0% in eu with an earlier
    bound) and the region loses no NDCG@20."""
    _, res_clean, exp_clean = clean
    liked = int(np.argmax(np.minimum(exp_clean["eu"], exp_clean["apac"])))
    res = experiment(tmp_path, [targeted_boost(ATTACKER, liked, 1.2)])
    served = exposure_from_run(tmp_path, liked, regions=list(HONEST), served=True)
    for r in HONEST:
        held = RegionServing(tmp_path / "silo-state" / r, AdoptionPolicy()).withheld()
        assert held is None or not held[liked], (r, liked)
        assert served[r].exposure.fraction > 0, (r, liked, served[r].exposure)
        assert res["final"]["served"]["per_region"][r]["ndcg@20"] >= 0.99 * (
            res_clean["final"]["served"]["per_region"][r]["ndcg@20"])


def test_a_hostile_coordinator_cannot_slip_lone_rows_past_the_guard(tmp_path: Path, clean: Any) -> None:
    """FAILS NOW. Hostile coordinator: the last evaluation message carries the previous round's arrays (what each
    region serves) with only the two targets' biases +3: every other row has a zero jump, so the moved rows are
    their own quantile (max_ratio 0.333 in every region). Measured: 76.7% of eu, 72.0% of apac test users."""
    targets = _targets(clean)
    last: dict[int, dict[str, np.ndarray]] = {}

    def rewrite(msg: Any, ctx: Any) -> None:
        if msg.metadata.message_type != "evaluate":
            return
        if read_int(msg.content, "config", "server-round") == 4 and ctx.node_id in last:
            crafted = {k: v.copy() for k, v in last[ctx.node_id].items()}
            crafted[ITEM_BIAS][list(targets.values())] += 3.0
            set_arrays(msg, crafted)
        else:
            last[ctx.node_id] = read_arrays(msg.content)

    experiment(tmp_path, [coordinator(rewrite)])
    for region, item in targets.items():
        served = exposure_from_run(tmp_path, item, regions=[region], served=True)[region]
        assert served.exposure.fraction <= 0.01, (region, item, served.exposure)


def test_uniform_weighting_ignores_a_claimed_weight(tmp_path: Path, clean: Any) -> None:
    """FAILS NOW. Under the default `federation.weighting=uniform` the screen checks only that a weight is finite
    and > 0 (exactly 1 is enforced only under DP), and FedAvg weights by it. `na` sends its honest update with
    weight 1000: the global model becomes na's (attribution share 1.0 every round), eu NDCG@20 0.3834 -> 0.3125
    (-18%), apac 0.3285 -> 0.2795 (-15%), na 0.331 -> 0.422; the guard flags nothing."""
    _, res_clean, _ = clean
    res = experiment(tmp_path, [claim_weight(ATTACKER, 1000.0)])
    lied = all(ATTACKER in e["rejected"] for e in res["round_log"])
    shares = [e["robust"]["top_moved"][0]["shares"][ATTACKER] for e in res["round_log"]
              if ATTACKER not in e["rejected"]]
    assert lied or max(shares) < 0.9, shares
    for r in HONEST:
        assert res["final"]["served"]["per_region"][r]["ndcg@20"] >= 0.97 * (
            res_clean["final"]["served"]["per_region"][r]["ndcg@20"])


def test_an_if_better_region_survives_a_run_with_another_model_shape(tmp_path: Path) -> None:
    """FAILS NOW (a coordinator-triggered crash). Run 1: MF dim 8, every region `adopt: if_better`. Run 2 on the same
    silo state: dim 16. Every evaluation message of run 2 raises in `review` (serving.py: `evaluate_splits` on the
    stored dim-8 served arrays, 'item_emb.weight has shape (138, 8), model expects (138, 16)') in every region,
    every round. (Under `adopt: always` it does not crash, but the guard silently skips the embedding table for the
    new run's first version: `guard_version` drops tables whose shapes differ.)"""
    def go(dim: int) -> dict[str, Any]:
        cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": "mf", "dim": dim},
                                    "federation": {"rounds": 2}, "train": {"n_negatives": 32}, "bounds": [],
                                    "baselines": [], "adoption": {"default": {"adopt": "if_better"}}})
        return run_experiment(cfg, tmp_path, log=lambda *_: None,
                              engine=functools.partial(run_in_process, client_mods=[]))

    go(8)
    res = go(16)
    assert all(not e["failures"] for e in res["round_log"]), res["round_log"][0]["failures"][:1]


# --- row clipping (strategy.robust=row_clip, not the default) ----------------------------------------------------

@pytest.mark.xfail(strict=True, reason="open: strategy.robust=row_clip (not the default) clips honest rows of the "
                                        "largest region, more so when a silo sends no update (simulations/README.md)")
def test_a_silo_sending_no_update_does_not_get_honest_rows_clipped(tmp_path: Path) -> None:
    """FAILS (xfail, documented). With 3 silos the per-row reference is the median of three norms; a silo that
    returns the sent model unchanged (norm 0: the screen has no lower bound) makes it the smaller honest norm.
    Measured honest rows clipped over 4 rounds: clean run eu 0+5+9+22 = 36 (already not zero: "honest replies
    bit-identical" does not hold for the largest region), with the zero-update silo eu 2+17+28+53 = 100 (38% of
    eu's 138 rows in round 4)."""
    clean = experiment(tmp_path / "clean", [], strategy={"robust": "row_clip"})
    zero = experiment(tmp_path / "zero", [hostile_mod(ATTACKER, lambda reply, sent, _r, _n: {k: sent[k].copy()
                                                                                          for k in reply})],
                      strategy={"robust": "row_clip"})

    def honest_clipped(res: dict[str, Any]) -> int:
        return sum(e["robust"]["clipped_rows"][r] for e in res["round_log"] for r in HONEST)

    assert honest_clipped(clean) == 0
    assert honest_clipped(zero) <= honest_clipped(clean)
