"""Coalition study: does a coalition pay for its members, against training alone and against the whole federation?

    python simulations/coalitions.py --out DIR [--coalition atlantic=eu,na,latam --coalition eastern=apac,mena,na]
        [--engine simulation|in-process] -- OVERRIDES

1. The whole world trains one line (every region; `federation.rounds`, default 10 here), with the local-only and
   centralized reference points of `run_experiment`.
2. The same world trains one line per coalition in one run (`federation.coalitions`): a region in two coalitions
   trains for both (and under `privacy=user_dp` spends its one budget for both: its σ is reported).
3. Per region NDCG@20 (test): local-only, the whole federation, and every coalition line it is in (the one it
   serves marked), with each line's cost in local trainings.

Writes `DIR/coalitions_study.json` and `DIR/coalitions_study.png`; prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines import engine_for

from fedrec.commands.run import compose_experiment
from fedrec.experiment import run_experiment
from fedrec.plots import plot_coalitions

DEFAULT_OVERRIDES = ["federation.rounds=10", "baselines=[]"]
DEFAULT_COALITIONS = {"atlantic": ["eu", "na", "latam"], "eastern": ["apac", "mena", "na"]}
METRIC = "ndcg@20"


def parse_coalitions(items: list[str] | None) -> dict[str, list[str]]:
    """`NAME=r1,r2` items → {NAME: [r1, r2]} (the default coalitions when none are given)."""
    if not items:
        return DEFAULT_COALITIONS
    out = {}
    for item in items:
        name, sep, regions = item.partition("=")
        if not sep or not name or not regions:
            raise SystemExit(f"--coalition {item!r}: write NAME=region,region (e.g. atlantic=eu,na)")
        out[name] = [r.strip() for r in regions.split(",") if r.strip()]
    return out


def study(out: Path, overrides: list[str], coalitions: dict[str, list[str]], engine: Any) -> dict[str, Any]:
    """Both runs under `out`; the per-region comparison."""
    if out.exists():
        shutil.rmtree(out)
    cfg = compose_experiment([*DEFAULT_OVERRIDES, *overrides])
    t = time.perf_counter()
    print(f"the whole world, one line ({cfg.federation.rounds} rounds) ...", flush=True)
    whole = run_experiment(cfg, out / "whole", log=lambda *_: None, engine=engine)
    whole_s = time.perf_counter() - t
    spec = ", ".join(f"{n}: {'+'.join(r)}" for n, r in coalitions.items())
    lined = compose_experiment([*DEFAULT_OVERRIDES, *overrides, "bounds=[]",
                                *[f"+federation.coalitions.{n}=[{','.join(r)}]" for n, r in coalitions.items()]])
    t = time.perf_counter()
    print(f"one line per coalition {spec} ...", flush=True)
    lines = run_experiment(lined, out / "coalitions", log=lambda *_: None, engine=engine)
    lines_s = time.perf_counter() - t
    regions = sorted(whole["final"]["federated"]["per_region"])
    table = {}
    for r in regions:
        row = {"local_only": whole["final"].get("local_only", {}).get("per_region", {}).get(r, {}).get(METRIC),
               "whole": whole["final"]["federated"]["per_region"][r][METRIC],
               "centralized": whole["final"].get("centralized", {}).get("per_region", {}).get(r, {}).get(METRIC)}
        mine = [n for n in sorted(coalitions) if r in coalitions[n]]
        for n in mine:
            row[n] = lines["coalitions"][n]["per_region"].get(r, {}).get(METRIC)
        row["serves"] = next((n for n in mine if r in lines["coalitions"][n].get("served_by", [])), None)
        table[r] = row
    trainings = {"whole": sum(len(e["participants"]) for e in whole["round_log"]),
                 **{n: sum(len(e["participants"]) for e in lines["round_log"] if e.get("coalition") == n)
                    for n in coalitions}}
    return {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
            "overrides": [*DEFAULT_OVERRIDES, *overrides], "coalitions": coalitions, "metric": METRIC,
            "per_region": table, "local_trainings": trainings, "wall_s": {"whole": whole_s, "coalitions": lines_s},
            "privacy": {"whole": whole.get("privacy", {}), "coalitions": lines.get("privacy", {})}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--coalition", action="append",
                    help=f"NAME=region,region (repeat; default: {json.dumps(DEFAULT_COALITIONS)})")
    ap.add_argument("--engine", choices=["simulation", "in-process"], default="simulation")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    args = ap.parse_args(argv)
    summary = study(args.out, args.overrides, parse_coalitions(args.coalition), engine_for(args.engine))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coalitions_study.json").write_text(json.dumps(summary, indent=1))
    plot_coalitions(summary).savefig(args.out / "coalitions_study.png", dpi=120)
    cols = ["local_only", "whole", *summary["coalitions"], "centralized"]
    print(f"{summary['metric']} per region (* served line)")
    print("region    " + "".join(f"{c:>13}" for c in cols))
    for r, row in summary["per_region"].items():
        cells = ["" if row.get(c) is None else f"{row[c]:.4f}" + ("*" if c == row["serves"] else "") for c in cols]
        print(f"{r:<10}" + "".join(f"{cell:>13}" for cell in cells))
    print("local trainings:", summary["local_trainings"], "wall s:", {k: round(v, 1) for k, v in
                                                                       summary["wall_s"].items()})
    print(f"wrote {args.out / 'coalitions_study.json'} and {args.out / 'coalitions_study.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
