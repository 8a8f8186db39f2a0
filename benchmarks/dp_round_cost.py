"""What user-level DP costs a round of iALS, paired in one process: DP release vs exact statistics.

For the largest silo of the world (the silo side of a round) it alternates `IalsStatistics.local_statistics`
(the exact per-item sums a non-private round sends) with `dp_ials.release` (bounded sums + CSPRNG noise: what
a private round sends), and for the coordinator it alternates the exact solve (per-item Cholesky on the
summed Grams, after screening every reply) with the DP one (a check of the declared noise, one eigendecomposition
of the users' Gram), each on every silo's statistics.
Medians of `--repeats` paired runs and their ratio; one torch thread for the silo (as a ClientApp runs),
torch's default for the coordinator. Bytes: what each silo sends per round.

Usage: python benchmarks/dp_round_cost.py [--repeats 5] -- experiment=sovereign_dp model.dim=32
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from fedrec.commands.run import compose_experiment
from fedrec.config import ExperimentConfig
from fedrec.data.registry import load_dataset
from fedrec.data.split import SiloData
from fedrec.privacy.noise import NoiseSource
from fedrec.statistics import statistics_family, sum_statistics
from fedrec.statistics.dp_ials import release
from fedrec.training import initial_global_arrays
from fedrec.world import prepare_world


def build(overrides: list[str]) -> tuple[ExperimentConfig, dict[str, SiloData]]:
    """The experiment composed from the real config and its world's silos (as `simulations/tune_mf.py` builds them)."""
    exp = compose_experiment(overrides)
    data = load_dataset(exp.dataset.name, exp.dataset.params)
    return exp, prepare_world(data, exp.split, Path(tempfile.mkdtemp(prefix="fedrec-tune-"))).silos


def paired(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median seconds of `a` and of `b`, run alternately `repeats` times each."""
    ta, tb = [], []
    for _ in range(repeats):
        for f, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            f()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--cap", type=int, default=16)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    exp, silos = build(["model=ials", *args.overrides])
    spec = replace(exp.model, kwargs={**exp.model.kwargs, "init": "random"})
    n_items = next(iter(silos.values())).n_items
    arrays = initial_global_arrays(spec, n_items=n_items, seed=0)
    exact, private = statistics_family(spec), statistics_family(spec, private=True)
    big = max(silos.values(), key=lambda s: s.n_users)
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()} "
          f"torch {torch.__version__}; {len(silos)} silos, {n_items} items, dim {spec.dim}; largest silo {big.region} "
          f"({big.n_users} users); {args.repeats} paired repeats; {args.overrides}")

    def dp_release(silo: Any) -> Any:
        return release(silo, arrays, spec, clip_norm=args.clip, max_per_user=args.cap, noise_multiplier=1.0,
                       noise=NoiseSource("secure"))

    torch.set_num_threads(1)
    t_exact, t_dp = paired(lambda: exact.local_statistics(big, arrays, spec), lambda: dp_release(big), args.repeats)
    torch.set_num_threads(torch.get_num_interop_threads())
    sent = {name: sum(v.nbytes for v in f(big).values())
            for name, f in (("exact", lambda s: exact.local_statistics(s, arrays, spec)), ("dp", dp_release))}
    print(f"silo ({big.region}): exact statistics {t_exact:.2f} s, DP release {t_dp:.2f} s: DP/exact "
          f"{t_dp / t_exact:.2f}x; sends {sent['exact'] / 2**20:.1f} MiB exact, {sent['dp'] / 2**20:.2f} MiB DP")
    parts_exact = [exact.local_statistics(s, arrays, spec) for s in silos.values()]
    parts_dp = [dp_release(s) for s in silos.values()]

    def coordinator(family: Any, parts: list[Any]) -> None:
        assert all(family.check(p, spec) is None for p in parts)
        family.solve(sum_statistics(parts), arrays, spec, n_items)

    c_exact, c_dp = paired(lambda: coordinator(exact, parts_exact), lambda: coordinator(private, parts_dp),
                           args.repeats)
    print(f"coordinator (screen every reply, sum, solve): exact {c_exact:.2f} s, DP {c_dp:.3f} s: DP/exact "
          f"{c_dp / c_exact:.3f}x")


if __name__ == "__main__":
    main()
