"""`fedrec audit verify PATH`: check a silo's egress ledger (its hash chain and ε totals)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from fedrec.commands.parsing import CommandParser, run_command
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE, verify
from fedrec.silo.state_dir import StateDir


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec audit` argument parser."""
    parser = CommandParser(prog="fedrec audit", description="Verify a silo's egress ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain and the ε totals of an egress ledger")
    v.add_argument("path", type=Path, help=f"the ledger ({EGRESS_LEDGER_FILE}) or the silo's state dir holding it")
    v.add_argument("--accountant", default="pld", choices=("pld", "rdp"), help="the silo's privacy.accountant")
    return parser


def _verify(args: argparse.Namespace, console: Console) -> int:
    path = StateDir(args.path).egress_ledger if args.path.is_dir() else args.path
    if not path.is_file():
        raise FileNotFoundError(f"no egress ledger at {path}")
    report = verify(path, accountant=args.accountant)
    if report.ok:
        console.print(f"OK {path}: {report.entries} entries chained; {report.releases} DP releases adding up to "
                      f"ε={report.epsilon_recomputed:.4f} (reported {report.epsilon_reported:.4f})", highlight=False)
        return 0
    console.print(f"[bold red]TAMPERED or inconsistent[/] {path}:", highlight=False)
    for problem in report.problems:
        console.print(f"  - {problem}", highlight=False)
    return 1


def audit_main(argv: list[str], console: Console | None = None) -> int:
    """Entry point of `fedrec audit`: 0 ok, 1 tampered or inconsistent, 2 a user mistake."""
    out = console or Console()
    return run_command("fedrec audit", build_parser(), lambda args: _verify(args, out), argv)
