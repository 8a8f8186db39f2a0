"""`fedrec models list|show|diff|export`: inspect and export the global model versions of a registry."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from fedrec.commands.parsing import CommandParser, run_command
from fedrec.versions import (
    DEFAULT_ROOT,
    ENV_ROOT,
    RUN_REGISTRY_GLOBS,
    SHORT,
    ModelRegistry,
    ModelVersion,
    resolve_registry_root,
)


def build_parser() -> argparse.ArgumentParser:
    """`fedrec models` arguments; `--root` is accepted before or after the subcommand."""
    root = CommandParser(add_help=False)
    root.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                      help=f"registry directory (default: ${ENV_ROOT}, else ./{DEFAULT_ROOT} if it exists, else "
                           f"the newest run's: ./{RUN_REGISTRY_GLOBS[0]} or ./{RUN_REGISTRY_GLOBS[1]})")
    parser = CommandParser(prog="fedrec models", parents=[root],
                           description="Inspect and export the global model versions of a registry.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,show,diff,export}")
    sub.add_parser("list", parents=[root], help="every version, by round")
    show = sub.add_parser("show", parents=[root], help="one version's manifest and tensors")
    show.add_argument("id", help="version id or a unique prefix of it")
    diff = sub.add_parser("diff", parents=[root], help="how version B differs from version A")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    export = sub.add_parser("export", parents=[root], help="write a self-contained .safetensors copy")
    export.add_argument("id", help="version id or a unique prefix of it")
    export.add_argument("dest", type=Path, help="file or existing directory to write to")
    export.add_argument("--force", action="store_true", help="replace DEST if it exists")
    return parser


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and any(isinstance(v, dict | list) for v in value.values()):
        return json.dumps(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "-"
    return "-" if value is None or value == "" else str(value)


def _metrics_summary(metrics: Mapping[str, Any], limit: int = 3) -> str:
    """The first few scalar metrics, flattened (`overall.ndcg=0.31`), one a line, for one table cell."""
    flat: list[str] = []

    def walk(prefix: str, m: Mapping[str, Any]) -> None:
        for k, v in m.items():
            if isinstance(v, Mapping):
                walk(f"{prefix}{k}.", v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                flat.append(f"{prefix}{k}={v:.4g}")

    walk("", metrics)
    return "\n".join(flat[:limit] + (["..."] if len(flat) > limit else [])) if flat else "-"


def _line_label(v: ModelVersion) -> str:
    """The version's line: its coalition, and for a divested line what was removed and how."""
    parts = [v.coalition] if v.coalition else []
    if v.divestment:
        removed = ",".join(str(r) for r in v.divestment.get("removed", []))
        parts.append(f"without {removed} ({v.divestment.get('method', '?')})")
    return " ".join(parts) or "-"


