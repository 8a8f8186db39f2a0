"""`fedrec leave RUN_DIR --region R`: a region leaves the federation and serves its own line, without a gap.

The jurisdiction runs it on its own node: its own line starts from what it serves now (its serving pointer), is
trained `--rounds` local rounds on its own data, and only then replaces what it serves; nothing leaves the silo
(`fedrec.silo.departure`). RUN_DIR is the output directory of the last run it took part in (its `results.json`:
the public model and training settings); `--state-dir` / `--data-path` name the silo's own state and data on a
deployed node (default: the ones the simulated run kept for the region).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedrec.commands.parsing import CommandParser, run_command
from fedrec.errors import ConfigError
from fedrec.settings import RunSettings


def build_parser() -> argparse.ArgumentParser:
    """The `fedrec leave` argument parser."""
    parser = CommandParser(prog="fedrec leave",
                           description="A region leaves the federation: its own line from what it serves now, "
                                       "trained on its own data, then served (the old model serves until then).")
    parser.add_argument("run_dir", type=Path, help="output directory of the last run the region took part in")
    parser.add_argument("--region", required=True, help="the region that leaves")
    parser.add_argument("--rounds", type=int, default=1, help="local rounds to train its own line first (default 1)")
    parser.add_argument("--state-dir", type=Path, default=None, help="the silo's state dir (default: the run's)")
    parser.add_argument("--data-path", type=Path, default=None, help="the silo's data file (default: the run's)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the run's)")
    return parser


def _settings(run_dir: Path) -> RunSettings:
    from fedrec.run_exposure import run_settings

    if not (run_dir / "results.json").is_file():
        raise ConfigError(f"{run_dir / 'results.json'} not found: give the output directory of a finished run")
    try:
        return run_settings(run_dir)
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the run's settings from {run_dir / 'results.json'} ({exc})") from exc


def leave_main(argv: list[str]) -> int:
    """Entry point of `fedrec leave`: 0, or 2 on a user mistake."""

    def handle(args: argparse.Namespace) -> int:
        from fedrec.divestment.leave import leave

        out = leave(_settings(args.run_dir), args.region, rounds=args.rounds, state_dir=args.state_dir,
                    data_path=args.data_path, seed=args.seed)
        print(f"{args.region} left the federation: serves {out.served_after} (was {out.served_before}); "
              f"{out.rounds} local round(s), {out.metric} on validation {out.valid_before:.4f} -> "
              f"{out.valid_after:.4f}")
        print(json.dumps(out.to_dict(), sort_keys=True))
        return 0

    return run_command("fedrec leave", build_parser(), handle, argv)
