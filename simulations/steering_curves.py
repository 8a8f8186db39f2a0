"""The exposure curve of issue 16: how far an attacker's norm budget carries a target, for each defence.

Reads the `steering.json` of several `simulations/steering.py` studies (one per defence or setting, the same
attacker and target), and draws, against the boost's multiple of the attacker's honest update norm, the share
of honest test users shown the target (top 20) on what their regions serve (solid) and on the global model
(dashed), and the honest users' NDCG@20 relative to each study's own clean run. Prints the same as a table.

Usage:
  python simulations/steering_curves.py --out curves.png "guard (default)=/tmp/st4-ml" "nnm=/tmp/st6-nnm"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def honest(run: dict[str, Any], attackers: list[str], key: str) -> float:
    """User-weighted mean of `key` over the regions that are not attacking."""
    regions = {r: v for r, v in run["regions"].items() if r not in attackers}
    users = sum(v["test_users"] for v in regions.values())
    return sum(v[key] * v["test_users"] for v in regions.values()) / users


def curve(study: dict[str, Any]) -> list[tuple[float, float, float, float]]:
    """(multiple, served exposure, global exposure, NDCG@20 / clean) for the clean run (multiple 0) and each boost."""
    runs, attackers = study["runs"], study["attackers"]
    clean = honest(runs["clean"], attackers, "ndcg@20")
    points = []
    for name, run in runs.items():
        if name != "clean" and not name.startswith("boost-"):
            continue  # sabotage runs have no norm budget on this axis
        multiple = 0.0 if name == "clean" else float(name.removeprefix("boost-").removesuffix("x"))
        points.append((multiple, honest(run, attackers, "exposure"), honest(run, attackers, "global_exposure"),
                       honest(run, attackers, "ndcg@20") / clean))
    return sorted(points)


def plot(studies: dict[str, dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    exposure, quality = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, (label, study) in enumerate(studies.items()):
        pts = curve(study)
        color = f"C{i}"
        xs = [p[0] for p in pts]
        exposure.plot(xs, [100 * p[1] for p in pts], "o-", color=color, label=f"{label}: served")
        exposure.plot(xs, [100 * p[2] for p in pts], "x--", color=color, label=f"{label}: global model")
        quality.plot(xs, [100 * (p[3] - 1) for p in pts], "o-", color=color, label=label)
    exposure.set(xlabel="boost, x the attacker's honest update norm (0: clean)",
                 ylabel="honest test users shown the target (%)")
    quality.set(xlabel="boost, x the attacker's honest update norm (0: clean)",
                ylabel="honest NDCG@20 vs the clean run (%)")
    quality.axhline(-2, color="grey", lw=0.8, ls=":")
    exposure.legend(fontsize="small")
    quality.legend(fontsize="small")
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    ap.add_argument("studies", nargs="+", help="LABEL=DIR, DIR holding a steering.py study's steering.json")
    args = ap.parse_args()
    studies: dict[str, dict[str, Any]] = {}
    for item in args.studies:
        label, sep, path = item.partition("=")
        source = Path(path) / "steering.json"
        if not sep or not source.is_file():
            sys.exit(f"steering_curves: {item!r} is not LABEL=DIR with DIR/steering.json")
        studies[label] = json.loads(source.read_text())
    print(f"{'study':<24}{'boost':>7}{'served':>9}{'global':>9}{'NDCG/clean':>12}")
    for label, study in studies.items():
        for multiple, served, glob, rel in curve(study):
            print(f"{label:<24}{multiple:>6g}x{served:>9.1%}{glob:>9.1%}{rel:>12.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(studies).savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
