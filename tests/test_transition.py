"""Leave without a gap (issue 15, item 2), through the public API on the in-process grid.

- the monitor catches a gappy writer (pointer deleted then written, written in two halves, moved before its
  model is stored) and sees none with the silo's own writes;
- every pointer move keeps a readable model: just before it the old pointer resolves, just after it the new one
  (deterministic; without the kept previous model the check fails);
- the whole transition (region R leaves while the others' line is rebuilt without it) has zero empty samples
  for every region; the remaining regions end on the rebuilt line's head, R on its own line;
- a region that joins a later run started from the current head gets that head as its first model.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fakegrid import run_in_process

from fedrec.config import AdoptionPolicy
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.divestment import line_head
from fedrec.divestment.transition import TransitionMonitor, run_transition
from fedrec.settings import RunSettings, silo_state_root
from fedrec.silo import serving as serving_module
from fedrec.silo.adoption import SERVING_FILE, Decision, ServingRecord
from fedrec.silo.departure import LEFT_REASON
from fedrec.silo.egress_ledger import EgressLedger
from fedrec.silo.served_now import served_now
from fedrec.silo.serving import FORK_PREFIX, RegionServing
from fedrec.silo.state_dir import StateDir
from fedrec.versions import ModelRegistry
from fedrec.world import prepare_world

WORLD = SyntheticWorldConfig(n_users=360, n_items=90, region_only_items=5, region_sizes=(2.0, 1.0, 1.0),
                             mean_interactions=12.0, min_interactions=5)
ROUNDS = 4
ARRAYS = {"item_emb.weight": np.zeros((4, 2), np.float32)}


# --- the monitor, on writers made to leave gaps -------------------------------------------------------------


def _decision(before: str | None, after: str) -> Decision:
    return Decision(1, after, before, after, True, "test")


def _good_switch(state_dir: Path, before: str | None, after: str, pause: float) -> None:
    serving = RegionServing(state_dir, AdoptionPolicy())
    serving.store_served(after, ARRAYS)
    time.sleep(pause)  # the silo evaluates, logs ... between storing the model and moving the pointer
    serving.record.record(_decision(before, after))


def _delete_then_write(state_dir: Path, before: str | None, after: str, pause: float) -> None:
    serving = RegionServing(state_dir, AdoptionPolicy())
    (serving.dir / SERVING_FILE).unlink(missing_ok=True)
    time.sleep(pause)
    serving.store_served(after, ARRAYS)
    serving.record.record(_decision(before, after))


def _write_in_halves(state_dir: Path, before: str | None, after: str, pause: float) -> None:
    serving = RegionServing(state_dir, AdoptionPolicy())
    serving.store_served(after, ARRAYS)
    text = json.dumps({"version": after, "since_round": 1})
    with open(serving.dir / SERVING_FILE, "w") as f:  # not atomic: a reader can see the first half
        f.write(text[:10])
        f.flush()
        time.sleep(pause)
        f.write(text[10:])


def _pointer_first(state_dir: Path, before: str | None, after: str, pause: float) -> None:
    serving = RegionServing(state_dir, AdoptionPolicy())
    serving.record.record(_decision(before, after))
    time.sleep(pause)
    serving.store_served(after, ARRAYS)


def _switches(state_dir: Path, switch: Callable[[Path, str | None, str, float], None], n: int = 6) -> dict:
    _good_switch(state_dir, None, "v0", 0.0)
    with TransitionMonitor({"r": state_dir}, interval_s=0.001) as monitor:
        for k in range(1, n + 1):
            switch(state_dir, f"v{k - 1}", f"v{k}", 0.02)
            time.sleep(0.005)
    return monitor.to_dict()["regions"]["r"]


def test_the_silo_s_own_writes_leave_no_gap(tmp_path: Path) -> None:
    seen = _switches(tmp_path, _good_switch)
    assert seen["empty"] == 0 and seen["samples"] > 50
    assert seen["served"] == [f"v{k}" for k in range(7)]


@pytest.mark.parametrize("gappy", [_delete_then_write, _write_in_halves, _pointer_first])
def test_the_monitor_catches_a_gappy_writer(tmp_path: Path, gappy: Callable) -> None:
    seen = _switches(tmp_path, gappy)
    assert seen["empty"] > 0, seen
    assert seen["problems"]


# --- every pointer move, checked when it happens (deterministic) --------------------------------------------


@pytest.fixture
def checked_moves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Wrap the silo's pointer move: what the pointer names must load just before it moves and just after."""
    original = ServingRecord.record
    broken: list[str] = []
    lock = threading.Lock()

    def record(self: ServingRecord, decision: Decision) -> None:
        state_dir = self.state_dir.parent
        before = served_now(state_dir)
        if before.label is not None and not before.ok:
            with lock:
                broken.append(f"before {decision.served_before} -> {decision.served_after}: {before.problem}")
        original(self, decision)
        after = served_now(state_dir)
        if not after.ok or after.label != decision.served_after:
            with lock:
                broken.append(f"after {decision.served_after}: {after.problem or after.label}")

    monkeypatch.setattr(ServingRecord, "record", record)
    yield broken


