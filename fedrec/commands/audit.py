"""`fedrec audit verify PATH`: check a silo's egress ledger (its hash chain and ε totals).

`fedrec audit privacy --region R [OVERRIDES]`: an empirical ε lower bound from one run with canary users
planted in silo R (`fedrec.privacy_audit`), next to the ε its accountant claims.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from fedrec.commands.parsing import CommandParser, run_command
from fedrec.errors import ConfigError
from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE, verify
from fedrec.silo.state_dir import StateDir


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec audit` argument parser."""
    parser = CommandParser(prog="fedrec audit", description="Verify a silo's egress ledger, or audit DP empirically.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain and the ε totals of an egress ledger")
    v.add_argument("path", type=Path, help=f"the ledger ({EGRESS_LEDGER_FILE}) or the silo's state dir holding it")
    v.add_argument("--accountant", default="pld", choices=("pld", "rdp"), help="the silo's privacy.accountant")
    p = sub.add_parser("privacy", help="plant canary users in one silo, run the experiment, bound ε empirically")
    p.add_argument("--region", required=True, help="the silo to plant the canaries in")
    p.add_argument("--canaries", type=int, default=500, help="canary users, each included with probability 1/2")
    p.add_argument("--canary-interactions", type=int, default=10, help="interactions of a canary with its item")
    p.add_argument("--confidence", type=float, default=0.95, help="of the lower bound")
    p.add_argument("--seed", type=int, default=0, help="the auditor's coin flips")
    p.add_argument("--observe", default="releases", choices=("releases", "final"),
                   help="score by the silo's own releases (what a coordinator without SecAgg sees) or the final model")
    p.add_argument("--out", type=Path, default=None, help="output directory (default outputs/privacy-audit-TIME)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the audited experiment, as for `fedrec`")
    return parser


def _privacy(args: argparse.Namespace, console: Console) -> int:
    from datetime import datetime

    from fedrec.commands.run import compose_experiment
    from fedrec.privacy_audit import CanaryPlan, run_privacy_audit

    if not 0 < args.confidence < 1:
        raise ConfigError(f"--confidence {args.confidence} must be in (0, 1)")
    plan = CanaryPlan(region=args.region, canaries=args.canaries, interactions=args.canary_interactions,
                      seed=args.seed)
    exp = compose_experiment(args.overrides)
    out = args.out or Path("outputs") / f"privacy-audit-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    console.print(f"fedrec audit privacy: {plan.canaries} canaries in {plan.region}, model={exp.model.name}, "
                  f"privacy={exp.privacy.name} → {out}", highlight=False)
    run_privacy_audit(exp, out, plan, confidence=args.confidence, observe=args.observe, log=console.print)
    console.print(f"report: {out / 'privacy_audit.json'}", highlight=False)
    return 0


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
    return run_command("fedrec audit", build_parser(),
                       lambda args: _privacy(args, out) if args.command == "privacy" else _verify(args, out), argv)
