"""The `fedrec` command: a Hydra app composing `conf/` into an `ExperimentConfig` and running it.

Hydra stays here, at the entry point. User mistakes (bad data, bad config) print one clear message and
exit with status 2 instead of a stack trace.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from fedrec.errors import FedrecError

# `fedrec --help` prints this, then Hydra's own help (config groups and the composed config).
COMMANDS = """\
fedrec: one recommender trained across sovereign data silos (Flower + Hydra).

Commands:
  fedrec [OVERRIDES]                        run an experiment, e.g. `fedrec model=twotower federation.rounds=30`
                                            (`-m` sweeps); output in outputs/DATE/TIME/
  fedrec models list|show|diff|export       inspect and export global model versions (default: the newest run's)
  fedrec audit verify PATH                  verify a silo's egress ledger (hash chain and ε totals)
  fedrec deploy local|certs|key|check-node  run and check one Flower SuperNode per jurisdiction
`fedrec COMMAND --help` lists a command's options; the experiment's config groups follow.
"""
HELP_FLAGS = ("--help", "-h")
SUBCOMMANDS = ("models", "audit", "deploy")


def conf_dir() -> str:
    """`conf/` next to the package (editable install, repo checkout) or inside it (wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise FileNotFoundError(f"fedrec's conf/ directory not found next to {here}")


def progress_enabled(setting: Any, env: dict[str, str]) -> bool:
    """`auto` shows progress unless running under CI (CI=true)."""
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() in ("true", "false"):
        return str(setting).lower() == "true"
    return env.get("CI", "").lower() not in ("true", "1")


def run(cfg: DictConfig, out_dir: Path, console: Console) -> dict[str, Any]:
    """Compose → validate → run → print; returns the results dict."""
    from fedrec.config import experiment_from_dict  # imports torch: not needed for `fedrec --help`
    from fedrec.experiment import run_experiment
    from fedrec.report import print_summary, round_progress

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    resolved: dict[str, Any] = {str(k): v for k, v in container.items()}
    exp = experiment_from_dict({k: v for k, v in resolved.items() if k not in ("progress", "experiment")})
    (out_dir).mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    show = progress_enabled(resolved.get("progress", "auto"), dict(os.environ))
    console.print(f"fedrec: dataset={exp.dataset.name} model={exp.model.name} strategy={exp.strategy.name} "
                  f"rounds={exp.federation.rounds} privacy={exp.privacy.name}"
                  + (f" (ε={exp.privacy.epsilon:g} per silo)" if exp.privacy.name != "none" else "") + f" → {out_dir}")
    with round_progress(exp.federation.rounds, enabled=show, console=console) as on_round:
        results = run_experiment(exp, out_dir, on_round=on_round, resolved_config=resolved, log=console.print)
    print_summary(results, console)
    from fedrec.plots import save_figures

    figures = save_figures(results, out_dir)
    console.print(f"results: {out_dir / 'results.json'}; figures: {', '.join(p.name for p in figures)}")
    return results


@hydra.main(version_base=None, config_path=conf_dir(), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    console = Console()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run(cfg, out_dir, console)
    except FedrecError as exc:
        console.print(f"[bold red]fedrec: error:[/] {exc}", highlight=False)
        sys.exit(2)


def audit_main(argv: list[str], console: Console | None = None) -> int:
    """`fedrec audit verify PATH`: check a silo's egress ledger (file or state dir); 0 ok, 1 tampered, 2 misuse."""
    import argparse

    from fedrec.silo.egress_ledger import EGRESS_LEDGER_FILE, verify
    from fedrec.silo.state_dir import StateDir

    console = console or Console()
    parser = argparse.ArgumentParser(prog="fedrec audit", description="Verify a silo's egress ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain and the ε totals of an egress ledger")
    v.add_argument("path", type=Path, help=f"the ledger ({EGRESS_LEDGER_FILE}) or the silo's state dir holding it")
    v.add_argument("--accountant", default="pld", choices=("pld", "rdp"), help="the silo's privacy.accountant")
    args = parser.parse_args(argv)
    path = StateDir(args.path).egress_ledger if args.path.is_dir() else args.path
    if not path.is_file():
        console.print(f"[bold red]fedrec audit: error:[/] no egress ledger at {path}", highlight=False)
        return 2
    report = verify(path, accountant=args.accountant)
    if report.ok:
        console.print(f"OK {path}: {report.entries} entries chained; {report.releases} DP releases adding up to "
                      f"ε={report.epsilon_recomputed:.4f} (reported {report.epsilon_reported:.4f})", highlight=False)
        return 0
    console.print(f"[bold red]TAMPERED or inconsistent[/] {path}:", highlight=False)
    for problem in report.problems:
        console.print(f"  - {problem}", highlight=False)
    return 1


def wants_help(argv: list[str]) -> bool:
    """`fedrec --help` / `-h` (with or without overrides), not `fedrec models --help` nor `--hydra-help`."""
    return bool(argv) and argv[0] not in SUBCOMMANDS and any(arg in HELP_FLAGS for arg in argv)


def main() -> None:
    """Console-script entry point: `fedrec audit|models|deploy ...`, else the Hydra experiment app."""
    argv = sys.argv[1:]
    if argv and argv[0] == "audit":
        sys.exit(audit_main(argv[1:]))
    if argv and argv[0] == "deploy":
        from fedrec.commands.deploy import deploy_main

        sys.exit(deploy_main(argv[1:]))
    if argv and argv[0] == "models":
        from fedrec.versions import models_main

        sys.exit(models_main(argv[1:]))
    if any(arg in (*HELP_FLAGS, "--hydra-help") for arg in argv):
        try:
            if wants_help(argv):
                # Our commands first, then Hydra's help (it exits 0), naming the app `fedrec`, not this module.
                # The override goes first: argparse takes no override after `--help` once others preceded it.
                print(COMMANDS, flush=True)
                sys.argv.insert(1, "hydra.help.app_name=fedrec")
            _hydra_main()
        except BrokenPipeError:  # `fedrec --help | head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
    _hydra_main()


if __name__ == "__main__":
    main()
