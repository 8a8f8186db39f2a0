"""What a person sees: a per-round progress display and the end-of-run table (rich)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:  # a type only: the table and progress bar need neither the coordinator nor Flower
    from fedrec.coordinator.round_loop import RoundCallback

METHOD_ORDER = ("local_only", "local_baseline", "federated", "centralized", "pooled_baseline", "popularity")
HEADERS = {"local_only": "local\nonly", "local_baseline": "local\nbaseline", "federated": "feder-\nated",
           "centralized": "central-\nized", "pooled_baseline": "pooled\nbaseline", "popularity": "popu-\nlarity"}
"""Columns of the end-of-run table: what a region gets alone (our model, the best simple baseline its own
validation picks), federated, pooled (our model, the best pooled baseline), and per-silo popularity."""


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
            bar.update(task, advance=1, description=round_description(entry) or None)

        yield on_round


def round_description(entry: dict[str, Any]) -> str:
    """One line for the progress display: NDCG@20 when the coordinator has it, ε spent per silo under DP."""
    parts = [f"{entry['coalition']} round {entry['round']}"] if entry.get("coalition") else []
    ndcg = entry.get("overall", {}).get("ndcg@20")
    if entry.get("evaluated") and ndcg is not None and ndcg == ndcg:  # NaN when metrics stay in the silos
        parts.append(f"NDCG@20 {ndcg:.4f}")
    privacy = entry.get("privacy") or {}
    if privacy:
        parts.append("ε " + " ".join(f"{r} {p['epsilon']:.2f}/{p['budget_epsilon']:g}" for r, p in privacy.items()))
    if entry.get("declined"):
        parts.append(f"declined: {', '.join(sorted(entry['declined']))}")
    return "  ".join(parts)


def privacy_table(results: dict[str, Any]) -> Table:
    """Each silo's final DP state: ε spent (accountant, at its δ) next to its budget, and the mechanism."""
    table = Table(title="user-level DP per silo (accountant ε at the silo's δ, for the whole run)")
    for col in ("region", "ε spent", "ε budget", "δ", "σ", "q", "steps", "C"):
        table.add_column(col, justify="left" if col == "region" else "right")
    for r, p in results.get("privacy", {}).items():
        table.add_row(r, f"{p['epsilon']:.3f}", f"{p['budget_epsilon']:g}", f"{p['delta']:g}",
                      f"{p['noise_multiplier']:.3f}", f"{p['sample_rate']:g}", str(int(p["steps"])),
                      f"{p['clip_norm']:g}")
    return table


def results_table(results: dict[str, Any], metric: str = "ndcg@20") -> Table:
    """Rows: regions and overall; columns: local-only, federated, centralized (and popularity)."""
    final = results["final"]
    methods = [m for m in METHOD_ORDER if m in final]
    table = Table(title=f"{metric} per region (full ranking, test split)")
    table.add_column("region")
    table.add_column("users", justify="right")
    for m in methods:
        table.add_column(HEADERS.get(m, m), justify="right")
    users = {r: d.get("test_users", 0) for r, d in results.get("dataset", {}).get("regions", {}).items()}
    regions = sorted(final["federated"]["per_region"])
    for r in regions:
        table.add_row(r, str(users.get(r, "")), *(f"{final[m]['per_region'][r][metric]:.4f}" for m in methods))
    table.add_row("overall", str(sum(users.values()) or ""),
                  *(f"[bold]{final[m]['overall'][metric]:.4f}" for m in methods), end_section=True)
    return table


def baselines_line(results: dict[str, Any]) -> str:
    """Which baseline each region's own validation picked, and the pooled pick (chosen values in brackets)."""
    facts = results.get("baselines") or {}
    if "local_baseline" not in facts:
        return ""

    def chosen(name: str, region: str | None) -> str:
        f = facts.get(name, {})
        c = f.get("centralized") if region is None else f.get("local_only", {}).get(region)
        value = (c or {}).get("value")
        return f"{name}" + (f" {f['hyperparameter']}={value:g}" if value is not None else "")

    local = ", ".join(f"{r} {chosen(n, r)}" for r, n in sorted(facts["local_baseline"].items()))
    pooled = next(iter(facts.get("pooled_baseline", {}).values()), None)
    skipped = [f"{n} skipped: {f['skipped']}" for n, f in facts.items() if isinstance(f, dict) and "skipped" in f]
    return ("baselines chosen on validation: local " + local + (f"; pooled {chosen(pooled, None)}" if pooled else "")
            + "".join(f"; {s}" for s in skipped))


