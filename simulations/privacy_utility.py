"""Privacy-utility of federated training: NDCG@20 at each silo's ε budget, next to the non-private run.

For each ε in --epsilons (and `inf` = privacy=none, the non-private reference, run with its bounds and
baselines), composes the real Hydra config with the given overrides plus `privacy=user_dp privacy.epsilon=ε`,
runs `run_experiment` (real Flower simulation) and prints: overall and per-region NDCG@20 of the DP global
model and of what each region serves (with an adoption policy that adapts), the ratio to the non-private
federated run, and each silo's accountant ε (at its δ) next to the target, with σ, q, steps, C. `--out DIR`
writes the per-region table (`fedrec.privacy_utility.utility_rows`), the runs and the privacy-utility figure.

Usage:
  python simulations/privacy_utility.py -- experiment=synthetic_dp
  python simulations/privacy_utility.py --epsilons inf 1 2 4 8 16 -- experiment=ml100k dataset.path=/tmp/ml-100k \
      train.loss=softmax federation.rounds=30 model.dim=32 train.batch_size=512 train.weight_decay=1e-5
  (the DP step implements sampled softmax: experiment=ml100k's own full-softmax recipe is refused under DP;
  these overrides are the recipe the README's DP figures were measured with)
"""

from __future__ import annotations

import argparse
import json
import math
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
from fedrec.privacy_utility import plot_privacy_utility, utility_rows, write_rows


def run(overrides: list[str]) -> dict[str, Any]:
    """One experiment from the real config, in a fresh output dir (fresh silo ledgers)."""
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=overrides)
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    exp = experiment_from_dict({k: v for k, v in raw.items() if k not in ("progress", "experiment", "hydra")})
    return run_experiment(exp, Path(tempfile.mkdtemp(prefix="fedrec-pu-")), log=lambda *_: None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epsilons", nargs="+", default=["inf", "1", "2", "4", "8", "16"])
    ap.add_argument("--out", type=Path, help="write rows.csv (per region, ε), runs.json, privacy_utility.png here")
    ap.add_argument("--rounds", nargs="*", default=[], metavar="EPS=R",
                    help="federation.rounds per ε (e.g. inf=8 2=1 8=3: each ε's own best number of releases)")
    ap.add_argument("--from-results", nargs="*", default=[], metavar="EPS=PATH",
                    help="add a finished run's results.json (or its directory) at that ε instead of running it "
                         "(e.g. inf=outputs/nonprivate: the non-private reference of an earlier sweep)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rounds = {float(k): int(v) for k, v in (item.split("=") for item in args.rounds)}
    finished = {}
    for item in args.from_results:
        eps_text, _, where = item.partition("=")
        path = Path(where) / "results.json" if Path(where).is_dir() else Path(where)
        if not path.is_file():
            ap.error(f"--from-results {item}: no results.json at {path}")
        finished[eps_text] = json.loads(path.read_text())
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()}"
          f" overrides={args.overrides}", flush=True)
    reference = None
    summaries, rows = [], []
    done = {float(e) for e in finished}
    for eps in [*finished, *(e for e in args.epsilons if float(e) not in done)]:
        private = not math.isinf(float(eps))
        extra = ["privacy=user_dp", f"privacy.epsilon={eps}", "bounds=[]", "baselines=[]"] if private else []
        if float(eps) in rounds:
            extra += [f"federation.rounds={rounds[float(eps)]}", f"federation.eval_every={rounds[float(eps)]}"]
        res = finished[eps] if eps in finished else run([*args.overrides, *extra])
        rows += utility_rows(res, float(eps))
        fed = res["final"]["federated"]
        ndcg = fed["overall"]["ndcg@20"]
        if not private:
            reference = ndcg
            bounds = {m: round(b["overall"]["ndcg@20"], 4) for m, b in res["final"].items()
                      if m != "federated" and isinstance(b, dict) and "overall" in b}
        ratio = f"{ndcg / reference:.3f}x non-DP" if reference else ""
        per_region = {r: round(m["ndcg@20"], 4) for r, m in fed["per_region"].items()}
        print(f"eps {eps:>4}: NDCG@20 {ndcg:.4f} {ratio}  per region {per_region}  wall {res['wall_time_s']:.0f}s",
              flush=True)
        if "served" in res["final"]:
            served = {r: round(m["ndcg@20"], 4) for r, m in res["final"]["served"]["per_region"].items()}
            print(f"          served {res['final']['served']['overall']['ndcg@20']:.4f}  per region {served}")
        if not private:
            print(f"          bounds {bounds}", flush=True)
        for region, p in res["privacy"].items():
            print(f"          {region}: accountant eps {p['epsilon']:.3f} (target {p['budget_epsilon']:g}, "
                  f"delta {p['delta']:g})  sigma {p['noise_multiplier']:.3f}  q {p['sample_rate']:g}  "
                  f"steps {int(p['steps'])}  C {p['clip_norm']:g}", flush=True)
        summaries.append({"epsilon": eps, "ndcg@20": ndcg, "per_region": per_region, "privacy": res["privacy"],
                          "wall_time_s": res["wall_time_s"], "timings": res.get("timings", {})})
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "runs.json").write_text(json.dumps(summaries, indent=1))
        write_rows(rows, args.out / "rows.csv")
        plot_privacy_utility(rows).savefig(args.out / "privacy_utility.png", dpi=120)
        print(f"wrote {args.out}/rows.csv, runs.json, privacy_utility.png")


if __name__ == "__main__":
    main()
