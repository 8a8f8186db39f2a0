"""The silo's budget ledger under concurrent processes: no release is lost, the budget holds, none is doubled.

Every process opens the ledger (loads its state) before any of them authorizes, as two runs on one silo do
before their seconds-long DP training; the ledger must still compose all their releases.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from fedrec.privacy.accountant import GaussianSteps, epsilon_of
from fedrec.privacy.ledger import BudgetLedger, Decline, Release

STEP = GaussianSteps(0.05, 1.0, 20)
DELTA = 1e-5
# Workers fork from a fresh server interpreter (not from this one, which holds torch's threads) that has
# imported the ledger and this module once: each then starts in milliseconds, not a second of imports.
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["fedrec.privacy.ledger", __name__])
PROCESSES = 4
TIMEOUT = 60.0


def budget_for(releases: int) -> float:
    """A budget that fits `releases` releases of STEP but not one more."""
    return (epsilon_of([STEP] * releases, delta=DELTA) + epsilon_of([STEP] * (releases + 1), delta=DELTA)) / 2


def contend(path: str, budget: float, wanted: list[tuple[str, int]], barrier: Barrier, out: Any) -> None:
    """Open the ledger, wait until every process has, then try to release each (run, round) in `wanted`."""
    approved: list[tuple[str, int]] = []
    try:
        ledger = BudgetLedger(Path(path), budget_epsilon=budget, delta=DELTA)
        barrier.wait(TIMEOUT)  # every process now holds the same, soon stale, state
        for run_id, server_round in wanted:
            if isinstance(ledger.authorize(run_id=run_id, server_round=server_round, event=STEP), Release):
                approved.append((run_id, server_round))
        out.put(("ok", approved))
    except BaseException as exc:  # report it: a silent child would only show up as a timeout
        out.put((repr(exc), approved))


def authorize_once(path: str, budget: float, run_id: str, server_round: int, out: Any) -> None:
    """Another process's single release on the ledger at `path`."""
    try:
        got = BudgetLedger(Path(path), budget_epsilon=budget, delta=DELTA).authorize(
            run_id=run_id, server_round=server_round, event=STEP)
        out.put(("ok", isinstance(got, Release)))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def authorize_when_opened(path: str, opened: Any, out: Any) -> None:
    """Open the ledger, say so, then release run r round 1."""
    try:
        ledger = BudgetLedger(Path(path), budget_epsilon=8.0, delta=DELTA)
        opened.set()
        got = ledger.authorize(run_id="r", server_round=1, event=STEP)
        out.put(("ok", isinstance(got, Release)))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def save_plan_once(path: str, run_id: str, plan: dict[str, Any], out: Any) -> None:
    """Another process fixing a run's plan on the ledger at `path`."""
    try:
        BudgetLedger(Path(path), budget_epsilon=8.0, delta=DELTA).save_plan(run_id, plan)
        out.put(("ok", True))
    except BaseException as exc:
        out.put(("error", repr(exc)))


def run_in_process(target: Any, *args: Any) -> Any:
    """Run `target(*args, queue)` in a spawned process and return what it reported."""
    out = CTX.Queue()
    proc = CTX.Process(target=target, args=(*args, out))
    proc.start()
    status, value = out.get(timeout=TIMEOUT)
    proc.join(TIMEOUT)
    assert status == "ok", value
    return value


