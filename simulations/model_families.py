"""Every model family on one world, side by side: federated / centralized / local-only next to the baselines.

Runs `fedrec` (Flower's simulation engine, the real apps) once per model with the same overrides, so every
column is computed on the same split by the same harness, then prints from each run's `results.json`:
- overall NDCG@20 of the federated model, the served model, centralized and local-only;
- the baselines (`final.baselines`: EASE, ItemKNN, popularity; each tuned on validation), pooled and local;
- per region: the federated model against that region's best local-only baseline (`final.local_baseline`),
  and the number of regions where it is at least as good;
- the federated wall time and the mean time per round.

Usage:
  python simulations/model_families.py --out /tmp/families -- experiment=ml100k dataset.path=/tmp/fedrec-ml-100k
  python simulations/model_families.py --models mf:federation.rounds=20 ease:federation.rounds=1 ials --out DIR
A model may carry its own overrides after a colon, comma-separated (`ials:federation.rounds=8`).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_MODELS = ["mf", "twotower", "ease:federation.rounds=1", "ials:federation.rounds=8"]


def run(model: str, extra: list[str], overrides: list[str], out: Path, reuse: bool) -> dict[str, Any]:
    target = out / model
    if not (reuse and (target / "results.json").exists()):
        cmd = [sys.executable, "-m", "fedrec.commands", *overrides, f"model={model}", *extra,
               f"hydra.run.dir={target}"]
        print("$", " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{model} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        print(f"  {model}: {time.perf_counter() - start:.0f} s", flush=True)
    return dict(json.loads((target / "results.json").read_text()))


def ndcg(block: dict[str, Any], region: str | None = None) -> float:
    part = block["overall"] if region is None else block["per_region"][region]
    return float(part["ndcg@20"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reuse", action="store_true", help="read an existing OUT/MODEL/results.json instead of running")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python "
          f"{platform.python_version()}; overrides={args.overrides}")
    results = {}
    for entry in args.models:
        model, _, extra = entry.partition(":")
        results[model] = run(model, [e for e in extra.split(",") if e], args.overrides, args.out, args.reuse)

    first = next(iter(results.values()))["final"]
    print("\nNDCG@20 overall (test split)")
    print(f"{'model':<10}{'rounds':>7}{'federated':>11}{'served':>9}{'central.':>10}{'local-only':>11}"
          f"{'round s':>9}{'fed. s':>8}")
    for model, res in results.items():
        f, rounds = res["final"], res["round_log"]
        per_round = sum(e["round_time_s"] for e in rounds) / max(len(rounds), 1)
        print(f"{model:<10}{len(rounds):>7}{ndcg(f['federated']):>11.4f}{ndcg(f['served']):>9.4f}"
              f"{ndcg(f['centralized']):>10.4f}{ndcg(f['local_only']):>11.4f}{per_round:>9.2f}"
              f"{res['timings']['federated_s']:>8.0f}")
    print(f"{'baseline':<10}{'':>7}{'pooled':>11}{'':>9}{'':>10}{'local-only':>11}")
    for name, b in first["baselines"].items():
        if b.get("centralized"):
            print(f"{name:<10}{'':>7}{ndcg(b['centralized']):>11.4f}{'':>9}{'':>10}{ndcg(b['local_only']):>11.4f}")
    print(f"{'best local baseline per region':<47}{ndcg(first['local_baseline']):>11.4f}")

    regions = sorted(first["federated"]["per_region"])
    print("\nper region: federated NDCG@20 of each model | the region's best local-only baseline")
    print(f"{'region':<11}" + "".join(f"{m:>10}" for m in results) + f"{'local bl.':>11}")
    for r in regions:
        print(f"{r:<11}" + "".join(f"{ndcg(res['final']['federated'], r):>10.4f}" for res in results.values())
              + f"{ndcg(first['local_baseline'], r):>11.4f}")
    wins = {m: sum(ndcg(res["final"]["served"], r) >= ndcg(first["local_baseline"], r) for r in regions)
            for m, res in results.items()}
    print("regions where the served model >= the best local baseline: "
          + ", ".join(f"{m} {w}/{len(regions)}" for m, w in wins.items()))


if __name__ == "__main__":
    main()
