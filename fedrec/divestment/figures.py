"""The divestment study's figure (`simulations/divestment.py`, `notebooks/study_divestment.ipynb`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure


def plot_divestment(s: dict[str, Any]) -> Figure:
    """Left: NDCG@20 of each remaining region on every line; right: the removal test's signal on every model."""
    cols = list(s["per_region_ndcg@20"])
    fig = Figure(figsize=(13, 4.2))
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(s["remaining"]))
    width = 0.8 / len(cols)
    for i, c in enumerate(cols):
        a.bar(x + i * width, [s["per_region_ndcg@20"][c][r] for r in s["remaining"]], width, label=c)
    a.set_xticks(x + 0.4 - width / 2, s["remaining"])
    a.set_ylabel("NDCG@20 (test)")
    a.set_title(f"remaining regions after {s['region']} is ordered out")
    a.legend(fontsize=8, ncol=2)
    rt = s["removal_test"]
    names = list(rt["signal"])
    colors = ["tab:red" if n == "before" else "tab:gray" if n.startswith("floor") else "tab:blue" for n in names]
    b.bar(names, [rt["signal"][n] for n in names], color=colors)
    b.set_ylabel("recall@20 on its own items")
    b.set_title(f"removal test: {rt['region']}'s own items ({rt['own_items']})")
    b.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig
