"""Figures of one experiment's `results.json`: where federation helps (per region) and how it got there (rounds).

Built on `matplotlib.figure.Figure` directly, never pyplot's global state, so they are safe in headless runs,
threads and notebooks alike, and nothing leaks between calls. Every function takes the plain results dict that
`run_experiment` returns (or `json.load` of results.json), so old runs can be re-plotted without re-running.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Bars, left to right: alone (our model, the best simple baseline), federated, pooled (our model, the best
# simple baseline). Popularity is a reference marker.
BAR_METHODS = ("local_only", "local_baseline", "federated", "centralized", "pooled_baseline")
METHOD_STYLE: dict[str, dict[str, Any]] = {
    "local_only": {"color": "#9e9e9e", "label": "local-only"},
    "local_baseline": {"color": "#d9d9d9", "label": "best local baseline", "hatch": "//", "edgecolor": "#7f7f7f"},
    "federated": {"color": "#1f77b4", "label": "federated"},
    "centralized": {"color": "#2ca02c", "label": "centralized"},
    "pooled_baseline": {"color": "#c7e9c0", "label": "best pooled baseline", "hatch": "//", "edgecolor": "#2ca02c"},
    "popularity": {"color": "#d62728", "label": "popularity"},
}
# Region lines avoid the method colours above, so a region is never mistaken for a reference line.
REGION_COLORS = ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#ad494a")


def _regions(results: dict[str, Any]) -> list[str]:
    """Regions in a stable order: the federated block's, sorted (as in `report.results_table`)."""
    return sorted(results["final"]["federated"]["per_region"])


def _value(block: dict[str, Any], region: str, metric: str) -> float:
    """A method's metric for a region or `overall`; NaN when absent so one missing cell does not fail a plot."""
    cell = block["overall"] if region == "overall" else block["per_region"].get(region, {})
    return float(cell.get(metric, math.nan))


def _tick_label(results: dict[str, Any], region: str) -> str:
    """Region name plus its test-user count, so a reader sees which bars rest on few users."""
    regions = results.get("dataset", {}).get("regions", {})
    if region == "overall":
        n = sum(int(d.get("test_users", 0)) for d in regions.values())
    else:
        n = int(regions.get(region, {}).get("test_users", 0))
    return f"{region}\n(n={n})" if n else region