def adoption_table(results: dict[str, Any], metric: str = "ndcg@20") -> Table:
    """Per region: its policy, what it serves (global / adapted / own line / fork), and served vs global vs local.

    `serves` names the kind and the global version it comes from; with an `adapt` policy, `served by round`
    counts the kinds served over the evaluated rounds, and `own line` is the region's own local-only line (the
    model it falls back to), served or not.
    """
    table = Table(title=f"what each region serves ({metric}, test split; decided in the silo, never sent)")
    adapting = any(a.get("policy", {}).get("kind") == "adapt" for a in results.get("adoption", {}).values())
    columns = ("region", "policy", "serves", *(("served by round",) if adapting else ()), "adopted", "kept",
               "served", "global", *(("own line",) if adapting else ()), "local-only")
    for col in columns:
        table.add_column(col, justify="left" if col in ("region", "policy", "serves", "served by round") else "right")
    final = results["final"]
    for region, a in sorted(results.get("adoption", {}).items()):
        decisions = [d for d in a["decisions"] if not str(d["reason"]).startswith("forked from")]
        serves = served_label(a.get("serving"))

        def cell(method: str, region: str = region) -> str:
            value = final.get(method, {}).get("per_region", {}).get(region, {}).get(metric)
            return f"{value:.4f}" if value is not None else "-"

        p = a.get("policy", {})
        policy = p.get("kind", "always") + (f" {p.get('version') or p.get('from_round')}"[:14]
                                            if p.get("kind") in ("pin", "fork") else "")
        kinds = [e["served"][region].get("kind", "global") for e in results.get("rounds", [])
                 if region in e.get("served", {})]
        by_round = [", ".join(f"{k} {kinds.count(k)}" for k in dict.fromkeys(kinds)) or "-"] if adapting else []
        table.add_row(region, policy, serves, *by_round, str(sum(d["adopted"] for d in decisions)),
                      str(sum(not d["adopted"] for d in decisions if "fork" not in d["reason"])),
                      cell("served"), cell("federated"), *([cell("own_line")] if adapting else []), cell("local_only"))
    return table


def served_label(label: str | None) -> str:
    """A serving pointer for a person: its kind and the global version it comes from (8 characters)."""
    label = str(label or "-")
    if label.startswith("fork:"):
        return "fork of " + label.removeprefix("fork:")[:8]
    if label.startswith("own:"):
        return "own line"
    if label.startswith("adapted:"):
        _, variant, version = label.split(":", 2)
        return f"adapted ({variant}) {version[:8]}"
    return label if label == "-" else "global " + label[:8]


def coalitions_table(results: dict[str, Any], metric: str = "ndcg@20") -> Table:
    """Rows: regions; columns: each coalition line's last evaluation (a region's served line marked *)."""
    lines = results["coalitions"]
    table = Table(title=f"{metric} per coalition line (* the line the region serves)")
    table.add_column("region")
    for name, block in lines.items():
        table.add_column(f"{name} ({', '.join(block['regions'])})", justify="right")
    regions = sorted({r for block in lines.values() for r in block["regions"]})
    for region in regions:
        serving = next((n for n, b in lines.items() if region in b.get("served_by", [])), None)
        cells = []
        for name, block in lines.items():
            value = block["per_region"].get(region, {}).get(metric)
            cells.append("" if value is None else f"{value:.4f}" + ("*" if name == serving else ""))
        table.add_row(region, *cells)
    table.add_row("overall", *[f"{b['overall'][metric]:.4f}" if metric in b["overall"] else "" for b in lines.values()])
    return table


def print_summary(results: dict[str, Any], console: Console | None = None) -> None:
    """The end-of-run table plus one line of timings."""
    console = console or Console()
    console.print(results_table(results))
    if results.get("coalitions"):
        console.print(coalitions_table(results))
    if line := baselines_line(results):
        console.print(line, highlight=False)
    if any(a.get("policy", {}).get("kind", "always") != "always" for a in results.get("adoption", {}).values()):
        console.print(adoption_table(results))
    if results.get("privacy"):
        console.print(privacy_table(results))
        console.print("federated metrics under DP come from each silo's own evaluation log (simulation only: "
                      "the coordinator never receives them)")
    declined: dict[str, set[str]] = {}
    for e in results.get("privacy_rounds", []):
        for region, reason in e.get("declined", {}).items():
            declined.setdefault(region, set()).add(reason)
    for region, reasons in sorted(declined.items()):
        console.print(f"[yellow]{region} declined some rounds: {'; '.join(sorted(reasons))}")
    if results.get("stopped_early"):
        console.print(f"[yellow]stopped early: {results['stopped_early']}")
    t = results.get("timings", {})
    console.print(f"wall time {results['wall_time_s']:.1f} s (" + ", ".join(
        f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items()) + ")")
