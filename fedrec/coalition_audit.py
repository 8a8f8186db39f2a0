"""`fedrec audit partners`: did every version respect its contributors' partners, did the coordinator tell the truth.

Inputs: a run's registry (every version with its contributors, each id a hash over them), the silos' egress
ledgers (each training reply with the version it trained on and the round's members the coordinator declared),
and each jurisdiction's `partners` (its regime entry or node config). Violations:
- a version whose contributors include a pair that one of them does not allow (its partners);
- a round whose declared members differ between silos (the coordinator told them different coalitions) within one
  coalition line (a run with `federation.coalitions` trains one line per coalition, each silo records the line);
- a silo's update in a round whose resulting version (the child, in the registry, of the version it trained on)
  records a contributor outside the members the silo was told: the evidence a lying coordinator leaves.
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
