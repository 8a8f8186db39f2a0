"""Tune iALS (`model=ials`) on VALIDATION, then report the chosen setting's TEST figures.

Federated iALS is centralized iALS on the pooled data (the silos' per-item statistics are sums over users;
`tests/test_ials.py` holds the equality), so a setting's federated validation score is its centralized one:
this script solves the pooled sweeps in process (`fedrec.bounds.centralized_curve`, the federation's own
functions) and reads validation NDCG@20 after several sweep counts (= federation rounds). It chooses the best
and only then touches the test split: the chosen setting's centralized (= federated) and local-only test
NDCG@20 per region next to popularity. Report the federation from `fedrec` itself with the chosen values.

Usage:
  python simulations/tune_ials.py -- experiment=ml100k dataset.path=/tmp/fedrec-ml-100k
  python simulations/tune_ials.py --dims 64 128 --rounds 4 8 16 --              # the default synthetic world
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from dataclasses import replace
from datetime import UTC, datetime

import torch
from tune_mf import build

from fedrec.bounds import centralized_curve, local_only_curve, popularity
from fedrec.evaluation import pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--alpha0", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--lam", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    ap.add_argument("--nu", type=float, nargs="+", default=[1.0])
    ap.add_argument("--rounds", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--no-test", action="store_true", help="validation table only")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {platform.machine()} python {platform.python_version()} "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; overrides={args.overrides}")
    exp, silos = build(["model=ials", *args.overrides])
    print(f"world: {len(silos)} silos, {next(iter(silos.values())).n_items} items, "
          f"{sum(s.n_users for s in silos.values())} users", flush=True)

    head = "".join(f"{f'R={r}':>9}" for r in args.rounds)
    print(f"\n{'dim':>5}{'alpha0':>8}{'lam':>8}{'nu':>5}{head}  seconds")
    scores = []
    for dim, a0, lam, nu in itertools.product(args.dims, args.alpha0, args.lam, args.nu):
        spec = replace(exp.model, dim=dim, kwargs={"alpha0": a0, "lam": lam, "nu": nu})
        start = time.perf_counter()
        curve = centralized_curve(silos, spec, exp.train, epochs=args.rounds, seed=exp.seed, split="valid")
        secs = time.perf_counter() - start
        row = [pool(curve[r])[1]["ndcg@20"] for r in args.rounds]
        scores += [(v, spec, r) for v, r in zip(row, args.rounds, strict=True)]
        print(f"{dim:>5}{a0:>8g}{lam:>8g}{nu:>5g}" + "".join(f"{v:>9.4f}" for v in row) + f"{secs:>9.1f}", flush=True)
    best, spec, rounds = max(scores, key=lambda t: t[0])
    print(f"\nchosen (best validation NDCG@20, {best:.4f}): dim={spec.dim} {spec.kwargs} rounds={rounds}")
    if args.no_test:
        return
    test = {"federated=centralized": pool(centralized_curve(silos, spec, exp.train, epochs=[rounds],
                                                            seed=exp.seed)[rounds]),
            "local_only": pool({r: local_only_curve(s, spec, exp.train, epochs=[rounds], seed=exp.seed)[rounds]
                                for r, s in silos.items()}),
            "popularity": pool({r: popularity(s) for r, s in silos.items()})}
    print(f"\nTEST NDCG@20 of the chosen setting ({rounds} rounds)")
    print(f"{'region':<12}" + "".join(f"{m:>23}" for m in test))
    for r in sorted(silos):
        print(f"{r:<12}" + "".join(f"{t[0][r]['ndcg@20']:>23.4f}" for t in test.values()))
    print(f"{'overall':<12}" + "".join(f"{t[1]['ndcg@20']:>23.4f}" for t in test.values()))


if __name__ == "__main__":
    main()
