"""What one round of a statistics model (`model=ease` or `model=ials`) costs each party, next to one MF round:
time, peak memory, bytes on the wire.

Each step runs in a fresh process, so its peak RSS (VmHWM, which execve resets; not `ru_maxrss`, which a
spawned child inherits from its parent's high-water mark) is its own (imports and the silo's data
included; the RSS before the step is printed too):
- silo statistics (`fedrec.statistics`), 1 torch thread as a ClientApp (`client-threads` 1): EASE's XᵀX of
  the silo's training matrix; iALS's user solve from the item factors, then its per-item sums;
- coordinator: receive (load) every silo's statistics, sum in float64 and solve (torch's default threads);
- silo evaluation of the solved model on the largest silo (full ranking; iALS solves its users first), 1 thread;
- for comparison, one MF round of the same silo (one local epoch, `fedrec`'s defaults) and its evaluation
  (user re-fit + full ranking), 1 thread. The MF coordinator's FedAvg of a few kB per silo is negligible.

Usage: python benchmarks/statistics_cost.py --ml100k /tmp/fedrec-ml-100k [--model ials --dim 64]
       python benchmarks/statistics_cost.py --items 20000 --users 20000 --regions 3 --skip-mf
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

LAM = 300.0
IALS_KWARGS = {"alpha0": 0.3, "lam": 0.01, "nu": 1.0}


def spec_of(model: str, dim: int) -> Any:
    from fedrec.models import ModelSpec

    return ModelSpec("ease", kwargs={"lam": LAM}) if model == "ease" else ModelSpec("ials", dim, IALS_KWARGS)


def initial(model: str, dim: int, n_items: int) -> dict[str, np.ndarray]:
    from fedrec.training import initial_global_arrays

    return initial_global_arrays(spec_of(model, dim), n_items=n_items, seed=0)


def _peak_mib() -> float:
    """This process's peak resident set (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def _child(step: Callable[..., Any], args: tuple, threads: int | None, q: Any) -> None:
    import torch

    import fedrec.silo.round
    import fedrec.statistics  # noqa: F401  (imports are not the step's time)

    if threads:
        torch.set_num_threads(threads)
    before = _rss_mib()
    t = time.perf_counter()
    extra = step(*args)
    q.put((time.perf_counter() - t, before, _peak_mib(), extra))


def run(name: str, step: Callable[..., Any], *args: Any, threads: int | None = 1) -> Any:
    """Run `step(*args)` in a fresh process; print its time and memory; return what it returned."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(step, args, threads, q))
    p.start()
    seconds, before, peak, extra = q.get()
    p.join()
    print(f"{name:<34} {seconds:8.2f} s   RSS before {before:7.0f} MiB   peak {peak:7.0f} MiB   {extra or ''}")
    return extra


def silo_statistics(world: Path, region: str, out: Path, model: str, dim: int) -> str:
    from fedrec.data.split import SiloData
    from fedrec.statistics import statistics_family

    silo = SiloData.load(world / f"silo_{region}.npz")
    spec = spec_of(model, dim)
    stats = statistics_family(spec).local_statistics(silo, initial(model, dim, silo.n_items), spec)
    np.savez(out / f"stats_{region}.npz", **stats)
    return f"reply {sum(v.nbytes for v in stats.values()) / 2**20:.1f} MiB"


def coordinator(world: Path, regions: list[str], out: Path, model: str, dim: int) -> str:
    from fedrec.statistics import statistics_family, sum_statistics

    spec = spec_of(model, dim)
    family = statistics_family(spec)
    parts = (dict(np.load(out / f"stats_{r}.npz")) for r in regions)
    if model == "ials":  # the screen's check is part of the coordinator's round for iALS (eigenvalues)
        parts = (p for p in parts if family.check(p, spec) is None)
    summed = sum_statistics(parts)
    n_items = len(summed["stat.item_users"]) if model == "ials" else summed["stat.gram"].shape[0]
    solved = family.solve(summed, initial(model, dim, n_items), spec, n_items)
    np.savez(out / "solved.npz", **solved)
    return f"global model {sum(v.nbytes for v in solved.values()) / 2**20:.1f} MiB (sent to every silo, twice a round)"


def silo_evaluation(world: Path, region: str, out: Path, model: str, dim: int) -> str:
    from fedrec.data.split import SiloData
    from fedrec.models import ModelSpec
    from fedrec.silo.round import evaluate_round
    from fedrec.training import TrainConfig

    silo = SiloData.load(world / f"silo_{region}.npz")
    spec = spec_of(model, dim) if model != "mf" else ModelSpec()
    arrays = dict(np.load(out / ("mf.npz" if model == "mf" else "solved.npz")))
    ev = evaluate_round(silo, spec, arrays, None, TrainConfig(), seed=0)
    return f"ndcg@20 {ev.means()['ndcg@20']:.4f} on {ev.n_users} users"


def mf_round(world: Path, region: str, out: Path) -> str:
    from fedrec.data.split import SiloData
    from fedrec.models import ModelSpec
    from fedrec.silo.round import train_round
    from fedrec.training import TrainConfig, initial_global_arrays

    silo = SiloData.load(world / f"silo_{region}.npz")
    init = initial_global_arrays(ModelSpec(), n_items=silo.n_items, seed=0)
    done = train_round(silo, ModelSpec(), init, None, TrainConfig(), seed=0)
    np.savez(out / "mf.npz", **done.global_after)
    return f"reply {sum(v.nbytes for v in done.global_after.values()) / 2**20:.2f} MiB"


def prepare(args: argparse.Namespace, out: Path) -> tuple[Path, list[str], str]:
    from fedrec.data.registry import load_dataset
    from fedrec.data.split import SplitConfig
    from fedrec.world import prepare_world

    if args.ml100k:
        data = load_dataset("movielens", {"variant": "100k", "path": args.ml100k})
    else:
        data = load_dataset("synthetic", {"n_users": args.users, "n_items": args.items, "region_only_items": 0,
                                          "region_sizes": [1.0] * args.regions, "seed": 0})
    world = prepare_world(data, SplitConfig(), out / "world")
    largest = max(world.regions, key=lambda r: world.silos[r].n_users)
    sizes = {r: (s.n_users, len(s.train[0])) for r, s in world.silos.items()}
    print(f"catalog {world.n_items} items; silos (users, train interactions): {sizes}; largest {largest}")
    return world.data_dir, list(world.regions), largest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ml100k", help="a GroupLens ml-100k directory")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument("--skip-mf", action="store_true")
    ap.add_argument("--model", choices=["ease", "ials"], default="ease")
    ap.add_argument("--dim", type=int, default=64, help="iALS factors")
    args = ap.parse_args()
    what = f"λ={LAM:g}" if args.model == "ease" else f"dim={args.dim} {IALS_KWARGS}"
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python "
          f"{platform.python_version()}; model={args.model} {what}")
    out = Path(tempfile.mkdtemp(prefix="fedrec-statistics-cost-"))
    world, regions, largest = prepare(args, out)
    for r in regions:
        run(f"silo statistics ({r})", silo_statistics, world, r, out, args.model, args.dim)
    run("coordinator: sum + solve", coordinator, world, regions, out, args.model, args.dim, threads=None)
    run(f"silo evaluation, {args.model} ({largest})", silo_evaluation, world, largest, out, args.model, args.dim)
    if not args.skip_mf:
        run(f"MF round, 1 epoch ({largest})", mf_round, world, largest, out)
        run(f"silo evaluation, MF ({largest})", silo_evaluation, world, largest, out, "mf", 0)


if __name__ == "__main__":
    main()
