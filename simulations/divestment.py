"""Divestment study: a world trains, one large region is ordered out, the rest carry on without it.

    python simulations/divestment.py --out DIR [--region eu] [--recovery 1 2 3] [--engine simulation] -- OVERRIDES

1. The federation trains (`federation.rounds`, default 10 here) with `federation.keep_contributions=true`.
2. **Exact** divestment rebuilds the line without the region from the last version it never touched; **fast**
   subtracts its kept contributions and runs K recovery rounds, for each K of `--recovery`
   (`fedrec.divestment.divest`).
3. **Floor**: `--floor-seeds` more lines without the region, from other seeds: how far equally valid "never took
   part" lines lie apart, the scale against which fast's distance from exact is read.
4. **Removal test** (`fedrec.divestment.evidence`): recall@20 of the region's own items for its own test users,
   on the model before, after exact, after fast, and on the floor line; paired bootstrap intervals against exact.
   With `--canaries N`, N canary users are planted in the region before training (half of them, by a seeded coin;
   `fedrec.privacy_audit.plant_canaries`), and each model's AUC of included against excluded canaries is reported:
   near 1 before, 0.5 once included canaries look like items the model never trained on.
5. The departed region's own line (`fedrec.divestment.leave`: what it served, then `--leave-rounds` local rounds
   on its own data) against what it served before and what it trains alone.
6. Per remaining region NDCG@20 (test) before, after exact / fast, on the floor line and local-only (each region
   training alone: what it falls back to), and the cost of each rebuild (local trainings, wall time).

Writes `DIR/divestment_study.json` and `DIR/divestment_study.png`; prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines import engine_for

from fedrec.commands.run import compose_experiment
from fedrec.config import AdoptionPolicy
from fedrec.divestment import Divestment, divest, line_head
from fedrec.divestment.evidence import canary_test, compare, own_items, signal, world_silos
from fedrec.divestment.figures import plot_divestment
from fedrec.divestment.leave import leave, region_paths
from fedrec.experiment import run_experiment
from fedrec.privacy_audit import Canaries, CanaryPlan, plant_canaries
from fedrec.settings import load_run_config
from fedrec.silo.fork_line import evaluate_fork
from fedrec.silo.serving import RegionServing
from fedrec.versions import ModelRegistry

DEFAULT_OVERRIDES = ["federation.rounds=10", "baselines=[]"]


def study(out: Path, overrides: list[str], region: str, recovery: list[int], engine: Any, floor_seeds: int,
          leave_rounds: int, canaries: int = 0) -> dict[str, Any]:
    """Run every line of the study under `out` and return its summary."""
    if out.exists():
        shutil.rmtree(out)
    cfg = compose_experiment([*DEFAULT_OVERRIDES, *overrides, "federation.keep_contributions=true"])
    t = time.perf_counter()
    print(f"training the world ({cfg.federation.rounds} rounds"
          + (f", {canaries} canaries planted in {region}" if canaries else "") + ") ...", flush=True)
    planted: dict[str, Canaries] = {}

    def plant(data: Any) -> Any:
        data, planted["canaries"] = plant_canaries(data, CanaryPlan(region=region, canaries=canaries, seed=cfg.seed))
        return data

    trained = run_experiment(cfg, out / "trained", log=lambda *_: None, engine=engine,
                             transform=plant if canaries else None)
    trained_s = time.perf_counter() - t
    settings = load_run_config(out / "trained")
    if region not in trained["final"]["federated"]["per_region"]:
        known = sorted(trained["final"]["federated"]["per_region"])
        raise SystemExit(f"region {region!r} is not in this world: {known}")
    lines: dict[str, Divestment] = {}
    print("exact divestment ...", flush=True)
    lines["exact"] = divest(settings, [region], method="exact", out_dir=out / "exact", engine=engine)
    for k in recovery:
        print(f"fast divestment, {k} recovery round(s) ...", flush=True)
        lines[f"fast{k}"] = divest(settings, [region], method="fast", out_dir=out / f"fast{k}", engine=engine,
                                   recovery_rounds=k)
    remaining = [r for r in trained["final"]["federated"]["per_region"] if r != region]
    floors = {}
    for i in range(1, floor_seeds + 1):
        print(f"floor {i}: a line without the region from seed {settings.seed + i} ...", flush=True)
        floors[f"floor{i}"] = engine(dataclasses.replace(
            settings, seed=settings.seed + i, exclude_regions=region, output_dir=str(out / f"floor{i}"),
            registry_dir="", state_dir="", min_nodes=len(remaining), keep_contributions=False))

    print(f"{region} leaves: its own line, {leave_rounds} local round(s) ...", flush=True)
    departure = leave(settings, region, rounds=leave_rounds)
    state_dir, _ = region_paths(settings, region)
    own_line = RegionServing(state_dir, AdoptionPolicy()).fork()
    assert own_line is not None
    silos_now = world_silos(Path(settings.data_dir))
    departed = {"served_before": trained["final"].get("served", trained["final"]["federated"])["per_region"][region]
                ["ndcg@20"],
                "own_line": evaluate_fork(own_line, silos_now[region], settings.model_spec, settings.train_config(),
                                          seed=settings.seed).means()["ndcg@20"],
                "local_only": trained["final"]["local_only"]["per_region"][region]["ndcg@20"],
                "rounds": leave_rounds, "departure": departure.to_dict()}

    registry = ModelRegistry(settings.registry_root() or out / "trained" / "registry", create=False)
    head = line_head(settings)
    models = {"before": registry.load(head)[0], **{k: registry.load(d.head)[0] for k, d in lines.items()},
              **{k: h.final_arrays for k, h in floors.items()}}
    silos = world_silos(Path(settings.data_dir))
    items = own_items(silos, region)
    signals = {k: signal(silos[region], items, settings.model_spec, a, settings.train_config(), seed=settings.seed)
               for k, a in models.items()}
    removal = {"region": region, "own_items": int(items.size), "users": int(signals["before"].users.size),
               "signal": {k: s.mean for k, s in signals.items()},
               "vs_exact": {k: compare(s, signals["exact"], seed=settings.seed).to_dict()
                            for k, s in signals.items() if k != "exact"}}
    if planted:
        c = planted["canaries"]
        n = int(trained["dataset"]["n_items"])  # the catalog with the canary items
        removal["canaries"] = canary_test(models, c.items, c.included, n, seed=settings.seed)

    per_region = {"before": {r: trained["final"]["federated"]["per_region"][r]["ndcg@20"] for r in remaining},
                  **{k: {r: d.per_region[r]["ndcg@20"] for r in remaining} for k, d in lines.items()},
                  **{k: {r: h.rounds[-1]["per_region"][r]["ndcg@20"] for r in remaining} for k, h in floors.items()},
                  "local_only": {r: trained["final"]["local_only"]["per_region"][r]["ndcg@20"] for r in remaining}}
    users = {r: trained["dataset"]["regions"][r]["test_users"] for r in remaining}
    overall = {k: sum(v[r] * users[r] for r in remaining) / sum(users.values()) for k, v in per_region.items()}
    cost = {k: {"rounds": d.rounds, "local_trainings": d.silo_rounds, "wall_time_s": d.wall_time_s,
                "share_of_exact": d.silo_rounds / lines["exact"].silo_rounds} for k, d in lines.items()}
    return {"machine": f"{platform.machine()}, Python {platform.python_version()}",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "overrides": [*DEFAULT_OVERRIDES, *overrides], "region": region, "remaining": remaining,
            "region_share_of_users": trained["dataset"]["regions"][region]["users"]
            / sum(v["users"] for v in trained["dataset"]["regions"].values()),
            "trained_wall_time_s": trained_s, "per_region_ndcg@20": per_region, "overall_ndcg@20": overall,
            "cost": cost, "removal_test": removal, "departed": departed,
            "lines": {k: d.to_dict() for k, d in lines.items()}}


def print_tables(s: dict[str, Any]) -> None:
    cols = list(s["per_region_ndcg@20"])
    print(f"\nNDCG@20 (test) of the remaining regions after {s['region']} "
          f"({s['region_share_of_users']:.0%} of users) is ordered out")
    print(f"{'region':<10}" + "".join(f"{c:>11}" for c in cols))
    for r in s["remaining"]:
        print(f"{r:<10}" + "".join(f"{s['per_region_ndcg@20'][c][r]:>11.4f}" for c in cols))
    print(f"{'overall':<10}" + "".join(f"{s['overall_ndcg@20'][c]:>11.4f}" for c in cols))
    print("\nfast against exact, per region (fast / exact - 1):")
    for k in (c for c in cols if c.startswith(("fast", "floor"))):
        gaps = {r: s["per_region_ndcg@20"][k][r] / s["per_region_ndcg@20"]["exact"][r] - 1 for r in s["remaining"]}
        print(f"  {k:<7}" + "  ".join(f"{r} {g:+.1%}" for r, g in gaps.items())
              + (f"   cost {s['cost'][k]['share_of_exact']:.0%} of exact" if k in s["cost"] else ""))
    d = s["departed"]
    print(f"\n{s['region']} on its own line ({d['rounds']} local round(s) from what it served): NDCG@20 "
          f"{d['own_line']:.4f}; it served {d['served_before']:.4f} before; local-only {d['local_only']:.4f}")
    rt = s["removal_test"]
    print(f"\nremoval test: recall@20 of {rt['region']}'s {rt['own_items']} own items for its {rt['users']} test users")
    for k, v in rt["signal"].items():
        c = rt["vs_exact"].get(k)
        ci = f"   vs exact {c['difference']:+.4f} (95% CI {c['low']:+.4f}..{c['high']:+.4f})" if c else ""
        print(f"  {k:<8}{v:.4f}{ci}")
    if "canaries" in rt:
        first = next(iter(rt["canaries"]["auc"].values()))
        print(f"\ncanary test: AUC of {first['included']} included against {first['excluded']} excluded canaries by "
              f"{rt['canaries']['feature']} (0.5: nothing learnt about which were planted)")
        for k, c in rt["canaries"]["auc"].items():
            print(f"  {k:<8}{c['auc']:.3f}   (95% CI {c['low']:.3f}..{c['high']:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--region", default="eu", help="the region ordered out")
    ap.add_argument("--recovery", type=int, nargs="+", default=[1, 2, 3], help="fast: recovery rounds to try")
    ap.add_argument("--engine", choices=("simulation", "in-process"), default="simulation")
    ap.add_argument("--floor-seeds", type=int, default=3, help="lines without the region from other seeds")
    ap.add_argument("--leave-rounds", type=int, default=2, help="local rounds of the departing region's own line")
    ap.add_argument("--canaries", type=int, default=0, help="canary users planted in the region (0: none)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = ap.parse_args()
    engine = engine_for(args.engine)
    if args.engine == "simulation":
        from fedrec.flower.runtime import shared_runtime
        with shared_runtime():
            summary = study(args.out, args.overrides, args.region, args.recovery, engine, args.floor_seeds,
                            args.leave_rounds, args.canaries)
    else:
        summary = study(args.out, args.overrides, args.region, args.recovery, engine, args.floor_seeds,
                        args.leave_rounds, args.canaries)
    (args.out / "divestment_study.json").write_text(json.dumps(summary, indent=1))
    plot_divestment(summary).savefig(args.out / "divestment_study.png", dpi=120)
    print_tables(summary)
    print(f"\nwritten: {args.out / 'divestment_study.json'}, {args.out / 'divestment_study.png'}")


if __name__ == "__main__":
    main()
