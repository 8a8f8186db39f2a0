"""Coalition study: does a coalition pay for its members, against training alone and against the whole federation?

    python simulations/coalitions.py --out DIR [--coalition atlantic=eu,na,latam --coalition eastern=apac,mena,na]
        [--divest REGION --recovery K] [--engine simulation|in-process] -- OVERRIDES

1. The whole world trains one line (every region; `federation.rounds`, default 10 here), with the local-only and
   centralized reference points of `run_experiment`.
2. The same world trains one line per coalition in one run (`federation.coalitions`): a region in two coalitions
   trains for both (and under `privacy=user_dp` spends its one budget for both: its σ is reported).
3. Per region NDCG@20 (test): local-only, the whole federation, and every coalition line it is in (the one it
   serves marked), with each line's cost in local trainings.
4. `--divest REGION`: the coalition run keeps its contributions (`federation.keep_contributions=true`, each line
   its own) and every line REGION shaped is rebuilt without it, exactly (`fedrec.divestment.divest_lines`) and
   fast (its contributions subtracted, K recovery rounds): per remaining member NDCG@20 before, exact and fast, and
   each rebuild's cost (local trainings, wall time).

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
from fedrec.divestment import divest_lines
from fedrec.experiment import run_experiment
from fedrec.plots import plot_coalitions
from fedrec.settings import load_run_config

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


def divestment(out: Path, region: str, recovery: int, engine: Any) -> dict[str, Any]:
    """Every coalition line of the run in `out / "coalitions"` that `region` shaped, rebuilt exactly and fast."""
    settings = load_run_config(out / "coalitions")
    before = json.loads((out / "coalitions" / "results.json").read_text())["coalitions"]
    rebuilt = {}
    for method in ("exact", "fast"):
        t = time.perf_counter()
        print(f"divesting {region}: {method} ...", flush=True)
        rebuilt[method] = (divest_lines(settings, [region], method=method, out_dir=out / f"divest-{method}",
                                        engine=engine, recovery_rounds=recovery), time.perf_counter() - t)
    lines = {}
    for line, exact in rebuilt["exact"][0].items():
        fast = rebuilt["fast"][0][line]
        lines[line] = {"per_region": {r: {"before": before[line]["per_region"][r][METRIC],
                                          "exact": exact.per_region[r][METRIC], "fast": fast.per_region[r][METRIC]}
                                      for r in exact.per_region},
                       "local_trainings": {"exact": exact.silo_rounds, "fast": fast.silo_rounds},
                       "wall_s": {"exact": exact.wall_time_s, "fast": fast.wall_time_s}}
    return {"region": region, "recovery_rounds": recovery, "lines": lines}


def study(out: Path, overrides: list[str], coalitions: dict[str, list[str]], engine: Any,
          divest: str | None = None, recovery: int = 3) -> dict[str, Any]:
    """Both runs under `out` (and `divest`'s rebuilds); the per-region comparison."""
    if out.exists():
        shutil.rmtree(out)
    cfg = compose_experiment([*DEFAULT_OVERRIDES, *overrides])
    t = time.perf_counter()
    print(f"the whole world, one line ({cfg.federation.rounds} rounds) ...", flush=True)
    whole = run_experiment(cfg, out / "whole", log=lambda *_: None, engine=engine)
    whole_s = time.perf_counter() - t
    spec = ", ".join(f"{n}: {'+'.join(r)}" for n, r in coalitions.items())
    lined = compose_experiment([*DEFAULT_OVERRIDES, *overrides, "bounds=[]",
                                *[f"+federation.coalitions.{n}=[{','.join(r)}]" for n, r in coalitions.items()],
                                *(["federation.keep_contributions=true"] if divest else [])])
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
            "privacy": {"whole": whole.get("privacy", {}), "coalitions": lines.get("privacy", {})},
            **({"divestment": divestment(out, divest, recovery, engine)} if divest else {})}


def print_divestment(d: dict[str, Any]) -> None:
    """Per rebuilt line: each remaining member's NDCG@20 before, exact and fast, and the cost."""
    print(f"divesting {d['region']} (fast: {d['recovery_rounds']} recovery round(s)); {METRIC}")
    for line, part in d["lines"].items():
        print(f"  line {line}: local trainings {part['local_trainings']}, wall s "
              f"{ {k: round(v, 1) for k, v in part['wall_s'].items()} }")
        for r, row in part["per_region"].items():
            print(f"    {r:<8} before {row['before']:.4f}  exact {row['exact']:.4f}  fast {row['fast']:.4f}  "
                  f"fast/exact {row['fast'] / row['exact'] - 1:+.1%}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--coalition", action="append",
                    help=f"NAME=region,region (repeat; default: {json.dumps(DEFAULT_COALITIONS)})")
    ap.add_argument("--divest", help="rebuild every line this region shaped without it, exact and fast")
    ap.add_argument("--recovery", type=int, default=3, help="fast divestment's recovery rounds (default 3)")
    ap.add_argument("--engine", choices=["simulation", "in-process"], default="simulation")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    args = ap.parse_args(argv)
    summary = study(args.out, args.overrides, parse_coalitions(args.coalition), engine_for(args.engine),
                    divest=args.divest, recovery=args.recovery)
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
    if "divestment" in summary:
        print_divestment(summary["divestment"])
    print(f"wrote {args.out / 'coalitions_study.json'} and {args.out / 'coalitions_study.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
