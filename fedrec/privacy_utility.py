"""Privacy-utility per region: what each region serves, and the DP global model, against each silo's ε budget.

`utility_rows` turns one run's `results.json` (at one ε, or `inf` for the non-private run) into tidy rows, one
per region (and `overall`), with every method the run measured: `served` (what the region serves after its
adoption review, e.g. the DP global model adapted to its own data), `federated` (the DP global model),
`own_line` (`adopt: adapt`: the region's own local-only line, the model it falls back to), `local_only`,
`centralized`, `popularity` and, when the run had baselines, the validation-picked best local and pooled simple
baselines (`local_baseline`, `pooled_baseline`).
`plot_privacy_utility` draws one panel per region: served and the DP global model against ε, with the
non-private federation, local-only and popularity as reference lines (`simulations/privacy_utility.py`
writes it with `--out`). `write_rows` / `read_rows` keep the table as CSV (`inf` for the non-private run, empty
for a method the run did not measure), so a measured sweep can be re-plotted without re-running it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from fedrec.plots import METHOD_STYLE

Row = dict[str, Any]
MEASURED = ("served", "federated", "own_line", "local_only", "centralized", "popularity", "local_baseline",
            "pooled_baseline")
LINE_STYLE: dict[str, dict[str, Any]] = {
    "served": {"color": "#ff7f0e", "marker": "o", "label": "served (DP global + own adaptation)"},
    "federated": {"color": "#1f77b4", "marker": "s", "label": "DP global model"},
    "nonprivate": {"color": "#1f77b4", "linestyle": "--", "label": "federated, no DP"},
    "local_only": {"color": METHOD_STYLE["local_only"]["color"], "linestyle": "-.", "label": "local-only (no DP)"},
    "local_baseline": {"color": "#7f7f7f", "linestyle": ":", "label": "best local baseline"},
    "popularity": {"color": METHOD_STYLE["popularity"]["color"], "linestyle": ":", "label": "popularity"},
}


def utility_rows(results: dict[str, Any], epsilon: float, metric: str = "ndcg@20") -> list[Row]:
    """One row per region and `overall`: every measured method's `metric` at this run's ε (inf: no DP)."""
    final = results["final"]
    regions = [*sorted(final["federated"]["per_region"]), "overall"]
    rows = []
    for region in regions:
        row: Row = {"epsilon": float(epsilon), "region": region}
        for method in MEASURED:
            block = final.get(method)
            cell = (block["overall"] if region == "overall" else block["per_region"].get(region, {})) if block else {}
            row[method] = float(cell.get(metric, math.nan))
        rows.append(row)
    return rows


def write_rows(rows: Iterable[Row], path: Path) -> Path:
    """The table as CSV: `epsilon` (`inf`: no DP), `region`, then each method (empty: not measured)."""
    rows = list(rows)
    if not rows:
        raise ValueError("no privacy-utility rows to write")
    fields = ["epsilon", "region", *MEASURED]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(row.get(k), float) and math.isnan(row[k]) else row.get(k, "")
                             for k in fields})
    return path


def read_rows(path: Path) -> list[Row]:
    """Rows written by `write_rows` (or `simulations/privacy_utility.py --out`), with numbers as floats."""
    rows = []
    with open(path, newline="") as f:
        for i, raw in enumerate(csv.DictReader(f), start=2):
            missing = {"epsilon", "region"} - {k for k, v in raw.items() if v}
            if missing:
                raise ValueError(f"{path}:{i}: no {sorted(missing)} (expected the columns of write_rows)")
            row: Row = {"epsilon": float(raw["epsilon"]), "region": raw["region"]}
            for method in MEASURED:
                row[method] = float(raw[method]) if raw.get(method) else math.nan
            rows.append(row)
    return rows


def _reference(rows: Sequence[Row], region: str, method: str) -> float:
    """A method measured once for all ε (the non-private run's value, else the first finite one)."""
    cells = [r for r in rows if r["region"] == region and not math.isnan(r.get(method, math.nan))]
    cells.sort(key=lambda r: not math.isinf(r["epsilon"]))  # the non-private run first
    return float(cells[0][method]) if cells else math.nan


def plot_privacy_utility(rows: Iterable[Row], metric: str = "ndcg@20") -> Figure:
    """One panel per region: served and the DP global model against ε (log scale), references as lines."""
    rows = list(rows)
    regions = [*sorted({r["region"] for r in rows} - {"overall"}), "overall"]
    eps = sorted({r["epsilon"] for r in rows if not math.isinf(r["epsilon"])})
    cols = min(4, len(regions))
    n_rows = math.ceil(len(regions) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.8 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, cols, squeeze=False).ravel()
    for ax, region in zip(axes, regions, strict=False):
        mine = {r["epsilon"]: r for r in rows if r["region"] == region}
        for method in ("served", "federated"):
            ys = [mine[e].get(method, math.nan) if e in mine else math.nan for e in eps]
            if any(not math.isnan(y) for y in ys):
                ax.plot(eps, ys, **LINE_STYLE[method])
        references = {"nonprivate": mine[math.inf]["federated"] if math.inf in mine else math.nan,
                      **{m: _reference(rows, region, m) for m in ("local_only", "local_baseline", "popularity")}}
        for method, value in references.items():
            if not math.isnan(value):
                ax.axhline(value, **LINE_STYLE[method])
        ax.set_xscale("log", base=2)
        ax.set_title(region, fontsize="medium")
        ax.set_xlabel("ε per silo")
        ax.set_ylabel(metric)
    for ax in axes[len(regions):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(labels)), fontsize="small")
    return fig
