"""`fedrec regimes RUN_DIR`: per jurisdiction, its effective policy and what it spent (from its own ledgers).

`--state-dir REGION=DIR` (repeatable) reads a silo's state dir directly (a deployed silo's, or one a run did not
record): its spending only, since its policy is its node config.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fedrec.commands.parsing import CommandParser, run_command
from fedrec.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec regimes` argument parser."""
    parser = CommandParser(prog="fedrec regimes",
                           description="Each jurisdiction's policy (budget, max δ, partners, secure aggregation, "
                                       "adoption, ledger retention) and the ε its ledgers say it spent.")
    parser.add_argument("run_dir", type=Path, nargs="?", help="a finished run's output directory (its results.json)")
    parser.add_argument("--state-dir", action="append", default=[], metavar="REGION=DIR",
                        help="a silo's state dir, read directly (repeatable)")
    return parser


def _fmt(value: Any, digits: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, digits)
    return str(value)


def _rows(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from fedrec.regime_report import run_regimes
    from fedrec.silo.spend import read_spend

    rows: dict[str, dict[str, Any]] = run_regimes(args.run_dir) if args.run_dir is not None else {}
    for row in rows.values():  # the ledgers as they are now (a later run may have spent more)
        state = row.get("state_dir")
        if state and Path(state).is_dir():
            retention = (row.get("policy") or {}).get("ledger_retention_days")
            row["spent"] = read_spend(Path(state)).to_dict(retention)
    for item in args.state_dir:
        region, sep, where = item.partition("=")
        if not sep or not region or not where:
            raise ConfigError(f"--state-dir {item!r}: give REGION=DIR")
        if not Path(where).is_dir():
            raise ConfigError(f"--state-dir {item!r}: no directory {where}")
        rows[region] = {**rows.get(region, {}), "state_dir": where, "spent": read_spend(Path(where)).to_dict()}
    if not rows:
        raise ConfigError("give a run's output directory, or --state-dir REGION=DIR")
    return rows


def _adoption(policy: dict[str, Any]) -> str:
    adoption = policy.get("adoption") or {}
    kind = str(adoption.get("kind", "always"))
    where = adoption.get("version") or adoption.get("from_round")
    return kind + (f" {str(where)[:16]}" if where is not None else "") + (
        "" if adoption.get("contribute", True) else ", not contributing")


def _print(rows: dict[str, dict[str, Any]], console: Console) -> None:
    table = Table(title="jurisdictions: policy and spending", box=box.SIMPLE_HEAD)
    for col in ("region", "ε own / run", "max δ (ledger)", "partners", "secagg", "adoption", "retention",
                "ε spent", "ε this run"):
        table.add_column(col, overflow="fold")
    for region, row in sorted(rows.items()):
        policy, spent, this = row.get("policy") or {}, row.get("spent") or {}, row.get("this_run") or {}
        partners = policy.get("partners")
        table.add_row(
            region,
            f"{_fmt(policy.get('epsilon_budget'), 'g')} / {_fmt(policy.get('run_epsilon'), 'g')}" if policy else "-",
            f"{_fmt(policy.get('max_delta'), 'g')} ({_fmt(spent.get('delta') or policy.get('delta'), 'g')})"
            if policy else f"({_fmt(spent.get('delta'), 'g')})",
            ("any" if partners is None else ", ".join(partners) or "none") if policy else "-",
            (("required" if policy.get("require_secure_aggregation") else "-")
             + (f", ≥{policy['secagg_min_contributors']}" if policy.get("secagg_min_contributors") else ""))
            if policy else "-",
            _adoption(policy) if policy else "-",
            (f"{policy['ledger_retention_days']} d" if policy.get("ledger_retention_days") is not None else "-")
            + (f" (keep until {spent['keep_until']})" if spent.get("keep_until") else ""),
            _fmt(spent.get("epsilon")) + (f" of {_fmt(spent.get('budget_epsilon'), 'g')}"
                                          if spent.get("budget_epsilon") is not None else ""),
            _fmt(this.get("epsilon")) + (f" ({this['releases']} releases)" if this.get("releases") else ""),
        )
    console.print(table)
    console.print("policy: each silo's own for the run (regime entry / node config within the run's proposal: "
                  "ε own / run = its cap / what the run may spend); ε spent: all runs its ledger holds, at its δ; "
                  "retention: kept at least that long after the last entry", highlight=False)


def regimes_main(argv: list[str], console: Console | None = None) -> int:
    """Entry point of `fedrec regimes`: 0, or 2 on a user mistake."""
    out = console or Console()

    def handle(args: argparse.Namespace) -> int:
        _print(_rows(args), out)
        return 0

    return run_command("fedrec regimes", build_parser(), handle, argv)
