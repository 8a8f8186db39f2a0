"""Adopt or fork: what each region serves under each adoption policy, on a world with one distinct region.

Composes the real Hydra config (default: `experiment=distinct_region`, where latam's tastes differ 4x more
than the others') and runs `run_experiment` (real Flower simulation) once per policy, the policy applied to
every region: `adopt: always`, `adopt: if_better`, `fork` from round R (still contributing its updates
to the federation), next to the local-only bound of the same run. Prints NDCG@20 of the served model per
region at the end, its mean over the last 3 evaluated rounds, and the served curve over rounds.

Usage:
  python simulations/adoption_policies.py
  python simulations/adoption_policies.py --fork-round 3 -- experiment=distinct_region federation.rounds=10
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedrec.commands.run import conf_dir
from fedrec.config import experiment_from_dict
from fedrec.experiment import run_experiment
from fedrec.plots import plot_adoption


def run(overrides: list[str], out: Path) -> dict[str, Any]:
    """One experiment from the real config."""
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=overrides)
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    exp = experiment_from_dict({k: v for k, v in raw.items() if k not in ("progress", "experiment", "hydra")})
    return run_experiment(exp, out, log=lambda *_: None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fork-round", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write summaries (JSON) and adoption plots here")
    ap.add_argument("overrides", nargs="*", default=["experiment=distinct_region"])
    args = ap.parse_args()
    overrides = args.overrides or ["experiment=distinct_region"]
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()}"
          f" overrides={overrides}", flush=True)
    policies = {"always": ["+adoption.default.adopt=always"],
                "if_better": ["+adoption.default.adopt=if_better"],
                f"fork@{args.fork_round}": [f"+adoption.default.fork={args.fork_round}"]}
    summaries: dict[str, Any] = {}
    local_only = None
    for name, extra in policies.items():
        out = Path(tempfile.mkdtemp(prefix=f"fedrec-adopt-{name}-"))
        bounds = [] if local_only is not None else ["bounds=[local_only]"]
        res = run([*overrides, *extra, *bounds], out)
        served = {r: m["ndcg@20"] for r, m in res["final"]["served"]["per_region"].items()}
        glob = {r: m["ndcg@20"] for r, m in res["final"]["federated"]["per_region"].items()}
        if local_only is None:
            local_only = {r: m["ndcg@20"] for r, m in res["final"]["local_only"]["per_region"].items()}
        curve = {r: [round(e["served"][r]["ndcg@20"], 4) for e in res["rounds"]] for r in served}
        kept = {r: sum(not d["adopted"] for d in a["decisions"] if "fork" not in d["reason"])
                for r, a in res["adoption"].items()}
        print(f"{name:>10}: served {fmt(served)} overall {res['final']['served']['overall']['ndcg@20']:.4f}"
              f"  (global {fmt(glob)})  wall {res['wall_time_s']:.0f}s", flush=True)
        last3 = {r: sum(c[-3:]) / len(c[-3:]) for r, c in curve.items()}
        print(f"            mean of the last 3 evaluated rounds (round-to-round noise is ~0.01-0.03): {fmt(last3)}",
              flush=True)
        print(f"            kept-not-adopted per region {kept}; served over rounds {curve}", flush=True)
        summaries[name] = {"served": served, "global": glob, "curve": curve, "kept": kept,
                           "wall_time_s": res["wall_time_s"]}
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            plot_adoption(res).savefig(args.out / f"adoption_{name}.png", dpi=110)
    print(f"local-only: {fmt(local_only or {})}", flush=True)
    if args.out:
        (args.out / "adoption_policies.json").write_text(json.dumps({"policies": summaries,
                                                                      "local_only": local_only}, indent=1))


def fmt(values: dict[str, float]) -> str:
    return " ".join(f"{r} {v:.4f}" for r, v in sorted(values.items()))


if __name__ == "__main__":
    main()
