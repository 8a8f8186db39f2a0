"""Questions about a line of versions: which regions shaped it, and the last version a region never touched."""

from __future__ import annotations

from collections.abc import Iterable

from fedrec.versions.store import ModelRegistry
from fedrec.versions.version import ModelVersion


def shaped_by(registry: ModelRegistry, head: str) -> dict[str, list[int]]:
    """Per region, the rounds of `head`'s line (back to its root, or to a divested version) it contributed to."""
    out: dict[str, list[int]] = {}
    for v in registry.lineage(head):
        for region in v.contributors:
            out.setdefault(region, []).append(v.round)
    return {r: sorted(rounds) for r, rounds in sorted(out.items())}


def last_untouched(registry: ModelRegistry, head: str, regions: Iterable[str]) -> ModelVersion:
    """The newest version of `head`'s line that none of `regions` contributed to, directly or through an ancestor.

    Walks from the root up: the answer is the last version before the first one any of `regions` contributed
    to (the root itself when they took part from round 1; `head` when they never took part).
    """
    removed = set(regions)
    line = list(reversed(registry.lineage(head)))  # root first
    untouched = line[0]
    if removed & set(untouched.contributors):  # a root made with them (not a run's version 0): nothing to keep
        raise ValueError(f"the line's root {untouched.short_id} was made with "
                         f"{sorted(removed & set(untouched.contributors))}")
    for v in line[1:]:
        if removed & set(v.contributors):
            break
        untouched = v
    return untouched
