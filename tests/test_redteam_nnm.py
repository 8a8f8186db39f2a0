"""Third red team (2026-11-30): `strategy.robust=nnm`, the shared runtime, the experiment order, policy keys.

Written failing-first; each states the property that should hold and what was measured against main at a09efb4
(plus main's uncommitted conf/config.yaml order), and now passes: nnm mixes per item row, a trimming rule that
would cut no silo is refused at preflight, unknown node-config keys and policy keys nothing reads are refused.
Unit tests build replies with `fedrec.silo.egress.train_reply` and aggregate them as the round loop does for
`robust=nnm`: `mix_nearest` (f = int(trim_beta x n)), then Flower's FedTrimmedAvg (`build_strategy`). End-to-end
tests use the in-process engine (`tests/fakegrid.run_in_process`, no Ray) through `tests/redteam_kit.experiment`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, Metadata

from fedrec.coordinator.robust import mix_nearest
from fedrec.coordinator.strategies import build_strategy
from fedrec.errors import ConfigError
from fedrec.exposure import ITEM_BIAS
from fedrec.settings import RunSettings
from fedrec.silo.egress import train_reply

EMB = "item_emb.weight"
N_ITEMS, DIM, TARGET = 120, 8, 7

Arrays = dict[str, np.ndarray]


def _reply(region: str, arrays: Arrays) -> Message:
    content = train_reply(arrays, region=region, server_round=1, weight=1.0)
    metadata = Metadata(run_id=1, message_id=f"m-{region}", src_node_id=2, dst_node_id=1, reply_to_message_id="x",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    return Message(content=content, metadata=metadata)  # type: ignore[call-overload]


def _sent(rng: np.random.Generator) -> Arrays:
    return {EMB: rng.standard_normal((N_ITEMS, DIM)).astype(np.float32),
            ITEM_BIAS: rng.standard_normal((N_ITEMS, 1)).astype(np.float32), "global_bias": np.zeros(1, np.float32)}


def _honest(rng: np.random.Generator, sent: Arrays, n: int) -> list[Arrays]:
    """Heterogeneous honest updates (regions with different data: nearly orthogonal, the case nnm is for)."""
    return [{k: rng.standard_normal(v.shape) for k, v in sent.items()} for _ in range(n)]


def _norm(u: Arrays) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in u.values())))


def _aggregate(sent: Arrays, updates: list[Arrays], *, robust: str, trim_beta: float = 0.2
               ) -> tuple[Arrays, dict[str, int]]:
    """The aggregate's move from `sent` and `excluded_by`, as `round_loop._Run.aggregate` computes it."""
    msgs = [_reply(f"s{i}", {k: (sent[k] + u[k]).astype(np.float32) for k in sent}) for i, u in enumerate(updates)]
    excluded: dict[str, int] = {}
    if robust == "nnm":
        excluded = mix_nearest(sent, msgs, f=int(trim_beta * len(msgs)), n_items=N_ITEMS)
    strategy = build_strategy(RunSettings(strategy="fedavg", server_lr=1.0, robust=robust, trim_beta=trim_beta,
                                          min_nodes=len(msgs)))
    out, _ = strategy.aggregate_train(1, msgs)
    assert out is not None
    return {k: out[k].numpy().astype(np.float64) - sent[k].astype(np.float64) for k in sent}, excluded


# --- 1. nnm and a co-silo that sits among the honest updates ------------------------------------------------------

