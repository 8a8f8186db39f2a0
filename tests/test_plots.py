"""Tests of fedrec.plots on a hand-built, schema-correct results dict (no training, no Flower)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from matplotlib.collections import LineCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from fedrec.plots import plot_region_comparison, plot_rounds, save_figures

METRICS = ("ndcg@20", "recall@20", "hr@10", "ndcg@10")
REGIONS = ("north", "south")
N_ROUNDS = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(base: float) -> dict[str, float]:
    return {m: base + 0.01 * i for i, m in enumerate(METRICS)}


def _block(base: float) -> dict[str, Any]:
    return {"overall": _metrics(base), "per_region": {r: _metrics(base + 0.05 * i) for i, r in enumerate(REGIONS)}}


def fake_results(methods: tuple[str, ...] = ("federated", "centralized", "local_only", "popularity")) -> dict[str, Any]:
    """The layout `run_experiment` returns, with made-up numbers: 2 regions, 3 rounds."""
    base = {"federated": 0.3, "centralized": 0.4, "local_only": 0.2, "popularity": 0.1}
    rounds = [{"round": k, "per_region": {r: _metrics(0.1 * k + 0.02 * i) for i, r in enumerate(REGIONS)},
               "overall": _metrics(0.1 * k), "participants": list(REGIONS), "failures": [], "round_time_s": 0.1}
              for k in range(1, N_ROUNDS + 1)]
    return {
        "dataset": {"name": "synthetic", "n_items": 50,
                    "regions": {"north": {"users": 30, "test_users": 28, "train_interactions": 300},
                                "south": {"users": 10, "test_users": 9, "train_interactions": 90}}},
        "rounds": rounds,
        "final": {m: _block(base[m]) for m in methods},
    }


def _bars(fig: Figure) -> dict[str, BarContainer]:
    (ax,) = fig.axes
    return {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}


def test_region_comparison_has_one_bar_per_method_and_group() -> None:
    results = fake_results()
    fig = plot_region_comparison(results)
    bars = _bars(fig)
    assert list(bars) == ["local-only", "federated", "centralized"]
    groups = len(REGIONS) + 1  # regions + overall
    for label, container in bars.items():
        assert len(container.patches) == groups, label
    # heights are the values, in sorted-region order then overall
    fed = [p.get_height() for p in bars["federated"].patches]
    expected = [results["final"]["federated"]["per_region"][r]["ndcg@20"] for r in sorted(REGIONS)]
    assert fed == pytest.approx([*expected, results["final"]["federated"]["overall"]["ndcg@20"]])
    # popularity is a marker per group, not a bar
    (ax,) = fig.axes
    pop = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_label() == "popularity"]
    assert len(pop) == 1 and len(pop[0].get_segments()) == groups
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["north\n(n=28)", "south\n(n=9)", "overall\n(n=37)"]
    assert ax.get_ylabel() == "ndcg@20" and ax.get_xlabel() and ax.get_title()
    assert fig.legends, "figure has a legend"


def test_region_comparison_other_metric_and_missing_bounds() -> None:
    results = fake_results(methods=("federated", "popularity"))
    fig = plot_region_comparison(results, metric="hr@10")
    bars = _bars(fig)
    assert list(bars) == ["federated"]
    overall = results["final"]["federated"]["overall"]["hr@10"]
    assert bars["federated"].patches[-1].get_height() == pytest.approx(overall)
    assert fig.axes[0].get_ylabel() == "hr@10"


def test_rounds_has_region_lines_and_dashed_references() -> None:
    results = fake_results()
    fig = plot_rounds(results)
    (ax,) = fig.axes
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert [ln.get_label() for ln in solid] == ["north (federated)", "south (federated)", "overall (federated)"]
    for ln in solid:
        assert list(ln.get_xdata()) == [1, 2, 3]
    north = [r["per_region"]["north"]["ndcg@20"] for r in results["rounds"]]
    assert list(solid[0].get_ydata()) == pytest.approx(north)
    assert len(dashed) == 2
    refs = {ln.get_label(): ln.get_ydata()[0] for ln in dashed}
    assert refs == pytest.approx({
        "centralized (overall, final)": results["final"]["centralized"]["overall"]["ndcg@20"],
        "local-only (overall, final)": results["final"]["local_only"]["overall"]["ndcg@20"],
    })
    assert ax.get_xlabel() == "federated round" and ax.get_ylabel() == "ndcg@20"


def test_rounds_without_bounds_has_no_reference_lines() -> None:
    fig = plot_rounds(fake_results(methods=("federated",)))
    assert not [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]


def test_rounds_tolerates_a_region_missing_from_a_round() -> None:
    results = fake_results()
    del results["rounds"][0]["per_region"]["south"]
    fig = plot_rounds(results)
    south = next(ln for ln in fig.axes[0].lines if ln.get_label() == "south (federated)")
    assert math.isnan(south.get_ydata()[0])


def test_save_figures_writes_non_empty_pngs(tmp_path: Path) -> None:
    results = json.loads(json.dumps(fake_results()))  # as read back from results.json
    out = tmp_path / "figs"
    paths = save_figures(results, out)
    assert len(paths) == 2 and len(set(paths)) == 2
    for p in paths:
        assert p.parent == out and p.suffix == ".png"
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def with_adoption(results: dict[str, Any]) -> dict[str, Any]:
    """`fake_results` where south forks after round 1 and north adopts if better (kept round 3)."""
    for entry in results["rounds"]:
        entry["served"] = {r: _metrics(0.12 * entry["round"] + 0.01) for r in REGIONS}
        entry["local_only"] = {r: _metrics(0.05 * entry["round"]) for r in REGIONS}
    results["adoption"] = {
        "north": {"policy": {"kind": "if_better", "metric": "ndcg@20", "margin": 0.0}, "serving": "b" * 64,
                  "decisions": [{"round": k, "adopted": k < 3, "reason": "ndcg@20 ..."} for k in (1, 2, 3)]},
        "south": {"policy": {"kind": "fork", "from_round": 1, "contribute": True}, "serving": "fork:" + "a" * 64,
                  "decisions": [{"round": 1, "adopted": True, "reason": "follows the federation until its fork point"},
                                {"round": 1, "adopted": False, "reason": "the fork starts from this version"},
                                *({"round": k, "adopted": False, "reason": "forked from aaaa: serves its own line"}
                                  for k in (2, 3))]},
    }
    return results


def test_the_adoption_figure_marks_each_regions_decisions(tmp_path: Path) -> None:
    from fedrec.plots import plot_adoption

    results = with_adoption(json.loads(json.dumps(fake_results())))
    fig = plot_adoption(results)
    north, south = fig.axes[:2]
    assert "if_better" in north.get_title() and "fork from round 1" in south.get_title()
    served = next(ln for ln in north.lines if ln.get_label() == "served in the region")
    assert list(served.get_ydata()) == [results["rounds"][k]["served"]["north"]["ndcg@20"] for k in range(3)]
    kept = [c for c in north.collections if c.get_label() == "kept"]
    assert len(kept) == 1 and [p[0] for p in kept[0].get_offsets()] == [3]
    assert [ln.get_xdata()[0] for ln in south.lines if ln.get_label() == "fork / rebase"] == [1]
    # save_figures adds it only when some region does not simply adopt every version
    assert len(save_figures(results, tmp_path / "a")) == 3
    assert len(save_figures(json.loads(json.dumps(fake_results())), tmp_path / "b")) == 2


def test_swept_plot_draws_each_regions_means_against_the_swept_values_in_numeric_order() -> None:
    import pandas as pd

    from fedrec.sweep_plots import plot_swept

    rows = []
    for shift, base in (("2.0", 0.1), ("0.5", 0.3), ("0.0", 0.4)):
        for region, scale in (("overall", 1.0), ("eu", 0.9), ("na", 0.8)):
            for method, gain in (("federated", 0.05), ("local_only", 0.0)):
                rows.append({"dataset.region_shift": shift, "method": method, "region": region, "metric": "ndcg@20",
                             "mean": (base + gain) * scale, "std": 0.01, "seeds": 2, "ci95": 0.02})
    fig = plot_swept(pd.DataFrame(rows), "dataset.region_shift", methods=("federated", "local_only"))

    assert [ax.get_title() for ax in fig.axes] == ["overall", "eu", "na"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.0", "0.5", "2.0"]
    lines = {c.get_label(): list(c.lines[0].get_ydata()) for c in fig.axes[1].containers}  # one errorbar per method
    assert lines["federated"] == pytest.approx([0.45 * 0.9, 0.35 * 0.9, 0.15 * 0.9])
    assert lines["local-only"] == pytest.approx([0.4 * 0.9, 0.3 * 0.9, 0.1 * 0.9])
    with pytest.raises(ValueError, match="no ndcg@20 rows"):
        plot_swept(pd.DataFrame(rows), "seed")
