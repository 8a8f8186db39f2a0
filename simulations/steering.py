"""Can one jurisdiction steer another's feed? The targeted boost of issue 16, measured per honest region.

Runs the same experiment clean, then with one region's node (the attacker) adding a boost to the global item
bias of one obscure item in each of its training replies, sized at each multiple of its honest update norm
(`fedrec.flower.hostile_mods.targeted_boost`). "near" is just under the coordinator screen's limit
(`norm_factor` × the round's median update norm), sized from the clean run's recorded norms
(`screen_limit_multiple`, times `--near-margin`). Then prints, per honest region, the share of its test users
who get the target in their top 20 (`fedrec.run_exposure`: train and valid items excluded, as the evaluation
ranks) and its NDCG@20, plus the target's rank by global item bias and the rounds the screen rejected the
attacker. Every run is kept under --out (`OUT/clean`, `OUT/boost-M`) with `steering.json`.

The target: the item at rank `--target-rank` (default 0.886 × catalog size: 1,490 of ML-100K's 1,682) by global
item bias in the clean run, or `--target ITEM`. The attacker: `--attacker REGION...` (several collude, each
boosting its own replies), by default the region with the most training interactions.

Usage:
  python simulations/steering.py --out /tmp/steering -- experiment=ml100k dataset.path=/tmp/fedrec-ml-100k \
      federation.rounds=20
  python simulations/steering.py --out /tmp/steering-quick --multiples 5 -- experiment=quick   # a fast smoke
`--engine inprocess` (default) runs the real ServerApp and ClientApps on the tests' in-process grid
(tests/fakegrid.py, no Ray); `--engine simulation` on Flower's simulation engine (Ray: only one Ray cluster
at a time on a small machine). `bounds=[]` and `baselines=[]` are added unless given.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines import engine_for

from fedrec.commands.run import compose_experiment
from fedrec.experiment import run_experiment
from fedrec.exposure import item_at_bias_rank, item_bias_rank
from fedrec.flower.egress_recorder import Mod
from fedrec.flower.hostile_mods import (
    check_boostable,
    read_norm_log,
    scaled_noise,
    screen_limit_multiple,
    sign_flip,
    targeted_boost,
    update_norm_log,
)
from fedrec.model_io import load_global_model
from fedrec.run_exposure import exposure_from_run

NORMS = "update_norms.jsonl"


def run(overrides: list[str], out: Path, engine: str, mods: list[Mod], reuse: bool) -> dict[str, Any]:
    """One experiment under `out` (a fresh directory unless `reuse` finds its results.json)."""
    if reuse and (out / "results.json").exists():
        return dict(json.loads((out / "results.json").read_text()))
    if out.exists():
        shutil.rmtree(out)
    cfg = compose_experiment(overrides)
    print(f"  running {out.name} ...", flush=True)
    return run_experiment(cfg, out, log=lambda *_: None, engine=engine_for(engine, [update_norm_log(out / NORMS),
                                                                                      *mods]))


def summary(out: Path, results: dict[str, Any], target: int, attackers: list[str]) -> dict[str, Any]:
    """What a run did to the target and to each region: exposure, NDCG@20, the target's bias rank, rejections."""
    arrays, _, _ = load_global_model(out / "global_model.safetensors")
    regions = exposure_from_run(out, target, served=True)  # what each region serves (its guard applied)
    unguarded = exposure_from_run(out, target)  # the final global model
    rejected = [e["round"] for e in results["round_log"] if set(attackers) & set(e.get("rejected", {}))]
    return {"target_bias_rank": item_bias_rank(arrays, target), "n_items": len(arrays["item_bias.weight"]),
            "rejected_rounds": rejected, "rounds": len(results["round_log"]),
            "regions": {r: {"exposure": e.exposure.fraction, "exposed": e.exposure.n_exposed,
                            "test_users": e.exposure.n_users, "ndcg@20": e.ndcg,
                            "global_exposure": unguarded[r].exposure.fraction, "global_ndcg@20": unguarded[r].ndcg}
                        for r, e in regions.items()}}


def honest_mean(s: dict[str, Any], honest: list[str], key: str) -> float:
    """User-weighted mean of `key` over the honest regions."""
    users = sum(s["regions"][r]["test_users"] for r in honest)
    return sum(s["regions"][r][key] * s["regions"][r]["test_users"] for r in honest) / users


