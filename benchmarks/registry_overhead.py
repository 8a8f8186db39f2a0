"""Registry overhead per round: time and bytes of registering a global model, next to the round's own time.

Runs the real federation (default synthetic world unless overridden, 5 rounds, evaluation only at the
end) and reads each round's wall time from its history; then, in the same process, registers the run's
final global model 20 times as a chain of distinct versions (a tiny perturbation per version, as rounds
differ) in a fresh registry, with fsyncs, and reports the median time to name a version (before the silos
review it) and to add it, the bytes per version, and
the ratio to the median round time. (The coordinator's own adds are inside those round times already.)

Usage: python benchmarks/registry_overhead.py [-- HYDRA OVERRIDES]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedrec.commands.run import conf_dir
from fedrec.config import experiment_from_dict
from fedrec.experiment import run_experiment
from fedrec.model_io import load_global_model
from fedrec.versions import ModelRegistry, describe_version


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()}"
          f" overrides={args.overrides}")
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        cfg = compose("config", overrides=["federation.rounds=5", "federation.eval_every=5", "bounds=[]",
                                           *args.overrides])
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    exp = experiment_from_dict({k: v for k, v in raw.items() if k not in ("progress", "experiment", "hydra")})
    out = Path(tempfile.mkdtemp(prefix="fedrec-reg-"))
    run_experiment(exp, out, log=lambda *_: None)
    history = json.loads((out / "federated_history.json").read_text())
    round_times = [r["round_time_s"] for r in history["rounds"]]
    # rounds are recorded only when evaluated; use the unevaluated ones' times from the wall clock instead
    per_round = history["wall_time_s"] / exp.federation.rounds
    arrays, spec, _ = load_global_model(out / "global_model.safetensors")

    registry = ModelRegistry(Path(tempfile.mkdtemp(prefix="fedrec-reg-bench-")))
    parent, times, naming = None, [], []
    for i in range(20):
        bumped = {k: v + 1e-6 * (i + 1) if v.dtype.kind == "f" else v for k, v in arrays.items()}
        t = time.perf_counter()  # the coordinator names each version before the silos review it ...
        describe_version(bumped, spec=spec, parent=parent, round=i + 1, contributors=["a", "b"], strategy="fedavg",
                         config_hash="x")
        naming.append(time.perf_counter() - t)
        t = time.perf_counter()  # ... and registers it after their evaluation
        version = registry.add(bumped, spec=spec, parent=parent, round=i + 1, contributors=["a", "b"],
                               strategy="fedavg", config_hash="x")
        times.append(time.perf_counter() - t)
        parent = version.id
    version_dir = registry.root / "versions" / parent
    n_bytes = sum(p.stat().st_size for p in version_dir.iterdir())
    add = statistics.median(times) + statistics.median(naming)
    print(f"model: {sum(v.size for v in arrays.values()):,} parameters; version on disk {n_bytes / 1e3:.0f} kB "
          f"(weights + manifest)")
    print(f"registry add: median {statistics.median(times) * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max "
          f"{max(times) * 1e3:.1f}) over 20 versions; naming a version first: median "
          f"{statistics.median(naming) * 1e3:.1f} ms")
    print(f"federated round: {per_round:.2f} s on average over {exp.federation.rounds} rounds (incl. start-up and "
          f"the final evaluation; evaluated rounds {', '.join(f'{x:.2f}' for x in round_times)} s)")
    print(f"overhead: {add / per_round * 100:.2f}% of a round's time")


if __name__ == "__main__":
    main()