def _print_list(registry: ModelRegistry, console: Console) -> None:
    versions = registry.list()
    if not versions:
        console.print(f"no model versions in {registry.root}")
        return
    table = Table(title=f"model versions in {registry.root}", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("round", justify="right")
    table.add_column("parent", no_wrap=True)
    lines = any(v.coalition or v.divestment for v in versions)  # a column only when the registry has such lines
    if lines:
        table.add_column("line", overflow="fold", min_width=6)
    for col, width in (("silos", 5), ("ε spent", 7), ("strategy", 5)):
        table.add_column(col, overflow="fold", min_width=width)
    table.add_column("metrics", min_width=18)  # cut with "…" on narrow terminals; `show` has them all
    for v in versions:
        line = [_line_label(v)] if lines else []
        table.add_row(v.short_id, str(v.round), v.parent[:8] if v.parent else "-", *line, _fmt(v.contributors),
                      _fmt(v.epsilon), _fmt(v.strategy), _metrics_summary(v.metrics, limit=2))
    console.print(table)


def _print_show(registry: ModelRegistry, key: str, console: Console) -> None:
    arrays, v = registry.load(key)
    fields = Table(title=f"model version {v.short_id} (weights verified)", show_header=False)
    fields.add_column("field", no_wrap=True)
    fields.add_column("value", overflow="fold")
    for k, value in v.to_dict().items():
        if k != "influence":
            fields.add_row(k, _fmt(value))
    lineage = registry.lineage(v.id)
    fields.add_row("lineage", " ← ".join(x.short_id for x in lineage))
    console.print(fields)
    _print_influence(v.influence, console)
    tensors = Table(title="tensors")
    for col in ("name", "dtype", "shape", "L2 norm"):
        tensors.add_column(col)
    for name, a in arrays.items():
        tensors.add_row(name, str(a.dtype), "×".join(map(str, a.shape)) or "scalar",
                        f"{float(np.linalg.norm(a.astype(np.float64).ravel())):.4g}")
    console.print(tensors)


def _print_influence(influence: dict[str, object], console: Console) -> None:
    """Who moved what in the round that made the version: the items moved most and each contributor's share."""
    top = influence.get("top_moved")
    if isinstance(top, list) and top:
        table = Table(title="influence: the items this round moved most (share of each contributor in the move)")
        for col in ("item", "moved", "shares (largest first)"):
            table.add_column(col)
        for entry in top:
            shares = sorted(entry["shares"].items(), key=lambda kv: -abs(kv[1]))
            table.add_row(str(entry["item"]), f"{entry['moved']:.4g}",
                          ", ".join(f"{r} {x:+.0%}" for r, x in shares[:5]) + (" ..." if len(shares) > 5 else ""))
        console.print(table)
    clipped = influence.get("clipped_rows")
    if isinstance(clipped, dict) and any(clipped.values()):
        console.print("rows clipped (strategy.robust=row_clip): "
                      + ", ".join(f"{r} {n}" for r, n in sorted(clipped.items()) if n), highlight=False)


def _print_diff(registry: ModelRegistry, a: str, b: str, console: Console) -> None:
    d = registry.diff(a, b)
    console.print(f"A = {d['a'][:SHORT]}   B = {d['b'][:SHORT]}")
    if d["fields"]:
        fields = Table(title="manifest fields that differ")
        fields.add_column("field", no_wrap=True)
        for col in ("A", "B"):
            fields.add_column(col, overflow="fold")
        for k, ab in d["fields"].items():
            fields.add_row(k, _fmt(ab["a"]), _fmt(ab["b"]))
        console.print(fields)
    tensors = Table(title="tensors (B - A)")
    for col in ("name", "status", "shape", "‖B-A‖", "relative"):
        tensors.add_column(col)
    for name, t in d["tensors"].items():
        shape = t.get("shape") or f"{t.get('shape_a', '-')} vs {t.get('shape_b', '-')}"
        tensors.add_row(name, t["status"], str(shape), _fmt(t.get("l2")), _fmt(t.get("relative")))
    console.print(tensors)


def _run(args: argparse.Namespace, out: Console) -> int:
    root, note = resolve_registry_root(getattr(args, "root", None))
    if note:
        print(f"fedrec models: {note}", file=sys.stderr)
    registry = ModelRegistry(root, create=False)
    if args.command == "list":
        _print_list(registry, out)
    elif args.command == "show":
        _print_show(registry, args.id, out)
    elif args.command == "diff":
        _print_diff(registry, args.a, args.b, out)
    else:
        path = registry.export(args.id, args.dest, overwrite=args.force)
        out.print(f"exported {registry.get(args.id).short_id} → {path}", highlight=False)
    return 0


def models_main(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    """`fedrec models list | show ID | diff A B | export ID DEST`; returns the exit status (2: a user mistake)."""
    out = console or Console()
    return run_command("fedrec models", build_parser(), lambda args: _run(args, out),
                       sys.argv[1:] if argv is None else argv)