def print_table(runs: dict[str, dict[str, Any]], honest: list[str]) -> None:
    names = list(runs)
    print("\nper honest region, on the model it serves: share of its test users with the target in their top 20 | "
          "NDCG@20")
    print(f"{'region':<11}{'users':>6}" + "".join(f"{n:>20}" for n in names))
    for r in honest:
        cells = "".join(f"{runs[n]['regions'][r]['exposure']:>10.1%}{runs[n]['regions'][r]['ndcg@20']:>10.4f}"
                        for n in names)
        print(f"{r:<11}{runs[names[0]]['regions'][r]['test_users']:>6}{cells}")
    cells = "".join(f"{honest_mean(runs[n], honest, 'exposure'):>10.1%}{honest_mean(runs[n], honest, 'ndcg@20'):>10.4f}"
                    for n in names)
    print(f"{'honest':<11}{sum(runs[names[0]]['regions'][r]['test_users'] for r in honest):>6}{cells}")
    cells = "".join(f"{honest_mean(runs[n], honest, 'global_exposure'):>10.1%}"
                    f"{honest_mean(runs[n], honest, 'global_ndcg@20'):>10.4f}" for n in names)
    print(f"{'(global)':<11}{'':>6}{cells}")
    print(f"{'bias rank':<17}" + "".join(f"{str(s['target_bias_rank']) + ' of ' + str(s['n_items']):>20}"
                                         for s in runs.values()))
    print(f"{'rejected':<17}" + "".join(f"{str(len(s['rejected_rounds'])) + ' of ' + str(s['rounds']):>20}"
                                        for s in runs.values()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--multiples", nargs="+", default=["2", "5", "near"],
                    help="multiples of the attacker's honest update norm; 'near': just under the screen's limit")
    ap.add_argument("--near-margin", type=float, default=0.9, help="'near' = this × the clean run's screen limit")
    ap.add_argument("--attacker", nargs="+", help="region(s) boosting the target (default: the largest region)")
    ap.add_argument("--target", type=int, help="the item to boost (default: --target-rank in the clean run)")
    ap.add_argument("--target-rank", type=int, help="rank by global item bias in the clean run (default 0.886 × "
                                                    "catalog size)")
    ap.add_argument("--row-share", type=float, default=0.0, help="share of the boost put on the item's row")
    ap.add_argument("--boost-cap", type=float, default=None,
                    help="the boosted bias never exceeds this value (under SecAgg+: inside its clipping range, 8)")
    ap.add_argument("--sabotage", nargs="*", default=[], help="untargeted attacks by the attacker(s): 'flip' (sign "
                                                              "flip) and/or 'noise:M' (Gaussian noise at M x the norm)")
    ap.add_argument("--engine", choices=["inprocess", "simulation"], default="inprocess")
    ap.add_argument("--reuse", action="store_true", help="reuse runs already under --out")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    overrides = list(args.overrides)
    for key in ("bounds", "baselines"):
        if not any(o.lstrip("+").startswith(f"{key}=") for o in overrides):
            overrides.append(f"{key}=[]")
    cfg = compose_experiment(overrides)
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python "
          f"{platform.python_version()}; engine={args.engine} overrides={overrides}", flush=True)

    clean = run(overrides, args.out / "clean", args.engine, [], args.reuse)
    arrays, spec, _ = load_global_model(args.out / "clean" / "global_model.safetensors")
    n_items = len(arrays["item_bias.weight"]) if "item_bias.weight" in arrays else 0
    check_boostable(spec, n_items or int(clean["dataset"]["n_items"]))
    target = args.target if args.target is not None else item_at_bias_rank(
        arrays, args.target_rank or round(0.886 * n_items))
    facts = clean["dataset"]["regions"]
    attackers = args.attacker or [max(facts, key=lambda r: facts[r]["train_interactions"])]
    honest = [r for r in sorted(facts) if r not in attackers]
    norms = read_norm_log(args.out / "clean" / NORMS)
    limit = screen_limit_multiple(norms, attackers, norm_factor=cfg.federation.update_norm_factor)
    print(f"target item {target} (clean bias rank {item_bias_rank(arrays, target)} of {n_items}); attacker(s) "
          f"{attackers}; screen limit from the clean run's norms: {limit:.2f}x the attacker's honest norm",
          flush=True)

    runs = {"clean": summary(args.out / "clean", clean, target, attackers)}
    for m in args.multiples:
        if m == "near" and math.isinf(limit):
            print("  near: the attackers set the round's median themselves, the screen has no limit: skipped")
            continue
        multiple = round(args.near_margin * limit, 2) if m == "near" else float(m)
        name = f"boost-{multiple:g}x"
        res = run(overrides, args.out / name, args.engine,
                  [targeted_boost(attackers, target, multiple, row_share=args.row_share, cap=args.boost_cap)],
                  args.reuse)
        runs[name] = summary(args.out / name, res, target, attackers)
    for attack in args.sabotage:
        mod = (sign_flip(attackers) if attack == "flip" else scaled_noise(attackers, float(attack.split(":")[1])))
        name = attack.replace(":", "-") + ("x" if attack != "flip" else "")
        res = run(overrides, args.out / name, args.engine, [mod], args.reuse)
        runs[name] = summary(args.out / name, res, target, attackers)
    print_table(runs, honest)
    (args.out / "steering.json").write_text(json.dumps(
        {"overrides": overrides, "engine": args.engine, "target": target, "attackers": attackers,
         "screen_limit_multiple": limit, "runs": runs}, indent=1))
    print(f"wrote {args.out / 'steering.json'}")


if __name__ == "__main__":
    main()
