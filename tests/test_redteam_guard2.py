"""Second red team of the region-side guard (bbda1ac: bound k x the median row's move, flagged rows served as the
region's own training moved them): failing-first tests.

Each test states what the guard should guarantee and records what was measured against bbda1ac; all pass since the
guard takes each table's common move out, caps a flagged row's own move at the bound, and a non-private silo trains
once per round, in order (`fedrec.silo.handlers.train_message`). World:
`tests/redteam_kit.DATASET` (600 users, 120 items, regions eu 2.0 / na 1.0 / apac 1.0), MF dim 8, 4 rounds, in
process (no Ray). Co-silo attacker: `na`. Targets: per honest region, the item its own data supports that its
clean served model shows least (`_targets`, as in `test_redteam_guard.py`). Exposure: `exposure_from_run(...,
served=True)` on the honest region's test users.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redteam_kit import common_mode_boost, coordinator, experiment, served_exposure_all, set_arrays, supported

from fedrec.exposure import ITEM_BIAS
from fedrec.messages import read_arrays, read_int
from fedrec.run_exposure import exposure_from_run
from fedrec.silo.guard import guard_version

ATTACKER, HONEST = "na", ("eu", "apac")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("clean") / "run"
    res = experiment(out, [])
    return out, res, served_exposure_all(out)


def _targets(clean: tuple[Path, dict[str, Any], dict[str, np.ndarray]]) -> dict[str, int]:
    out, _, exp = clean
    picks: dict[str, int] = {}
    for r in HONEST:
        ok = supported(out, r)
        ok[list(picks.values())] = False
        picks[r] = int(np.flatnonzero(ok)[np.argmin(exp[r][ok])])
    return picks


# --- unit ---------------------------------------------------------------------------------------------------------

def test_guard_is_not_blinded_by_a_rank_invariant_shift_of_every_row() -> None:
    """FAILS NOW. Adding the same constant to every item's bias changes no ranking (MF scores b_i + ...), but it
    sets every row's jump, hence the median: a target raised by 8x the constant on top is at 0.9 of the bound and
    not flagged. The guard should measure a row's move against the others after removing a common shift (e.g. the
    jump's deviation from the table's median move, per table, or the move in rank-relevant terms)."""
    rng = np.random.default_rng(0)
    ref = {ITEM_BIAS: rng.standard_normal((120, 1)).astype(np.float32)}
    cand = {ITEM_BIAS: ref[ITEM_BIAS] + 1.0 + 0.01 * rng.standard_normal((120, 1)).astype(np.float32)}
    cand[ITEM_BIAS][7] += 8.0
    assert guard_version(ref, cand, n_items=120).flagged[7]


# --- end to end ---------------------------------------------------------------------------------------------------

def test_a_co_silo_cannot_buy_its_own_bound_with_a_rank_invariant_shift(tmp_path: Path, clean: Any) -> None:
    """FAILS NOW. `na` adds a constant c to every item's bias and 9c to each of two targets' (supported in eu / apac),
    the reply's norm 1.1x its honest norm (the screen passes it: no rejection). The guard's median is now ~c/3 and
    each target's jump ~3c: max_ratio 0.6-0.8, nothing flagged in any round. Measured: item 18 reaches 76.7% of
    eu's test users (0.3% clean), item 4 76.0% of apac's (0.0% clean); eu NDCG@20 0.3834 -> 0.3545, apac 0.3285 ->
    0.3000 (at 2x the honest norm: the same exposures, eu 0.3403, apac 0.2977)."""
    targets = _targets(clean)
    res = experiment(tmp_path, [common_mode_boost(ATTACKER, list(targets.values()), 1.1)])
    assert all(not e["rejected"] for e in res["round_log"])
    for region, item in targets.items():
        assert clean[2][region][item] <= 0.01
        served = exposure_from_run(tmp_path, item, regions=[region], served=True)[region]
        assert served.exposure.fraction <= 0.05, (region, item, served.exposure)


def test_a_hostile_coordinator_cannot_buy_its_own_bound_with_a_rank_invariant_shift(tmp_path: Path,
                                                                                    clean: Any) -> None:
    """FAILS NOW. Hostile coordinator, one message: round 4's evaluation carries the honest global version with
    every item bias +1 and the two targets' +9 (ratio 0.9 of the bound). Under `adopt: always` (the default)
    nothing is flagged. Measured: 76.7% of eu's, 76.0% of apac's test users (0.3% / 0.0% clean); eu NDCG@20 0.3834
    -> 0.3399, apac 0.3285 -> 0.2970. (`adopt: if_better` rejects this version on its validation users.)"""
    targets = _targets(clean)
    items = list(targets.values())

    def rewrite(msg: Any, _ctx: Any) -> None:
        if msg.metadata.message_type == "evaluate" and read_int(msg.content, "config", "server-round") == 4:
            arrays = read_arrays(msg.content)
            bias = arrays[ITEM_BIAS].astype(np.float64) + 1.0
            bias[items] += 8.0
            arrays[ITEM_BIAS] = bias.astype(np.float32)
            set_arrays(msg, arrays)

    experiment(tmp_path, [coordinator(rewrite)])
    for region, item in targets.items():
        served = exposure_from_run(tmp_path, item, regions=[region], served=True)[region]
        assert served.exposure.fraction <= 0.05, (region, item, served.exposure)


@pytest.mark.parametrize("adopt", ["if_better", "always"])
def test_a_hostile_coordinator_cannot_steer_a_feed_through_extra_training_messages(tmp_path: Path, clean: Any,
                                                                                   adopt: str) -> None:
    """FAILS NOW. Hostile coordinator: before round 4's training message it sends each silo 30 more training messages
    under fresh round numbers (100..129; the silo answers any round number once), each the round's global version
    with the two targets' biases lowered by 30. Each region's own data supports its target, so its training raises
    the target's row from there: the silo's *local* private item bias (never seen by the guard) climbs to +3.2 for
    item 18 in eu (clean -0.03) and +1.5 for item 4 in apac (clean -0.08), and under `adopt: always` the guard's
    own-move substitution serves the flagged global rows as reference + the 30 crafted moves (served global bias
    3.29 in eu). Round 4's evaluation message is honest. Measured served exposure: `if_better` 76.7% of eu's and
    76.0% of apac's test users (0.3% / 0.0% clean; the guard flagged nothing, max_ratio 0.535); `always` 58.7% /
    73.3% (flagged 2). NDCG@20 rises (eu 0.3834 -> 0.37-0.38, apac 0.3285 -> 0.41: the extra epochs train the
    users), so nothing looks wrong. A silo should train at most once per round of a run, in order, and the guard
    should bound what its own moves and the local item state may add to a row."""
    targets = _targets(clean)
    items = list(targets.values())

    def mod(msg: Any, ctx: Any, call_next: Any) -> Any:
        if msg.metadata.message_type == "train" and read_int(msg.content, "config", "server-round") == 4:
            for j in range(30):
                extra = copy.deepcopy(msg)
                arrays = read_arrays(extra.content)
                arrays[ITEM_BIAS] = arrays[ITEM_BIAS].copy()
                arrays[ITEM_BIAS][items] -= 30.0
                set_arrays(extra, arrays)
                extra.content.config_records["config"]["server-round"] = 100 + j
                call_next(extra, ctx)
        return call_next(msg, ctx)

    experiment(tmp_path, [mod], adoption={"default": {"adopt": adopt}})
    for region, item in targets.items():
        served = exposure_from_run(tmp_path, item, regions=[region], served=True)[region]
        assert served.exposure.fraction <= 0.05, (region, item, served.exposure)
