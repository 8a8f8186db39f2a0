"""Figures of a collected sweep (`fedrec.collect.summarize`).

Methods side by side per configuration, and each region against the swept value; one run's own figures are in
`fedrec.plots`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedrec.plots import BAR_METHODS, METHOD_STYLE


def plot_sweep(summary: Any, metric: str = "ndcg@20", region: str = "overall") -> Figure:
    """A collected sweep (`fedrec.collect.summarize`): each configuration's methods side by side, mean ± 95% CI.

    Configurations are the swept overrides other than the seed; bars are the methods of `BAR_METHODS` present.
    """
    rows = summary[(summary["metric"] == metric) & (summary["region"] == region)]
    config_cols = [c for c in summary.columns if c not in ("method", "region", "metric", "mean", "std", "seeds", "ci95")
                   and rows[c].nunique(dropna=False) > 1]  # what every run shares does not label a bar
    labels = [" ".join(f"{c}={v}" for c, v in zip(config_cols, key, strict=True)) or "all runs"
              for key in (rows[config_cols].drop_duplicates().itertuples(index=False) if config_cols else [()])]
    methods = [m for m in BAR_METHODS if m in set(rows["method"])]
    fig = Figure(figsize=(max(6.0, 1.2 * len(labels) * max(1, len(methods)) / 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(labels))
    for i, method in enumerate(methods):
        sub = rows[rows["method"] == method]
        means, errs = [], []
        for label in labels:
            match = sub[[" ".join(f"{c}={v}" for c, v in zip(config_cols, r, strict=True)) == label
                         for r in sub[config_cols].itertuples(index=False)]] if config_cols else sub
            means.append(float(match["mean"].iloc[0]) if len(match) else math.nan)
            errs.append(float(match["ci95"].iloc[0]) if len(match) else 0.0)
        style = {k: v for k, v in METHOD_STYLE[method].items()}
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errs, capsize=2, **style)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel(f"{metric} ({region}), mean ± 95% CI over seeds")
    ax.legend(fontsize="small", ncols=min(3, max(1, len(methods))))
    return fig


def plot_swept(summary: Any, swept: str, metric: str = "ndcg@20", methods: tuple[str, ...] = BAR_METHODS) -> Figure:
    """A collected sweep against one swept override: one panel per region (overall first), a line per method.

    x is each value of `swept` (a column of `fedrec.collect.summarize`'s table) in the order they sort as
    numbers when they all are, y the mean over seeds with its 95% CI. Configurations that differ in another
    override too are averaged away only if the table says so: call it on a table where `swept` is the one
    override that varies (filter the others first).
    """
    rows = summary[(summary["metric"] == metric) & summary["method"].isin(methods)]
    if rows.empty or swept not in rows.columns:
        raise ValueError(f"no {metric} rows for {methods} with a column {swept!r} in this summary")
    values = list(dict.fromkeys(rows[swept].astype(str)))
    with contextlib.suppress(ValueError):  # lists, names: the sweep's own order
        values.sort(key=float)
    regions = ["overall", *sorted(r for r in set(rows["region"]) if r != "overall")]
    cols = min(3, len(regions))
    fig = Figure(figsize=(4.2 * cols, 3.2 * math.ceil(len(regions) / cols)), layout="constrained")
    x = np.arange(len(values))
    for n, region in enumerate(regions):
        ax = fig.add_subplot(math.ceil(len(regions) / cols), cols, n + 1)
        for method in (m for m in methods if m in set(rows["method"])):
            sub = rows[(rows["region"] == region) & (rows["method"] == method)]
            by = {str(v): (m, c) for v, m, c in zip(sub[swept], sub["mean"], sub["ci95"], strict=True)}
            ys = [by.get(v, (math.nan, 0.0)) for v in values]
            style = METHOD_STYLE.get(method, {"label": method})
            ax.errorbar(x, [y for y, _ in ys], yerr=[e for _, e in ys], marker="o", capsize=2,
                        color=style.get("color"), label=style["label"])
        ax.set_title(region, fontsize="medium")
        ax.set_xticks(x, values, rotation=20, ha="right", fontsize="small")
        if n % cols == 0:
            ax.set_ylabel(f"{metric}, mean ± 95% CI")
    fig.axes[0].legend(fontsize="small")
    fig.supxlabel(swept)
    return fig