def test_a_pointer_move_keeps_the_old_model_readable_until_it_moves(tmp_path: Path, checked_moves: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _good_switch(tmp_path, None, "v0", 0.0)
    _good_switch(tmp_path, "v0", "v1", 0.0)
    assert checked_moves == []
    # without the kept previous model, the old pointer names a model no longer stored until the pointer moves
    monkeypatch.setattr(serving_module, "keep_previous", lambda *_: None)
    (StateDir(tmp_path).serving / serving_module.PREV_SERVED_FILE).unlink()
    _good_switch(tmp_path, "v1", "v2", 0.0)
    assert len(checked_moves) == 1 and "before v1 -> v2" in checked_moves[0]


# --- the whole transition ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_world(generate_world(WORLD), SplitConfig(), tmp_path_factory.mktemp("world")).data_dir


def settings(world_dir: Path, out: Path, **kw: object) -> RunSettings:
    base = RunSettings(data_dir=str(world_dir), output_dir=str(out), num_rounds=ROUNDS, min_nodes=3, dim=6,
                       batch_size=64, n_negatives=16, seed=3, adoption=json.dumps({"default": {"adopt": "always"}}))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("concurrent", [True, False])
def test_a_region_leaves_while_the_others_rebuild_and_nobody_serves_nothing(
        world_dir: Path, tmp_path: Path, checked_moves: list[str], concurrent: bool) -> None:
    trained = settings(world_dir, tmp_path / "run")
    run_in_process(trained)
    old_head = line_head(trained)
    root = silo_state_root(trained)
    assert root is not None
    egress_before = len(EgressLedger(StateDir(root / "eu").egress_ledger).entries())

    moved_before = len(checked_moves)
    out = run_transition(trained, "eu", out_dir=tmp_path / "rebuilt", engine=run_in_process, rounds=2,
                         concurrent=concurrent, interval_s=0.002)

    regions = out.monitor["regions"]
    print(f"\ntransition (concurrent={concurrent}, {out.monitor['wall_time_s']:.1f} s): "
          + ", ".join(f"{r}: {w['samples']} samples, {w['empty']} empty, {len(w['served'])} models"
                      for r, w in regions.items()))
    assert out.empty_samples == {"eu": 0, "na": 0, "apac": 0}, regions
    # the monitor sampled all along (how often depends on the machine's speed: 98 samples in 0.3 s on a loaded CI
    # box); that it saw every region's old and new model is asserted below, no gap in service by checked_moves
    assert all(w["samples"] >= 10 for w in regions.values())
    assert checked_moves[moved_before:] == []  # and no pointer move ever named a model it could not load

    # the remaining regions: the old head until the rebuilt line's head is ready (the rebuild is evaluated once, at
    # its head: no weak early version of it is ever served), then that head
    for region in ("na", "apac"):
        served = regions[region]["served"]
        assert served == [old_head, out.divestment.head], served
        assert served_now(root / region).label == out.divestment.head
    # eu: the old head until its own line, trained 2 local rounds, replaced it
    assert regions["eu"]["served"] == [old_head, f"{FORK_PREFIX}{old_head}+2"]
    assert out.departure.served_before == old_head and out.departure.users == "silo"
    last = RegionServing(root / "eu", AdoptionPolicy()).record.decisions()[-1]
    assert last.reason.startswith(LEFT_REASON) and last.served_after == f"{FORK_PREFIX}{old_head}"
    assert "valid_ndcg@20_after" in last.evidence
    # nothing left eu's silo, and the rebuilt run never reached it
    assert len(EgressLedger(StateDir(root / "eu").egress_ledger).entries()) == egress_before
    assert "eu" not in out.divestment.per_region


# --- later joiners ---------------------------------------------------------------------------------------


def test_a_later_joiner_starts_from_the_current_version(world_dir: Path, tmp_path: Path) -> None:
    first = settings(world_dir, tmp_path / "first", exclude_regions="apac", min_nodes=2)
    run_in_process(first)
    head = line_head(first)
    root = silo_state_root(first)
    assert root is not None and not (root / "apac").exists()  # apac never took part: it serves nothing
    later = dataclasses.replace(first, output_dir=str(tmp_path / "later"), registry_dir=str(first.registry_root()),
                                state_dir=str(root), exclude_regions="", min_nodes=3, start_version=head,
                                num_rounds=ROUNDS + 2)
    history = run_in_process(later)

    first_reply = next(e for e in EgressLedger(StateDir(root / "apac").egress_ledger).entries()
                       if e.kind == "train")
    assert first_reply.version == head and first_reply.server_round == ROUNDS + 1  # its first model: the head
    first_decision = RegionServing(root / "apac", AdoptionPolicy()).record.decisions()[0]
    registry = ModelRegistry(first.registry_root())  # type: ignore[arg-type]
    assert first_decision.round == ROUNDS + 1 and first_decision.served_before is None and first_decision.adopted
    assert registry.get(first_decision.candidate).parent == head  # served from its first evaluation on
    assert served_now(root / "apac").label == history.versions[-1]["id"]
    # the regions that stayed serve the same line, without a gap in their history of decisions
    for region in ("eu", "na"):
        kept = RegionServing(root / region, AdoptionPolicy()).record.decisions()
        assert [d.served_before for d in kept[1:]] == [d.served_after for d in kept[:-1]]


def test_a_fork_s_pointer_moves_only_once_the_fork_is_stored(world_dir: Path, tmp_path: Path,
                                                              checked_moves: list[str]) -> None:
    run_in_process(settings(world_dir, tmp_path / "run", adoption=json.dumps({"eu": {"fork": 2}})))
    assert checked_moves == []
    root = silo_state_root(settings(world_dir, tmp_path / "run"))
    assert root is not None and str(served_now(root / "eu").label).startswith(FORK_PREFIX)
