"""A simulation's regimes: each jurisdiction's own policy as data (`conf/regime/`), merged into its node config.

In deployment a jurisdiction's policy is its SuperNode's node config. In a simulation the researcher owns every
silo, so a simulated silo's node config is Flower's partition keys plus its regime entry (the region's own entry,
else `default`, else nothing), and `SiloIdentity.from_node_config` reads it exactly as it reads a deployed node's:
the same keys (`REGIME_KEYS`), the same checks. A regime never travels in the run config: it is the silos' own
policy, not the coordinator's proposal; the engines hand it to `make_client_app` in the process that runs the silos.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedrec.errors import ConfigError
from fedrec.settings import RunSettings
from fedrec.silo.policy import REGIME_KEYS, check_policy, check_unknown_keys, partition_region

DEFAULT_ENTRY = "default"
"""The regime entry of every region not named."""


@dataclass(frozen=True)
class Regimes:
    """Region (or `default`) → that jurisdiction's policy, in node-config keys (`partners`, `epsilon-budget`, ...)."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Regimes:
        """Check every entry as a node config's policy keys; a `ConfigError` names the region and the key."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ConfigError(f"regime must map region names (or 'default') to policies, got {raw!r}")
        entries: dict[str, dict[str, Any]] = {}
        for region, entry in raw.items():
            if entry is None:
                entry = {}
            if not isinstance(entry, Mapping):
                raise ConfigError(f"regime.{region} must be a policy such as {{epsilon-budget: 4, partners: [eu]}}, "
                                  f"got {entry!r}")
            policy = {str(k): list(v) if isinstance(v, tuple) else v for k, v in entry.items()}
            check_unknown_keys(policy, REGIME_KEYS, where=f"regime.{region}")
            try:
                check_policy(str(region), policy)
            except ConfigError as exc:
                raise ConfigError(f"regime.{region}: {exc}") from exc
            entries[str(region)] = policy
        return cls(entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def entry_for(self, region: str) -> dict[str, Any]:
        """The region's own entry, else `default`, else none (entries are not merged: one policy per region)."""
        return dict(self.entries.get(region, self.entries.get(DEFAULT_ENTRY, {})))

    def check_regions(self, regions: Iterable[str]) -> None:
        """Every named entry is a region of the world (a typo must not leave a jurisdiction without its policy)."""
        unknown = sorted(set(self.entries) - {DEFAULT_ENTRY} - set(regions))
        if unknown:
            raise ConfigError(f"regime names unknown region(s) {unknown}; this world's regions: {sorted(regions)}")
        for region in regions:  # partners name regions too
            partners = self.entry_for(region).get("partners")
            names = partners.split(",") if isinstance(partners, str) else partners or []
            if bad := sorted({n.strip() for n in names if n.strip()} - set(regions)):
                raise ConfigError(f"regime for {region}: partners {bad} are not regions of this world "
                                  f"{sorted(regions)}")

    def node_config(self, node_config: Mapping[str, Any], settings: RunSettings) -> dict[str, Any]:
        """A simulated node's effective node config: Flower's partition keys plus its region's regime entry.

        A deployed node config (`region`) is the jurisdiction's own and is returned unchanged.
        """
        out = dict(node_config)
        if not self.entries or "partition-id" not in out or "region" in out:
            return out
        entry = self.entry_for(partition_region(settings, int(out["partition-id"])))
        if both := sorted(set(entry) & set(out)):
            raise ConfigError(f"node config and regime both set {both}: a simulated silo takes its policy from one")
        return {**out, **entry}
