"""Regimes as data: each simulated jurisdiction's own policy reaches its silo, and `fedrec regimes` / results.json
report it with what the silo's own ledgers say it spent."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from fakegrid import run_in_process
from rich.console import Console

from fedrec.commands.regimes import regimes_main
from fedrec.config import experiment_from_dict
from fedrec.experiment import run_experiment
from fedrec.silo.egress_ledger import GENESIS, verify

CHECK_RESULTS = Path("/work/shared/tools/check_results.py")


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("regimes")
    cfg = experiment_from_dict({
        "dataset": {"name": "synthetic", "n_users": 300, "n_items": 100, "region_only_items": 5,
                    "region_sizes": [2.0, 1.0, 1.0], "seed": 1},
        "federation": {"rounds": 2}, "model": {"name": "mf", "dim": 8}, "baselines": [],
        "privacy": {"name": "user_dp", "epsilon": 4.0, "sample_rate": 0.2, "steps_per_round": 2},
        "regime": {"eu": {"epsilon-budget": 1.0, "max-delta": 1e-6, "ledger-retention-days": 30,
                          "partners": ["na", "apac"]},
                   "default": {"require-secure-aggregation": False, "adopt": "if_better"}}})
    return run_experiment(cfg, out, log=lambda *_: None, engine=run_in_process), out


def test_each_region_s_regime_is_its_silo_s_policy(dp_run) -> None:
    res, _ = dp_run
    eu, na = res["regimes"]["eu"], res["regimes"]["na"]
    # eu's own cap (1.0) beats the run's proposal (4.0); its ledger is kept at its max-delta
    assert eu["policy"]["epsilon_budget"] == 1.0 and eu["policy"]["run_epsilon"] == 1.0
    assert eu["policy"]["delta"] == 1e-6 and res["privacy"]["eu"]["delta"] == 1e-6
    assert res["privacy"]["eu"]["budget_epsilon"] == 1.0 and res["privacy"]["na"]["budget_epsilon"] == 4.0
    assert eu["policy"]["partners"] == ["apac", "na"] and eu["policy"]["adoption"]["kind"] == "always"
    assert na["policy"]["adoption"]["kind"] == "if_better" and na["policy"]["partners"] is None  # `default`
    assert res["adoption"]["na"]["policy"]["kind"] == "if_better"  # the silo acted on it


def test_results_carry_what_each_silo_s_ledgers_say_it_spent(dp_run) -> None:
    res, _ = dp_run
    for region in ("eu", "na", "apac"):
        spent, this_run = res["regimes"][region]["spent"], res["regimes"][region]["this_run"]
        assert this_run["releases"] == 2  # two rounds, one release each
        assert 0 < this_run["epsilon"] <= res["regimes"][region]["policy"]["run_epsilon"] + 1e-6
        assert spent["epsilon"] == pytest.approx(res["privacy"][region]["epsilon"], rel=1e-6)  # one silo, one run
    keep = res["regimes"]["eu"]["spent"]["keep_until"]
    assert (date.fromisoformat(keep) - date.today()).days in (29, 30, 31)  # last entry + ledger-retention-days
    assert res["regimes"]["na"]["spent"]["keep_until"] is None


def test_results_still_pass_the_shared_schema_check(dp_run) -> None:
    if not CHECK_RESULTS.exists():
        pytest.skip(f"{CHECK_RESULTS} not on this machine")
    _, out = dp_run
    done = subprocess.run([sys.executable, str(CHECK_RESULTS), str(out / "results.json")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_fedrec_regimes_prints_each_policy_and_spend(dp_run) -> None:
    _, out = dp_run
    console = Console(record=True, width=240)
    assert regimes_main([str(out)], console) == 0
    text = console.export_text()
    eu = next(line for line in text.splitlines() if line.strip().startswith("eu "))
    assert "1 / 1" in eu and "apac, na" in eu and "30 d" in eu and "(2 releases)" in eu
    na = next(line for line in text.splitlines() if line.strip().startswith("na "))
    assert "- / 4" in na and "any" in na and "if_better" in na


def test_fedrec_regimes_reads_a_silo_s_state_dir(dp_run) -> None:
    _, out = dp_run
    console = Console(record=True, width=240)
    assert regimes_main(["--state-dir", f"eu={out / 'silo-state' / 'eu'}"], console) == 0
    assert "of 1" in console.export_text()  # the budget its own ledger holds


@pytest.mark.parametrize("argv", [[], ["/nonexistent/run"], ["--state-dir", "eu"]])
def test_fedrec_regimes_mistakes_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert regimes_main(argv, Console(record=True)) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrec regimes: error:") and err.count("\n") == 1


def test_an_egress_ledger_written_before_members_were_recorded_still_verifies(tmp_path: Path) -> None:
    body = {"seq": 0, "prev": GENESIS, "run_id": "1", "server_round": 1, "kind": "train", "region": "eu",
            "n_bytes": 10, "sha256": "00" * 32, "declined": True, "dp": {}, "recorded_at": 1.0}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    line = {**body, "hash": digest}
    path = tmp_path / "egress_ledger.jsonl"
    path.write_text(json.dumps(line) + "\n")
    assert verify(path).ok
    line["members"] = ["eu"]  # a field added afterwards breaks the chain
    path.write_text(json.dumps(line) + "\n")
    assert not verify(path).ok
