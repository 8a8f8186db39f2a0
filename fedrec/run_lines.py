"""A run's lines and regions as its run config proposes them: coalitions, the lines it trains, who takes part.

`coalitions` makes one global line per coalition (`fedrec.coordinator.coalition_lines`), `train-lines` trains only
some of them, `exclude-regions` leaves regions out of the run, and `divestment` records what a divestment run removed
(`fedrec.divestment`). Each function reads a `RunSettings` (`fedrec.settings`, which checks a coalition run with
`check_coalition_run` as it is made) and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedrec.errors import ConfigError
from fedrec.run_config_values import json_object

if TYPE_CHECKING:
    from fedrec.settings import RunSettings


def coalition_members(s: RunSettings) -> dict[str, list[str]]:
    """The run's coalitions, name → regions, in name order ({}: one line of every region)."""
    raw = json_object("coalitions", s.coalitions)
    return {str(k): list(v) if isinstance(v, list) else v for k, v in sorted(raw.items())}


def coalitions_of(s: RunSettings, region: str) -> list[str]:
    """The coalitions `region` trains in, in name order ([] when the run has none)."""
    return [name for name, members in coalition_members(s).items() if region in members]


def trained_lines(s: RunSettings) -> list[str]:
    """The coalition lines this run trains (`train-lines`, else all), in name order."""
    names = [n.strip() for n in s.train_lines.split(",") if n.strip()]
    return [n for n in coalition_members(s) if not names or n in names]


def check_coalition_run(s: RunSettings) -> None:
    """What a run with coalitions cannot (yet) combine with, said before anything runs."""
    coalitions = coalition_members(s)
    named = [n.strip() for n in s.train_lines.split(",") if n.strip()]
    if unknown := sorted(set(named) - set(coalitions)):
        raise ConfigError(f"train-lines names {unknown}, not lines of this run (federation.coalitions: "
                          f"{sorted(coalitions)})")
    if not coalitions:
        return
    # each line keeps its own contributions (keep-contributions) and continues its own users (users-from: the
    # earlier run's key; each silo reads that run's state of the same line); one start version is one line's
    if s.start_version and len(trained_lines(s)) != 1:
        raise ConfigError("federation.coalitions cannot be combined with start-version when more than one line "
                          "trains (a start version belongs to one line): continue one line at a time (train-lines)")


def check_coalition_regions(s: RunSettings, regions: list[str]) -> None:
    """Every coalition names regions that take part, and every region that takes part is in one."""
    coalitions = coalition_members(s)
    if not coalitions:
        return
    for name, members in coalitions.items():
        if unknown := sorted(set(members) - set(regions)):
            raise ConfigError(f"federation.coalitions.{name} names region(s) {unknown} that do not take part; "
                              f"this run's regions: {regions}")
    if alone := [r for r in regions if not coalitions_of(s, r)]:
        raise ConfigError(f"region(s) {alone} are in no coalition (federation.coalitions): add them to one, or "
                          "leave them out of the run (federation.exclude_regions)")


def excluded_regions(s: RunSettings) -> list[str]:
    """`exclude-regions` as a list."""
    return [r.strip() for r in s.exclude_regions.split(",") if r.strip()]


def participating_regions(s: RunSettings, regions: list[str]) -> list[str]:
    """The world's regions that take part in this run, in the world's order (the simulation's nodes)."""
    excluded = excluded_regions(s)
    if unknown := sorted(set(excluded) - set(regions)):
        raise ConfigError(f"exclude-regions names unknown region(s) {unknown}; the world's regions: {regions}")
    left = [r for r in regions if r not in excluded]
    if not left:
        raise ConfigError(f"exclude-regions={s.exclude_regions!r} leaves no region to train")
    return left


def divestment_record(s: RunSettings) -> dict[str, Any]:
    """The parsed `divestment` record ({} for a run that divests nothing)."""
    return json_object("divestment", s.divestment)


def line_key(run_key: str, coalition: str) -> str:
    """What a silo keys one coalition line's state and releases by: `RUN@COALITION` ("" coalition: the run key).

    Run keys and coalition names are letters, digits, '-', '_' and '.', so '@' cannot make two lines' keys meet.
    """
    return f"{run_key}@{coalition}" if coalition else run_key
