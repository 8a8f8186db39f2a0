"""What a person sees: a per-round progress display and the end-of-run table (rich)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedrec.federation.coordinator import RoundCallback

METHOD_ORDER = ("local_only", "federated", "centralized", "popularity")


@contextmanager
def round_progress(total: int, *, enabled: bool, console: Console | None = None) -> Iterator[RoundCallback]:
    """A callback advancing a progress bar per federated round (a no-op when disabled)."""
    if not enabled:
        yield lambda entry: None
        return
    columns = (TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=total)

        def on_round(entry: dict[str, Any]) -> None:
            if entry.get("evaluated", True):
                bar.update(task, advance=1, description=f"NDCG@20 {entry['overall'].get('ndcg@20', float('nan')):.4f}")
            else:
                bar.update(task, advance=1)

        yield on_round


def results_table(results: dict[str, Any], metric: str = "ndcg@20") -> Table:
    """Rows: regions and overall; columns: local-only, federated, centralized (and popularity)."""
    final = results["final"]
    methods = [m for m in METHOD_ORDER if m in final]
    table = Table(title=f"{metric} per region (full ranking, test split)")
    table.add_column("region")
    table.add_column("users", justify="right")
    for m in methods:
        table.add_column(m.replace("_", "-"), justify="right")
    users = {r: d.get("test_users", 0) for r, d in results.get("dataset", {}).get("regions", {}).items()}
    regions = sorted(final["federated"]["per_region"])
    for r in regions:
        table.add_row(r, str(users.get(r, "")), *(f"{final[m]['per_region'][r][metric]:.4f}" for m in methods))
    table.add_row("overall", str(sum(users.values()) or ""),
                  *(f"[bold]{final[m]['overall'][metric]:.4f}" for m in methods), end_section=True)
    return table


def print_summary(results: dict[str, Any], console: Console | None = None) -> None:
    """The end-of-run table plus one line of timings."""
    console = console or Console()
    console.print(results_table(results))
    t = results.get("timings", {})
    console.print(f"wall time {results['wall_time_s']:.1f} s (" + ", ".join(
        f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items()) + ")")
