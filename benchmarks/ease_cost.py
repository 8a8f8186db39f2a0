"""What one `model=ease` round costs each party, next to one MF round: time, peak memory, bytes on the wire.

Each step runs in a fresh process, so its peak RSS (`ru_maxrss`) is its own (imports and the silo's data
included; the RSS before the step is printed too):
- silo statistics: XᵀX of the largest silo's training matrix (`fedrec.statistics`), 1 torch thread as a
  ClientApp (`client-threads` 1);
- coordinator: receive (load) every silo's Gram, sum in float64 and solve B (torch's default threads);
- silo evaluation of B on the largest silo (its users' histories x B, full ranking), 1 thread;
- for comparison, one MF round of the same silo (one local epoch, `fedrec`'s defaults) and its evaluation
  (user re-fit + full ranking), 1 thread. The MF coordinator's FedAvg of a few kB per silo is negligible.

Usage: python benchmarks/ease_cost.py --ml100k /tmp/fedrec-ml-100k
       python benchmarks/ease_cost.py --items 20000 --users 20000 --regions 3 --skip-mf
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
    q.put((time.perf_counter() - t, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, extra))


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


def silo_statistics(world: Path, region: str, out: Path) -> str:
    from fedrec.data.split import SiloData
    from fedrec.models import ModelSpec
    from fedrec.statistics import statistics_family

    silo = SiloData.load(world / f"silo_{region}.npz")
    spec = ModelSpec("ease", kwargs={"lam": LAM})
    stats = statistics_family(spec).local_statistics(silo, {}, spec)
    np.save(out / f"gram_{region}.npy", stats["stat.gram"])
    return f"reply {stats['stat.gram'].nbytes / 2**20:.1f} MiB"


def coordinator(world: Path, regions: list[str], out: Path) -> str:
    from fedrec.models import ModelSpec
    from fedrec.statistics import statistics_family, sum_statistics

    spec = ModelSpec("ease", kwargs={"lam": LAM})
    summed = sum_statistics({"stat.gram": np.load(out / f"gram_{r}.npy")} for r in regions)
    n_items = summed["stat.gram"].shape[0]
    b = statistics_family(spec).solve(summed, {}, spec, n_items)["item_item.weight"]
    np.save(out / "b.npy", b)
    return f"B {b.nbytes / 2**20:.1f} MiB (sent to every silo, twice a round)"


def silo_evaluation(world: Path, region: str, out: Path, model: str) -> str:
    from fedrec.data.split import SiloData
    from fedrec.models import ModelSpec
    from fedrec.silo.round import evaluate_round
    from fedrec.training import TrainConfig

    silo = SiloData.load(world / f"silo_{region}.npz")
    spec = ModelSpec("ease", kwargs={"lam": LAM}) if model == "ease" else ModelSpec()
    arrays = {"item_item.weight": np.load(out / "b.npy")} if model == "ease" else dict(np.load(out / "mf.npz"))
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
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python "
          f"{platform.python_version()}; λ={LAM:g}")
    out = Path(tempfile.mkdtemp(prefix="fedrec-ease-cost-"))
    world, regions, largest = prepare(args, out)
    for r in regions:
        run(f"silo statistics ({r})", silo_statistics, world, r, out)
    run("coordinator: sum + solve", coordinator, world, regions, out, threads=None)
    run(f"silo evaluation, EASE ({largest})", silo_evaluation, world, largest, out, "ease")
    if not args.skip_mf:
        run(f"MF round, 1 epoch ({largest})", mf_round, world, largest, out)
        run(f"silo evaluation, MF ({largest})", silo_evaluation, world, largest, out, "mf")


if __name__ == "__main__":
    main()
