"""`simulations/steering_curves.py`: a steering study's runs as exposure and NDCG curves against the boost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "simulations" / "steering_curves.py"


def region(exposed: float, ndcg: float, users: int, global_exposure: float) -> dict[str, float]:
    return {"exposure": exposed, "test_users": users, "ndcg@20": ndcg, "global_exposure": global_exposure,
            "global_ndcg@20": ndcg}


def test_curves_weight_honest_users_and_leave_out_the_attacker_and_sabotage_runs(tmp_path: Path) -> None:
    runs = {"clean": {"regions": {"a": region(0.0, 0.20, 100, 0.0), "b": region(0.0, 0.10, 300, 0.0),
                                  "x": region(0.0, 0.5, 50, 0.0)}},
            "boost-2x": {"regions": {"a": region(0.10, 0.18, 100, 0.5), "b": region(0.0, 0.10, 300, 0.9),
                                     "x": region(1.0, 0.1, 50, 1.0)}},
            "flip": {"regions": {"a": region(0.0, 0.0, 100, 0.0), "b": region(0.0, 0.0, 300, 0.0),
                                 "x": region(0.0, 0.0, 50, 0.0)}}}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "steering.json").write_text(json.dumps({"attackers": ["x"], "runs": runs}))
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "c.png"), f"guard={tmp_path / 's'}"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("guard")]
    # honest = a and b, user-weighted: served 10/400, global (50 + 270)/400, NDCG (18 + 30)/400 over (20 + 30)/400
    assert rows == [["guard", "0x", "0.0%", "0.0%", "1.000"], ["guard", "2x", "2.5%", "80.0%", "0.960"]]
    assert (tmp_path / "c.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "d.png"), str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "is not LABEL=DIR" in bad.stderr
