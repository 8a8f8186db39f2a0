"""`fedrec audit partners`: did every version respect its contributors' partners, did the coordinator tell the truth.

Inputs: a run's registry (every version with its contributors, each id a hash over them), the silos' egress
ledgers (each training reply with the version it trained on and the round's members the coordinator declared),
and each jurisdiction's `partners` (its regime entry or node config). Violations:
- a version whose contributors include a pair that one of them does not allow (its partners);
- a round whose declared members differ between silos (the coordinator told them different coalitions) within one
  coalition line (a run with `federation.coalitions` trains one line per coalition, each silo records the line);
- a silo's update in a round whose resulting version (the child, in the registry, of the version it trained on)
  records a contributor outside the members the silo was told: the evidence a lying coordinator leaves;
- a silo's update trained on a version whose line (in the registry, back to its root) a region outside its
  partners contributed to, or on a version of a run the registry records that the registry does not hold.
A silo declines forbidden coalitions and lineages itself (`fedrec.silo.coalition`); this finds what it could not
see: a coordinator that lied to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedrec.errors import ConfigError
from fedrec.silo.egress_ledger import EgressEntry, EgressLedger
from fedrec.versions import ModelRegistry, ModelVersion


@dataclass(frozen=True)
class CoalitionReport:
    """What the audit found: `violations` (empty: the rule held) and what it looked at."""

    violations: list[str]
    versions: int
    entries: int

    @property
    def ok(self) -> bool:
        """True when no version and no declaration broke a jurisdiction's partners rule."""
        return not self.violations


def audit_coalitions(registry_root: Path, ledgers: Mapping[str, Path],
                     partners: Mapping[str, tuple[str, ...] | list[str] | None]) -> CoalitionReport:
    """Check the registry's versions against `partners` and the silos' ledgers (region → file) against the registry."""
    versions = ModelRegistry(registry_root, create=False).list()
    violations = [*_version_violations(versions, partners)]
    entries: dict[str, list[EgressEntry]] = {}
    for region, path in ledgers.items():
        if not Path(path).is_file():
            raise ConfigError(f"no egress ledger for {region} at {path}")
        try:
            entries[region] = [e for e in EgressLedger(Path(path)).entries() if e.kind == "train"]
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    violations += _declaration_violations(entries)
    violations += _lineage_violations(entries, versions)
    violations += _ancestry_violations(entries, versions, partners)
    return CoalitionReport(violations, len(versions), sum(len(e) for e in entries.values()))


def _version_violations(versions: list[ModelVersion], partners: Mapping[str, tuple[str, ...] | list[str] | None]
                        ) -> list[str]:
    out = []
    for v in versions:
        for region in v.contributors:
            allowed = partners.get(region)
            if allowed is None:
                continue
            if bad := sorted(set(v.contributors) - set(allowed) - {region}):
                out.append(f"version {v.short_id} (round {v.round}) has contributors {list(v.contributors)}: "
                           f"{region}'s partners ({', '.join(allowed) or 'none'}) do not allow {bad}")
    return out


def _declaration_violations(entries: Mapping[str, list[EgressEntry]]) -> list[str]:
    told: dict[tuple[str, int, str], dict[str, tuple[str, ...]]] = {}
    for region, mine in entries.items():
        for e in mine:
            if e.members is not None:
                told.setdefault((e.run_id, e.server_round, e.coalition or ""), {})[region] = tuple(sorted(e.members))
    out = []
    for (run_id, rnd, line), by_region in sorted(told.items()):
        if len(set(by_region.values())) > 1:
            said = "; ".join(f"{r} was told {list(m)}" for r, m in sorted(by_region.items()))
            where = f"run {run_id} round {rnd}" + (f" line {line}" if line else "")
            out.append(f"{where}: the coordinator declared different members to different silos ({said})")
    return out


def _lineage_violations(entries: Mapping[str, list[EgressEntry]], versions: list[ModelVersion]) -> list[str]:
    children: dict[tuple[str, int], list[ModelVersion]] = {}
    for v in versions:
        if v.parent is not None:
            children.setdefault((v.parent, v.round), []).append(v)
    out = []
    for region, mine in sorted(entries.items()):
        for e in mine:
            if e.declined or e.members is None or not e.version:
                continue
            for child in children.get((e.version, e.server_round), []):
                if extra := sorted(set(child.contributors) - set(e.members)):
                    out.append(f"{region} was told round {e.server_round}'s members were {sorted(e.members)}, but "
                               f"version {child.short_id} made in that round records contributors "
                               f"{list(child.contributors)} ({extra} undeclared)")
    return out


def _ancestry_violations(entries: Mapping[str, list[EgressEntry]], versions: list[ModelVersion],
                         partners: Mapping[str, tuple[str, ...] | list[str] | None]) -> list[str]:
    """Updates a silo with partners released on a line a forbidden region shaped, or on an unregistered version."""
    by_id = {v.id: v for v in versions}
    runs = {e.run_id for mine in entries.values() for e in mine if e.version in by_id}  # runs of this registry
    out = []
    for region, mine in sorted(entries.items()):
        allowed = partners.get(region)
        if allowed is None:
            continue
        for e in mine:
            if e.declined or not e.version:
                continue
            if e.version not in by_id:
                if e.run_id in runs:
                    out.append(f"{region} trained round {e.server_round} of run {e.run_id} on version "
                               f"{e.version[:16]}, which the registry does not hold (the coordinator sent a version "
                               "it did not register)")
                continue
            shaped: set[str] = set()
            v: ModelVersion | None = by_id[e.version]
            seen: set[str] = set()
            while v is not None and v.id not in seen:
                seen.add(v.id)
                shaped |= set(v.contributors)
                v = by_id.get(v.parent) if v.parent is not None else None
            if bad := sorted(shaped - set(allowed) - {region}):
                out.append(f"{region} trained round {e.server_round} on version {e.version[:16]}, whose line "
                           f"{bad} contributed to: {region}'s partners ({', '.join(allowed) or 'none'}) do not allow "
                           "them")
    return out