def plot_region_comparison(results: dict[str, Any], metric: str = "ndcg@20") -> Figure:
    """Grouped bars per region (and overall): local-only vs federated vs centralized, popularity as a marker.

    The question the federation answers is per region: does a small silo gain over training alone, and how
    close does it get to pooling everything? One group per region shows exactly that.
    """
    final = results["final"]
    groups = [*_regions(results), "overall"]
    methods = [m for m in BAR_METHODS if m in final]
    x = np.arange(len(groups), dtype=float)
    width = 0.8 / max(len(methods), 1)

    fig = Figure(figsize=(max(6.0, 1.4 * len(groups) + 2.0), 4.2), layout="constrained")
    ax = fig.subplots()
    for i, m in enumerate(methods):
        values = [_value(final[m], g, metric) for g in groups]
        offset = (i - (len(methods) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width, **METHOD_STYLE[m])
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    if "popularity" in final:
        pop = [_value(final["popularity"], g, metric) for g in groups]
        ax.hlines(pop, x - 0.42, x + 0.42, colors=METHOD_STYLE["popularity"]["color"], linestyles="--",
                  linewidth=1.5, label=METHOD_STYLE["popularity"]["label"], zorder=3)
    if len(groups) > 1:
        ax.axvline(x[-1] - 0.5, color="0.8", linewidth=0.8)  # separates regions from the pooled row
    ax.set_xticks(x, [_tick_label(results, g) for g in groups])
    ax.set_xlabel("region (test users)")
    ax.set_ylabel(metric)
    ax.set_ylim(bottom=0)
    ax.margins(y=0.12)
    ax.set_title(f"{metric} per region: federated vs. training alone and pooling all data")
    fig.legend(loc="outside lower center", fontsize=8, ncols=len(methods) + 1, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def plot_rounds(results: dict[str, Any], metric: str = "ndcg@20") -> Figure:
    """Federated metric per region over rounds, with the final centralized and local-only overall as references.

    Shows whether the federation has converged or would profit from more rounds, and which regions lag.
    The solid black line is the federated overall, the one directly comparable with the dashed references.
    """
    rounds = results.get("rounds", [])
    xs = [int(r["round"]) for r in rounds]
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, region in enumerate(_regions(results)):
        ys = [float(r["per_region"].get(region, {}).get(metric, math.nan)) for r in rounds]
        ax.plot(xs, ys, color=REGION_COLORS[i % len(REGION_COLORS)], marker="o", markersize=3, linewidth=1.2,
                label=f"{region} (federated)")
    ax.plot(xs, [float(r["overall"].get(metric, math.nan)) for r in rounds], color="black", linewidth=2.2,
            marker="o", markersize=4, label="overall (federated)")
    final = results["final"]
    for m in ("centralized", "local_only", "pooled_baseline", "local_baseline"):
        if m in final:
            style = "--" if m in ("centralized", "local_only") else ":"
            ax.axhline(_value(final[m], "overall", metric), color=METHOD_STYLE[m].get("edgecolor",
                       METHOD_STYLE[m]["color"]), linestyle=style, linewidth=1.5,
                       label=f"{METHOD_STYLE[m]['label']} (overall, final)")
    if xs:
        ax.set_xticks(xs if len(xs) <= 20 else np.linspace(xs[0], xs[-1], 11).round().astype(int))
    ax.set_xlabel("federated round")
    ax.set_ylabel(metric)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{metric} over federated rounds")
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def has_adoption_choices(results: dict[str, Any]) -> bool:
    """Whether some region's policy is not `adopt: always` (else its served model is just the global one)."""
    return any(a.get("policy", {}).get("kind", "always") != "always" for a in results.get("adoption", {}).values())


def _event_marks(decisions: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Rounds of each kind of adoption event (fork start / rebase, adopted, kept)."""
    marks: dict[str, list[int]] = {"fork": [], "adopted": [], "kept": []}
    for d in decisions:
        if d["reason"].startswith(("the fork starts", "rebased the fork")):
            marks["fork"].append(int(d["round"]))
        elif str(d["reason"]).startswith("forked from"):
            continue
        else:
            marks["adopted" if d["adopted"] else "kept"].append(int(d["round"]))
    return marks


def plot_adoption(results: dict[str, Any], metric: str = "ndcg@20") -> Figure:
    """Per region: the global model, what the region serves, and local-only over rounds, with its decisions marked.

    Markers on the served line: adopted a new version (triangle), kept what it served (cross); a vertical
    red line where a fork started or was rebased.
    """
    rounds = results["rounds"]
    regions = _regions(results)
    fig = Figure(figsize=(4.2 * len(regions), 3.6), layout="constrained")
    axes = fig.subplots(1, len(regions), sharey=True, squeeze=False)[0]
    xs = [int(r["round"]) for r in rounds]
    for ax, region in zip(axes, regions, strict=True):
        def series(key: str, region: str = region) -> list[float]:
            return [float(r.get(key, {}).get(region, {}).get(metric, math.nan)) for r in rounds]

        ax.plot(xs, series("per_region"), color=METHOD_STYLE["federated"]["color"], label="global model")
        ax.plot(xs, series("served"), color="black", linewidth=2.0, label="served in the region")
        if any("local_only" in r for r in rounds):
            ax.plot(xs, series("local_only"), color=METHOD_STYLE["local_only"]["color"], linestyle="--",
                    label="local-only")
        adoption = results.get("adoption", {}).get(region, {})
        marks = _event_marks(adoption.get("decisions", []))
        served = dict(zip(xs, series("served"), strict=True))
        for kind, style in (("adopted", {"marker": "^", "color": "#2ca02c"}),
                            ("kept", {"marker": "x", "color": "#7f7f7f"})):
            pts = [x for x in marks[kind] if x in served]
            ax.scatter(pts, [served[x] for x in pts], zorder=3, s=36, label=kind, **style)
        for x in marks["fork"]:
            ax.axvline(x, color="#d62728", linewidth=1.2, linestyle=":", label="fork / rebase")
        policy = adoption.get("policy", {})
        ax.set_title(f"{region}: {_policy_label(policy)}", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("federated round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    handles: dict[str, Any] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    return fig


def has_influence(results: dict[str, Any]) -> bool:
    """Whether the run's rounds recorded who moved what (the coordinator saw each update)."""
    return any((e.get("robust") or {}).get("top_moved") for e in results.get("round_log", []))


def plot_influence(results: dict[str, Any]) -> Figure:
    """Per round, each contributor's share of the move of the item that round moved most (`fedrec.coordinator.robust`).

    One stacked bar per round: positive shares above zero, negative ones (pushing against the others) below; the
    item's id above the bar. One contributor owning round after round is what a steering silo looks like.
    """
    log = [e for e in results.get("round_log", []) if (e.get("robust") or {}).get("top_moved")]
    regions = sorted({r for e in log for r in e["robust"]["top_moved"][0]["shares"]})
    colors = {r: REGION_COLORS[i % len(REGION_COLORS)] for i, r in enumerate(regions)}
    fig = Figure(figsize=(max(4.0, 0.5 * len(log) + 2.5), 3.6), layout="constrained")
    ax = fig.subplots()
    xs = [int(e["round"]) for e in log]
    up, down = np.zeros(len(log)), np.zeros(len(log))
    for r in regions:
        shares = np.array([float(e["robust"]["top_moved"][0]["shares"].get(r, 0.0)) for e in log])
        pos, neg = np.clip(shares, 0, None), np.clip(shares, None, 0)
        ax.bar(xs, pos, bottom=up, color=colors[r], label=r)
        ax.bar(xs, neg, bottom=down, color=colors[r])
        up, down = up + pos, down + neg
    for x, e, top in zip(xs, log, up, strict=True):
        ax.text(x, top + 0.02, str(e["robust"]["top_moved"][0]["item"]), ha="center", va="bottom", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("federated round (item id: the round's most-moved item)")
    ax.set_ylabel("share of the item's move")
    ax.set_title("who moved the item each round moved most", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3, axis="y")
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    return fig


def _policy_label(policy: dict[str, Any]) -> str:
    kind = policy.get("kind", "always")
    if kind == "if_better":
        return f"if_better ({policy.get('metric')}, margin {policy.get('margin', 0):g})"
    if kind == "adapt":
        return f"adapt ({policy.get('metric')}, best of global / adapted / own line)"
    if kind == "pin":
        return f"pin {str(policy.get('version'))[:12]}"
    if kind == "fork":
        start = policy.get("version") or f"round {policy.get('from_round')}"
        return f"fork from {str(start)[:12]}" + ("" if policy.get("contribute", True) else ", not contributing")
    return "adopt always"


def plot_coalitions(summary: dict[str, Any]) -> Figure:
    """The coalition study (`simulations/coalitions.py`): per region alone, the whole federation, each line it is in.

    A region's bar for a line it is not in is left out; the line it serves is hatched.
    """
    regions = list(summary["per_region"])
    columns = ["local_only", "whole", *summary["coalitions"]]
    fig = Figure(figsize=(1.7 * len(regions) + 2, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(columns)
    for i, col in enumerate(columns):
        rows = [(j, summary["per_region"][r]) for j, r in enumerate(regions)
                if summary["per_region"][r].get(col) is not None]
        bars = ax.bar([j + i * width for j, _ in rows], [row[col] for _, row in rows], width,
                      label=col.replace("_", "-"), color=f"C{i}")
        for bar, (_, row) in zip(bars, rows, strict=True):
            if row.get("serves") == col:
                bar.set_hatch("//")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(regions))], regions)
    ax.set_ylabel(summary["metric"].upper())
    ax.set_title("per region: alone, the whole federation, each coalition line (hatched: the line it serves)")
    ax.legend(fontsize=8, ncol=len(columns))
    fig.tight_layout()
    return fig


def save_figures(results: dict[str, Any], out_dir: Path | str, metric: str = "ndcg@20") -> list[Path]:
    """Write the figures as PNG next to results.json, so a run's outcome can be seen without Python.

    `adoption_*.png` is written when some region's policy is not `adopt: always`; `influence.png` when the
    coordinator recorded who moved what (it saw each update).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = metric.replace("@", "_at_")
    paths = []
    figures = [("regions", plot_region_comparison(results, metric)), ("rounds", plot_rounds(results, metric))]
    if has_adoption_choices(results):
        figures.append(("adoption", plot_adoption(results, metric)))
    for name, fig in figures:
        path = out / f"{name}_{tag}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    if has_influence(results):
        path = out / "influence.png"
        plot_influence(results).savefig(path, dpi=120)
        paths.append(path)
    return paths
