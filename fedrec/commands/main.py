"""The `fedrec` command: `models`, `audit`, `deploy`, `collect`, `regimes`, `divest`, `leave`, else Hydra.

Each command lives in its own module of this package and parses its arguments the same way
(`fedrec.commands.parsing`); `fedrec --help` lists them all before Hydra's own help.
"""

from __future__ import annotations

import os
import sys

# `fedrec --help` prints this, then Hydra's own help (config groups and the composed config).
COMMANDS = """\
fedrec: one recommender trained across sovereign data silos (Flower + Hydra).

Commands:
  fedrec [OVERRIDES]                        run an experiment, e.g. `fedrec model=twotower federation.rounds=30`
                                            (`-m` sweeps); output in outputs/DATE/TIME/
  fedrec collect SWEEP_DIR                  a sweep's results in one table (CSV, Parquet), mean ± CI over seeds
  fedrec models list|show|diff|export       inspect and export global model versions (default: the newest run's)
  fedrec audit verify PATH                  verify a silo's egress ledger (hash chain and ε totals)
  fedrec audit privacy --region R [OVR]     empirical ε lower bound from canaries planted in silo R
  fedrec audit partners RUN_DIR             every version and declared coalition against each region's partners
  fedrec regimes RUN_DIR                    each jurisdiction's policy and the ε its ledgers say it spent
  fedrec divest REGION [--run RUN_DIR]      rebuild a run's global line without REGION (--method exact|fast)
  fedrec leave RUN_DIR --region R           a region leaves: its own line, served once trained (no gap)
  fedrec deploy local|certs|key|check-node  run and check one Flower SuperNode per jurisdiction
`fedrec COMMAND --help` lists a command's options; the experiment's config groups follow.
"""
HELP_FLAGS = ("--help", "-h")
SUBCOMMANDS = ("models", "audit", "deploy", "collect", "regimes", "divest", "leave")


def wants_help(argv: list[str]) -> bool:
    """`fedrec --help` / `-h` (with or without overrides), not `fedrec models --help` nor `--hydra-help`."""
    return bool(argv) and argv[0] not in SUBCOMMANDS and any(arg in HELP_FLAGS for arg in argv)


OPTUNA_PLUGIN = "hydra_plugins.hydra_optuna_sweeper"


def missing_tuning_plugin(argv: list[str]) -> str | None:
    """Why `fedrec` cannot run these overrides (a tuning study without Hydra's Optuna sweeper), or None."""
    import importlib.util

    wants = any(a.removeprefix("+") in ("experiment=study_tune", "hydra/sweeper=optuna") for a in argv)
    if not wants or importlib.util.find_spec(OPTUNA_PLUGIN) is not None:
        return None
    return ("the tuning study uses Hydra's Optuna sweeper, which is not installed: pip install -e \".[tune]\" "
            "(or pip install hydra-optuna-sweeper)")


def main() -> None:
    """Console-script entry point: `fedrec audit|models|deploy ...`, else the Hydra experiment app."""
    argv = sys.argv[1:]
    if argv and argv[0] == "audit":
        from fedrec.commands.audit import audit_main

        sys.exit(audit_main(argv[1:]))
    if argv and argv[0] == "deploy":
        from fedrec.commands.deploy import deploy_main

        sys.exit(deploy_main(argv[1:]))
    if argv and argv[0] == "collect":
        from fedrec.commands.collect import collect_main

        sys.exit(collect_main(argv[1:]))
    if argv and argv[0] == "regimes":
        from fedrec.commands.regimes import regimes_main

        sys.exit(regimes_main(argv[1:]))
    if argv and argv[0] == "divest":
        from fedrec.commands.divest import divest_main

        sys.exit(divest_main(argv[1:]))
    if argv and argv[0] == "leave":
        from fedrec.commands.leave import leave_main

        sys.exit(leave_main(argv[1:]))
    if argv and argv[0] == "models":
        from fedrec.commands.models import models_main

        sys.exit(models_main(argv[1:]))
    if why := missing_tuning_plugin(argv):
        print(f"fedrec: error: {why}", file=sys.stderr)
        sys.exit(2)
    from fedrec.commands.run import hydra_main  # Hydra: not needed by the commands above

    if any(arg in (*HELP_FLAGS, "--hydra-help") for arg in argv):
        try:
            if wants_help(argv):
                # Our commands first, then Hydra's help (it exits 0), naming the app `fedrec`, not this module.
                # The override goes first: argparse takes no override after `--help` once others preceded it.
                print(COMMANDS, flush=True)
                sys.argv.insert(1, "hydra.help.app_name=fedrec")
            hydra_main()
        except BrokenPipeError:  # `fedrec --help | head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
    hydra_main()


if __name__ == "__main__":
    main()
