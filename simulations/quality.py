"""Quality figures of the foundation issue: federated vs centralized vs local-only, per region.

Composes the real Hydra config (`conf/`) with the given overrides, runs `run_experiment` for each seed and
prints, per run: overall NDCG@20 of each method, federated / centralized, and whether federated beats
local-only in every silo holding < 15% of users.

Usage:
  python simulations/quality.py                                   # synthetic default, seeds 0 and 1
  python simulations/quality.py --seeds 0 -- experiment=ml100k dataset.path=/tmp/ml-100k
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedrec.commands.run import conf_dir
from fedrec.config import experiment_from_dict
from fedrec.experiment import run_experiment


def summarize(res: dict) -> str:
    f = res["final"]
    ov = {m: f[m]["overall"]["ndcg@20"] for m in ("federated", "centralized", "local_only", "popularity")}
    users = {r: d["users"] for r, d in res["dataset"]["regions"].items()}
    total = sum(users.values())
    small = [r for r, n in users.items() if n < 0.15 * total]
    wins = {r: f["federated"]["per_region"][r]["ndcg@20"] > f["local_only"]["per_region"][r]["ndcg@20"]
            for r in small}
    return (f"fed {ov['federated']:.4f}  cent {ov['centralized']:.4f}  local {ov['local_only']:.4f}  "
            f"pop {ov['popularity']:.4f}  fed/cent {ov['federated'] / ov['centralized']:.3f}  "
            f"fed>local in small silos {sum(wins.values())}/{len(wins)} {sorted(r for r, w in wins.items() if not w)}"
            f"  wall {res['wall_time_s']:.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()}"
          f" overrides={args.overrides}")
    for seed in args.seeds:
        with initialize_config_dir(config_dir=conf_dir(), version_base=None):
            cfg = compose("config", overrides=[*args.overrides, f"seed={seed}"])
        raw = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(raw, dict)
        exp = experiment_from_dict({k: v for k, v in raw.items() if k not in ("progress", "experiment", "hydra")})
        res = run_experiment(exp, Path(tempfile.mkdtemp(prefix="fedrec-q-")), log=lambda *_: None)
        print(f"seed {seed}: {summarize(res)}", flush=True)


if __name__ == "__main__":
    main()
