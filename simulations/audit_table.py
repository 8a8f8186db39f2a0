"""The one-run privacy audit (`fedrec audit privacy`) at several ε, as the README's table: claimed ε vs the bound.

Runs `run_privacy_audit` on the in-process grid (the real ClientApp and ServerApp, no Ray) for a model on a
600-user, 3-silo synthetic world with 200 canaries in eu: no DP (the positive control), then each ε, observing
the silo's releases and the final model. Prints right guesses → the empirical ε lower bound (95%) per run.

Usage: python simulations/audit_table.py --model ials --epsilons none 2 8 64 [--rounds 2] [--dim 16]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakegrid import run_in_process  # the tests' in-process grid

from fedrec.config import experiment_from_dict
from fedrec.privacy_audit import CanaryPlan, run_privacy_audit

DATASET = {"name": "synthetic", "n_users": 600, "n_items": 150, "region_only_items": 8,
           "region_sizes": [2.0, 1.0, 1.0], "seed": 3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ials")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--canaries", type=int, default=200)
    ap.add_argument("--epsilons", nargs="+", default=["none", "2", "8", "64"])
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()}"
          f"; model={args.model} dim={args.dim} rounds={args.rounds} canaries={args.canaries}")
    for eps in args.epsilons:
        privacy = {} if eps == "none" else {"privacy": {"name": "user_dp", "epsilon": float(eps)}}
        cells = []
        for observe in ("releases", "final"):
            cfg = experiment_from_dict({"dataset": DATASET, "model": {"name": args.model, "dim": args.dim},
                                        "federation": {"rounds": args.rounds}, "baselines": [], "bounds": [],
                                        **privacy})
            report = run_privacy_audit(cfg, Path(tempfile.mkdtemp(prefix="fedrec-audit-")),
                                       CanaryPlan(region="eu", canaries=args.canaries), observe=observe,
                                       log=lambda *_: None, engine=run_in_process)
            a = report["audit"]
            cells.append(f"{observe}: {a['correct']}/{a['guesses']} → ε ≥ {a['epsilon_lower_bound']:.2f}")
        claimed = report["claimed_epsilon"]
        print(f"eps {eps:>4} (claimed {'-' if claimed is None else f'{claimed:.2f}'}): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