def on_disk(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_concurrent_processes_lose_no_release_and_keep_the_budget(tmp_path: Path) -> None:
    # Prepare: one release already on disk; room for 5 more. Each process wants 3 of its own rounds and
    # the shared round ("shared", 1): 13 requests, 9 distinct, only 5 fit.
    path = tmp_path / "state" / "privacy_ledger.json"
    budget = budget_for(6)
    assert isinstance(BudgetLedger(path, budget_epsilon=budget, delta=DELTA).authorize(
        run_id="before", server_round=1, event=STEP), Release)
    wanted = [[("shared", 1), *((f"run-{i}", r) for r in (1, 2, 3))] for i in range(PROCESSES)]
    barrier = CTX.Barrier(PROCESSES)
    out = CTX.Queue()
    procs = [CTX.Process(target=contend, args=(str(path), budget, w, barrier, out)) for w in wanted]

    # Execute
    for p in procs:
        p.start()
    reports = [out.get(timeout=TIMEOUT) for _ in procs]
    for p in procs:
        p.join(TIMEOUT)

    # Assert: every approval is on disk, once; together the processes approved what the budget had room for
    approved = [tuple(a) for _, got in reports for a in got]
    state = on_disk(path)
    recorded = [(r["run_id"], r["server_round"]) for r in state["releases"]]
    assert sorted(recorded) == sorted([("before", 1), *approved]), reports  # nothing lost, nothing invented
    assert max(Counter(recorded).values()) == 1  # no (run, round) twice
    assert len(approved) == 5  # the budget's room, used and not exceeded
    assert [status for status, _ in reports] == ["ok"] * PROCESSES, reports
    assert len(state["accountant"]["events"]) == len(recorded)
    spent = epsilon_of([GaussianSteps(**e) for e in state["accountant"]["events"]], delta=DELTA)
    assert spent <= budget
    assert max(r["epsilon_after"] for r in state["releases"]) <= budget


def test_authorize_rereads_what_another_process_released_since_the_ledger_was_opened(tmp_path: Path) -> None:
    # Prepare: this process opens the ledger, then another process releases run r round 1
    path = tmp_path / "privacy_ledger.json"
    budget = budget_for(1)
    stale = BudgetLedger(path, budget_epsilon=budget, delta=DELTA)
    assert run_in_process(authorize_once, str(path), budget, "r", 1) is True
    assert stale.releases == []  # the snapshot is stale...

    # Execute
    again = stale.authorize(run_id="r", server_round=1, event=STEP)
    over = stale.authorize(run_id="r", server_round=2, event=STEP)

    # Assert: ...but authorize decides on the ledger on disk and keeps the other process's release
    assert isinstance(again, Decline) and "already released" in again.reason
    assert isinstance(over, Decline) and "budget exhausted" in over.reason
    assert [(r.run_id, r.server_round) for r in stale.releases] == [("r", 1)]
    assert [(r["run_id"], r["server_round"]) for r in on_disk(path)["releases"]] == [("r", 1)]


def test_save_plan_keeps_the_plan_another_process_stored(tmp_path: Path) -> None:
    # Prepare: this process opens the ledger, then another process fixes run x's plan
    path = tmp_path / "privacy_ledger.json"
    first = {"noise_multiplier": 1.25, "sample_rate": 0.05, "steps_per_round": 20}
    stale = BudgetLedger(path, budget_epsilon=8.0, delta=DELTA)
    assert run_in_process(save_plan_once, str(path), "x", first) is True
    assert stale.plan_for("x") is None

    # Execute / Assert: the same plan is no conflict; a different one is refused and the stored one kept
    assert stale.save_plan("x", dict(first)) == first
    with pytest.raises(ValueError, match="different privacy plan"):
        stale.save_plan("x", {**first, "noise_multiplier": 0.5})
    assert stale.plan_for("x") == first
    assert on_disk(path)["plans"] == {"x": first}


def test_authorize_waits_for_the_ledger_lock(tmp_path: Path) -> None:
    # Prepare: this process holds the ledger's lock file
    path = tmp_path / "privacy_ledger.json"
    ledger = BudgetLedger(path, budget_epsilon=8.0, delta=DELTA)
    fd = os.open(ledger.lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    opened = CTX.Event()
    out = CTX.Queue()
    proc = CTX.Process(target=authorize_when_opened, args=(str(path), opened, out))
    try:
        # Execute: another process authorizes while the lock is held
        proc.start()
        assert opened.wait(TIMEOUT)
        time.sleep(0.5)  # ample time to write an unlocked ledger
        written_while_locked = path.exists()
    finally:
        os.close(fd)
    status, value = out.get(timeout=TIMEOUT)
    proc.join(TIMEOUT)

    # Assert: it wrote nothing while locked, and released once the lock was free
    assert not written_while_locked
    assert (status, value) == ("ok", True)
    assert [r["server_round"] for r in on_disk(path)["releases"]] == [1]
