"""`fedrec collect SWEEP_DIR`: every run of a sweep in one tidy table, a summary over seeds, a figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedrec.commands.parsing import CommandParser, run_command

SHOWN = ("federated", "served", "centralized", "local_only", "local_baseline", "pooled_baseline", "popularity")


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec collect` argument parser."""
    p = CommandParser(prog="fedrec collect", description="Collect every results.json under a sweep directory: "
                      "collected.csv / .parquet (one row per run x method x region x metric, the runs' overrides "
                      "as columns), summary.csv (mean and 95%% CI over seeds) and a figure.")
    p.add_argument("sweep", type=Path, help="a sweep's directory, e.g. multirun/DATE/TIME")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep directory)")
    p.add_argument("--metric", default="ndcg@20", help="the metric of the printed table and the figure")
    p.add_argument("--region", default="overall", help="a region, or overall")
    return p


def _collect(args: argparse.Namespace, console: Console) -> int:
    from fedrec.collect import write_collected
    from fedrec.errors import ConfigError
    from fedrec.sweep_plots import plot_sweep

    table, summary, paths = write_collected(args.sweep, args.out)
    rows = summary[(summary["metric"] == args.metric) & (summary["region"] == args.region)]
    if rows.empty:
        metrics = sorted(set(summary["metric"]))
        regions = sorted(set(summary["region"]))
        raise ConfigError(f"no {args.metric} for region {args.region!r} in this sweep; metrics: {', '.join(metrics)};"
                          f" regions: {', '.join(regions)}")
    configs = [c for c in summary.columns if c not in ("method", "region", "metric", "mean", "std", "seeds", "ci95")
               and rows[c].nunique(dropna=False) > 1]  # overrides every run shares are not worth a column
    methods = [m for m in SHOWN if m in set(rows["method"])]
    shared = {c: rows[c].iloc[0] for c in summary.columns if c not in (*configs, "method", "region", "metric", "mean",
                                                                        "std", "seeds", "ci95")}
    if shared:
        console.print("every run: " + " ".join(f"{k}={v}" for k, v in shared.items()), highlight=False)
    out = Table(title=f"{args.metric} ({args.region}): mean ± 95% CI over seeds (n)")
    for c in [*configs, *methods]:
        out.add_column(c, justify="left" if c in configs else "right")
    for key, group in (rows.groupby(configs, dropna=False, sort=True) if configs else [((), rows)]):
        values = key if isinstance(key, tuple) else (key,)
        cells = []
        for m in methods:
            r = group[group["method"] == m]
            cells.append("" if r.empty else f"{r['mean'].iloc[0]:.4f}±{r['ci95'].iloc[0]:.3f} ({r['seeds'].iloc[0]})")
        out.add_row(*[str(v) for v in values], *cells)
    console.print(out)
    figure = (args.out or args.sweep) / f"sweep_{args.metric.replace('@', '_at_')}_{args.region}.png"
    plot_sweep(summary, args.metric, args.region).savefig(figure, dpi=120)
    console.print(f"{len(table)} rows from {table['run'].nunique()} runs: " + ", ".join(str(p) for p in
                  [*paths, figure]), highlight=False)
    return 0


def collect_main(argv: list[str], console: Console | None = None) -> int:
    """Entry point of `fedrec collect`: 0 ok, 2 a user mistake."""
    out = console or Console()
    return run_command("fedrec collect", build_parser(), lambda args: _collect(args, out), argv)