def test_nnm_keeps_a_one_item_push_hidden_among_honest_updates_inside_the_honest_range() -> None:
    """A co-silo sends the honest updates' centre plus a push on one item's bias of 1x an honest update's
    norm ("a little is enough" / mimic). It is nearer every honest silo than their farthest honest peer, so it is in
    every neighbourhood: every mixed update carries push/(n-f), and the trimmed mean cannot cut what every input
    carries. Measured (6 honest + 1, trim_beta 0.2, f=1): the target's bias moves 5.42 under nnm, 4.62 under plain
    FedAvg (nnm *amplifies* the push, by n/(n-f) = 7/6) and 0.017 under trimmed_mean alone, while the honest silos'
    own moves of that bias lie in [-0.64, 0.33]; `excluded_by` of the pusher: 0.

    A coordinate-robust rule should keep each coordinate's move within the honest silos' range when at most f
    silos are hostile (the trimmed mean alone does). Suggested fix: mix per item row (and per other array), not
    whole updates: the pushed row is then far from every honest silo's row and left out of every neighbourhood;
    or trim the raw rows before mixing. A prototype of row-wise mixing (each item row across every row table, the
    other arrays as one block) passes this test and the next (target move -0.09), and end to end (see
    `test_nnm_keeps_a_push_that_carries_no_honest_update_off_the_global_model`) keeps the target at 0% of honest
    users on the global model, still leaves a 5x boost out and a sign flip harmless, at 0.2786 clean honest
    NDCG@20 (whole-update nnm 0.2834, FedAvg 0.2753).
    """
    rng = np.random.default_rng(0)
    sent = _sent(rng)
    honest = _honest(rng, sent, 6)
    centre = {k: np.mean([h[k] for h in honest], axis=0) for k in sent}
    push = {k: v.copy() for k, v in centre.items()}
    push[ITEM_BIAS][TARGET] += 1.0 * np.mean([_norm(h) for h in honest])
    moves = {rule: _aggregate(sent, [*honest, push], robust=rule)[0][ITEM_BIAS][TARGET, 0]
             for rule in ("none", "trimmed_mean", "nnm")}
    honest_moves = [h[ITEM_BIAS][TARGET, 0] for h in honest]
    assert moves["trimmed_mean"] <= max(honest_moves)  # the trimmed mean alone keeps it in range
    assert moves["nnm"] <= moves["none"], moves  # nnm should never give a push more than FedAvg does ...
    assert moves["nnm"] <= max(honest_moves), (moves, honest_moves)  # ... nor a move no honest silo made


def test_nnm_on_three_silos_gives_a_mimic_half_again_its_fedavg_influence() -> None:
    """The same mimic on the smallest world nnm can act on (3 silos, trim_beta 0.34, f=1): the target
    moves 16.7 under nnm against 11.1 under FedAvg (n/(n-f) = 1.5x) and 0.31 under the trimmed mean alone (the
    honest moves: -0.29 and 0.31). End to end on the 3-silo world (`redteam_kit.DATASET`, 4 rounds, na pushing with
    `push_only` 1x): the target reaches 100% of eu's and apac's test users on the global model under nnm
    (trim_beta 0.34), 0% under trimmed_mean 0.34; and `excluded_by` names the honest eu (2 of 2) every round."""
    rng = np.random.default_rng(0)
    sent = _sent(rng)
    honest = _honest(rng, sent, 2)
    centre = {k: np.mean([h[k] for h in honest], axis=0) for k in sent}
    push = {k: v.copy() for k, v in centre.items()}
    push[ITEM_BIAS][TARGET] += 1.0 * np.mean([_norm(h) for h in honest])
    nnm = _aggregate(sent, [*honest, push], robust="nnm", trim_beta=0.34)[0][ITEM_BIAS][TARGET, 0]
    fedavg = _aggregate(sent, [*honest, push], robust="none", trim_beta=0.34)[0][ITEM_BIAS][TARGET, 0]
    assert nnm <= fedavg, (nnm, fedavg)



# --- end to end: 7 regions, nnm acting (trim_beta 0.2: f = 1) -------------------------------------------------------

WORLD7 = {"name": "synthetic", "n_users": 1400, "n_items": 120, "region_only_items": 6,
          "region_sizes": [3.0, 2.0, 2.0, 1.5, 1.0, 1.0, 1.0], "seed": 5}
"""eu, na, apac, latam, mena, africa, oceania; 162 items (120 shared + 6 region-only each)."""
WORLD7_TARGET = 129
"""The item at 88.6% of the catalog by global item bias in the clean FedAvg run (as `test_defences.py` picks its
target); no honest region's training data has it (checked in the test)."""


