"""One parser style for every `fedrec` command: argparse, one-line errors, exit status 0 / 1 / 2.

A user mistake (bad arguments, a missing file, a bad config) prints `fedrec COMMAND: error: ...` on one line
to stderr and returns 2, never a traceback; `--help` returns 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from fedrec.errors import FedrecError


class UsageError(Exception):
    """An argparse complaint, raised instead of exiting so the command prints one line and returns 2."""


class CommandParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors raise `UsageError` (its subparsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def run_command(prog: str, parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int],
                argv: Sequence[str]) -> int:
    """Parse `argv`, call `handler`; a usage or user error is one line on stderr and status 2."""
    try:
        return handler(parser.parse_args(list(argv)))
    except (UsageError, FedrecError, OSError) as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
