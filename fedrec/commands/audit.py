"""`fedrec audit verify PATH`: check a silo's egress ledger (its hash chain and ε totals).

`fedrec audit partners RUN_DIR`: every version's contributors against each jurisdiction's partners, and every
coalition the coordinator declared to the silos against the others' and the registry's (`fedrec.coalition_audit`).

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
    c = sub.add_parser("partners", help="check versions and declared coalitions against each region's partners")
    c.add_argument("run_dir", type=Path, nargs="?",
                   help="a finished run's output directory (its registry, silos' ledgers and regimes)")
    c.add_argument("--registry", type=Path, default=None, help="the run's registry (default: the run's)")
    c.add_argument("--state-dir", action="append", default=[], metavar="REGION=DIR",
                   help="a silo's state dir holding its egress ledger (repeatable; default: the run's silos)")
    c.add_argument("--regime", type=Path, default=None,
                   help="YAML or JSON mapping region (or default) to its policy, as conf/regime/ (default: the "
                        "policies the run recorded)")
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


def _partners(args: argparse.Namespace, console: Console) -> int:
    from fedrec.coalition_audit import audit_coalitions
    from fedrec.regime_report import run_regimes, run_registry

    recorded = run_regimes(args.run_dir) if args.run_dir is not None else {}
    registry = args.registry or (run_registry(args.run_dir) if args.run_dir is not None else None)
    if registry is None:
        raise ConfigError("give a run's output directory, or --registry DIR with --state-dir REGION=DIR")
    states = {r: Path(row["state_dir"]) for r, row in recorded.items() if row.get("state_dir")}
    for item in args.state_dir:
        region, sep, where = item.partition("=")
        if not sep or not region or not where:
            raise ConfigError(f"--state-dir {item!r}: give REGION=DIR")
        states[region] = Path(where)
    partners = {r: (row.get("policy") or {}).get("partners") for r, row in recorded.items()}
    if args.regime is not None:
        partners.update(_regime_partners(args.regime, set(states) | set(partners)))
    ledgers = {r: StateDir(d).egress_ledger for r, d in states.items() if StateDir(d).egress_ledger.exists()}
    report = audit_coalitions(registry, ledgers, partners)
    rules = ", ".join(f"{r}: {', '.join(p) or 'none'}" for r, p in sorted(partners.items()) if p is not None)
    if report.ok:
        console.print(f"OK: {report.versions} versions and {report.entries} training replies of "
                      f"{len(ledgers)} silos respect every partners rule ({rules or 'no region sets partners'})",
                      highlight=False)
        return 0
    console.print(f"[bold red]VIOLATIONS[/] ({len(report.violations)}; partners: {rules or 'none set'}):",
                  highlight=False)
    for line in report.violations:
        console.print(f"  - {line}", highlight=False)
    return 1


def _regime_partners(path: Path, regions: set[str]) -> dict[str, tuple[str, ...] | None]:
    """Each region's partners from a regime file (YAML or JSON, as conf/regime/)."""
    import yaml

    from fedrec.silo.policy import node_partners
    from fedrec.silo.regime import Regimes

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"--regime {path}: not YAML or JSON ({exc})") from exc
    regimes = Regimes.parse(raw)
    return {r: node_partners(regimes.entry_for(r)) for r in regions | (set(regimes.entries) - {"default"})}


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
    handlers = {"privacy": _privacy, "partners": _partners, "verify": _verify}
    return run_command("fedrec audit", build_parser(), lambda args: handlers[args.command](args, out), argv)