def _honest_exposure(out: Path, item: int, honest: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    from fedrec.run_exposure import exposure_from_run

    on_global = exposure_from_run(out, item, regions=honest)
    served = exposure_from_run(out, item, regions=honest, served=True)
    return ({r: on_global[r].exposure.fraction for r in honest}, {r: served[r].exposure.fraction for r in honest})


@pytest.mark.parametrize(("attackers", "trim_beta"), [(("na",), 0.2), (("na", "apac"), 0.3)])
def test_nnm_keeps_a_push_that_carries_no_honest_update_off_the_global_model(
        tmp_path: Path, attackers: tuple[str, ...], trim_beta: float) -> None:
    """README: under nnm "the target reaches 0.1% of honest users *on the global model* too". That holds
    for a boost added to the silo's honest update (measured here too: `targeted_boost` 5x is left out of all 6
    neighbourhoods, 0% on the global model). A silo that sends only the push (`redteam_kit.push_only`: zero plus
    1x its honest norm on one item's bias, no knowledge of the others needed) sits among the nearly orthogonal
    honest updates and is in every neighbourhood. Measured, 5 rounds, on the 6 honest regions' test users
    (global model / served):
      one attacker, nnm f=1:            100% / 0%   (trimmed_mean alone, same beta: 0% / 0%; FedAvg: 100% / 0%)
      na + apac colluding, nnm f=2:     100% / 0%   (trimmed_mean alone f=2: 0% / 0%)
    (at 0.3x the honest norm the target is already rank 1 of 162 by global bias under nnm, 0.294; FedAvg 0.292.)
    Honest NDCG@20 on the global model drops 12% (0.2834 -> 0.2495, nnm clean -> attacked). The guard keeps the
    served feeds clean; the global model, which is what nnm is for, is not. The round log names the honest eu
    (`excluded_by` 6 of 6 in every round, clean or attacked: the largest silo) and the attacker 0 or 1.
    Fix: see `test_nnm_keeps_a_one_item_push_hidden_among_honest_updates_inside_the_honest_range` (mix per item
    row, or trim raw rows first)."""
    from redteam_kit import experiment, push_only, support

    honest = [r for r in ("eu", "na", "apac", "latam", "mena", "africa", "oceania") if r not in attackers]
    out = tmp_path / "run"
    experiment(out, [push_only(list(attackers), WORLD7_TARGET, 1.0)], rounds=5, dataset=WORLD7,
                     strategy={"robust": "nnm", "trim_beta": trim_beta, "server_lr": 1.0})
    assert all(support(out, r)[WORLD7_TARGET] == 0 for r in honest)  # nobody honest asked for it
    # (the screen passes the push in every round, rejected == {})
    on_global, served = _honest_exposure(out, WORLD7_TARGET, honest)
    assert max(served.values()) <= 0.01, served  # holds: the guard
    assert max(on_global.values()) <= 0.01, on_global  # was 1.0 in every honest region before row-wise mixing


@pytest.mark.parametrize("robust", ["nnm", "trimmed_mean"])
def test_a_robust_rule_that_can_cut_nothing_is_refused_not_recorded_as_applied(tmp_path: Path, robust: str) -> None:
    """With the default `strategy.trim_beta` 0.1, f = int(0.1 x n) is 0 for any federation of fewer than
    10 silos (the 3-silo test world, the default 5-region world): `mix_nearest` mixes nothing and FedTrimmedAvg cuts
    nothing, so `robust=nnm` / `trimmed_mean` is an unweighted FedAvg. The run says nothing, `excluded_by` is all 0,
    and every version's manifest records the defence as applied (`fedavg+nnm:0.1`). Measured on the 3-silo world
    with a 5x boost by na, 4 rounds: target on 100% of eu's and apac's test users on the global model (FedAvg:
    100%; nnm with trim_beta 0.34: 0%). Fix: refuse before round 1 (ConfigError naming trim_beta and the smallest
    value that cuts one silo, > 1/n), as the codebase does for other settings that would do nothing."""
    from redteam_kit import experiment

    from fedrec.errors import FedrecError

    with pytest.raises(FedrecError, match="trim_beta"):
        experiment(tmp_path / "run", [], rounds=1, strategy={"robust": robust, "server_lr": 1.0})


# --- 4. policy keys accepted that do nothing --------------------------------------------------------------------

def test_a_node_config_key_no_silo_reads_is_refused_not_ignored(tmp_path: Path) -> None:
    """A jurisdiction's node config with `epsilon_budget=1.0` (underscore: `epsilon-budget` is the key) is
    accepted and ignored: the silo then has no privacy policy of its own, preflight says OK, and under a run with
    `privacy=none` it sends un-noised updates. Every unknown key is dropped the same way (`guard_k`,
    `require_secure_aggregation`, `adopt_margin`, ...). `fedrec deploy check-node` only warns that no
    epsilon-budget is set, without naming the key it ignored. Suggested fix: `SiloIdentity.from_node_config`
    refuses a key it does not know (Flower's simulation keys `partition-id` / `num-partitions` aside), naming it and
    the nearest known key."""
    from fedrec.silo.policy import SiloIdentity

    (tmp_path / "eu.npz").write_bytes(b"")
    node = {"region": "eu", "data-path": str(tmp_path / "eu.npz"), "state-dir": str(tmp_path / "state")}
    ignored = {}
    for typo, value in (("epsilon_budget", 1.0), ("require_secure_aggregation", True), ("guard_k", 2.0)):
        try:
            ident = SiloIdentity.from_node_config({**node, typo: value}, RunSettings())
        except ConfigError as exc:
            assert typo in str(exc)
            continue
        # accepted: what the jurisdiction meant is simply not there
        ignored[typo] = (ident.requires_dp, ident.require_secure_aggregation, ident.policy.guard_k)
    assert not ignored, ignored  # were all three, as (False, False, 10.0)


def test_a_pinned_region_that_says_contribute_false_sends_nothing(tmp_path: Path) -> None:
    """`{pin: VERSION, contribute: false}` is accepted (`AdoptionPolicy.from_config`, and as node config
    `pin=... contribute=false`), but only a fork declines to train (`silo.handlers.train_content`): the pinned region
    trains and sends its update every round, though its policy says it contributes nothing. (86ce1eb refused
    `adopt: always|if_better` with `contribute: false` for the same reason; pin was left out.) Measured: `na` in the
    participants of rounds 1 and 2 of 2, its egress ledger holding 2 training releases.
    Fix: decline every training round when `contribute` is false whatever the policy (pin included), or refuse
    the combination at config time as for adopt."""
    from redteam_kit import experiment

    try:
        res = experiment(tmp_path / "run", [], rounds=2, adoption={"na": {"pin": "0" * 16, "contribute": False}})
    except ConfigError as exc:  # refused, naming the key: also a fix
        assert "contribute" in str(exc)
        return
    assert all("na" not in entry["participants"] for entry in res["round_log"]), [
        (e["round"], e["participants"], e["declined"]) for e in res["round_log"]]


@pytest.mark.parametrize("cfg", [
    {"adopt": "always", "margin": 0.1},          # always adopts: no score is compared
    {"adopt": "always", "metric": "hr@10"},
    {"pin": "abc", "metric": "hr@10"},          # parsed, then dropped (the policy keeps ndcg@20)
    {"fork": 3, "margin": 0.5},
    {"adopt": "always", "guard": False, "guard_k": 3.0},  # the guard is off: its bound is never used
])
def test_a_policy_key_its_policy_never_reads_is_refused(cfg: dict[str, Any]) -> None:
    """(Low.) Each of these is accepted and does nothing, the way `adapt_rounds` outside `adopt: adapt`
    or `guard` on a pin would be, which `AdoptionPolicy.from_config` already refuses naming the key. A region that
    writes `{adopt: always, margin: 0.1}` believes it only takes clearly better versions. Fix: refuse `metric` /
    `margin` outside if_better / adapt, and guard_k / guard_max_exposure / guard_support with guard: false."""
    from fedrec.adoption_policy import AdoptionPolicy

    with pytest.raises(ConfigError):
        AdoptionPolicy.from_config("eu", cfg)


# --- 2. the shared runtime: what a kept actor carries from one run to the next ------------------------------------

def test_a_second_run_in_the_same_process_and_output_dir_uses_its_own_world(tmp_path: Path) -> None:
    """HOLDS (regression guard for `fedrec.flower.runtime.shared_runtime`). A kept actor is one process answering
    run after run; the ClientApp side's module state is `client_app._cached_silo_data` (keyed by the data file's
    resolved path, mtime and size), `silo.round.global_shapes` (pure) and the torch thread count; silo state is on
    disk keyed by run. Run A (world seed 6) then run B (seed 5) into the same output dir, in one process, give
    run B exactly the results it has alone (served and global, every region)."""
    from redteam_kit import DATASET, experiment

    alone = experiment(tmp_path / "alone", [], rounds=2)
    experiment(tmp_path / "same", [], rounds=2, dataset={**DATASET, "seed": 6})
    after = experiment(tmp_path / "same", [], rounds=2)
    for block in ("federated", "served"):
        assert after["final"][block]["per_region"] == alone["final"][block]["per_region"]
