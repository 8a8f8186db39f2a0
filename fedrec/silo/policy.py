"""What a jurisdiction decides for itself (its node config): its data, its state, its privacy policy.

The run config is the coordinator's proposal (`settings.RunSettings`); this is the silo's own policy, and
a proposal may only tighten it: the data path and state dir come from here only (in deployment), the ε
budget and the largest δ are the jurisdiction's, and so are its secure-aggregation requirement, the partners its
law allows, its adoption policy and how long it keeps its ledgers. `docs/running-across-jurisdictions.md` has the
table; in a simulation each silo's policy comes from its regime entry (`fedrec.silo.regime`, `conf/regime/`).
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedrec.config import AdoptionPolicy
from fedrec.errors import ConfigError, FedrecError
from fedrec.privacy.plan import DEFAULT_MAX_DELTA
from fedrec.run_lines import participating_regions
from fedrec.settings import RunSettings, read_manifest, silo_state_root


@dataclass(frozen=True)
class SiloIdentity:
    """Which jurisdiction this node is, where its data and its state live, and its own privacy policy.

    The coordinator proposes (the run config); the jurisdiction decides (this, from the node config), and a
    proposal may only tighten the jurisdiction's policy, never loosen it.

    Deployment (the node config names `region`): `data-path` and `state-dir` come from the node config only,
    never from the run config a coordinator sends (a coordinator that could point the ledger elsewhere could
    reset the budget). Optional policy keys: `epsilon-budget` (the jurisdiction's ε cap; the run can only
    lower it, and without user-level DP the silo refuses to train), `max-delta` (the largest δ it accepts;
    its budget ledger is kept at this δ), `require-secure-aggregation` (refuse updates in the clear),
    `secagg-min-contributors` (mask or help unmask only among at least this many; the run's value if larger), and an
    adoption policy: `adopt="always"|"if_better"|"adapt"` (+ `adopt-metric`, `adopt-margin`; `adapt`:
    `adapt-rounds`, `adapt-mu="0,1,10,100"`, `adapt-confidence`; `always` / `if_better`: `guard=false`,
    `guard-k`, `guard-max-exposure`, `guard-support` for the region-side guard),
    `pin="VERSION"` or `fork="VERSION"|ROUND` (+ `contribute=false`), overriding the run config's `adoption` entry;
    `partners="eu,na"` (the regions its law lets it federate with: `fedrec.silo.coalition`), `serve-coalition`
    (the coalition line it serves in a run with several) and `ledger-retention-days` (recorded and shown only).
    Simulation (`partition-id`, the researcher owns every silo): the region is the manifest's entry, data
    comes from `<data-dir>`, state from `<state-dir or output-dir/silo-state>/<region>`, and the policy keys from
    the region's regime entry (`fedrec.silo.regime`), merged into the node config before this reads it.
    """

    region: str
    data_path: Path
    state_dir: Path | None = None
    epsilon_budget: float | None = None
    policy: AdoptionPolicy = field(default_factory=AdoptionPolicy)
    max_delta: float | None = None
    require_secure_aggregation: bool = False
    secagg_min_contributors: int = 0
    deployed: bool = False
    partners: tuple[str, ...] | None = None
    """The regions this jurisdiction's law lets it federate with (None: any; `()`: none). `fedrec.silo.coalition`
    declines a round whose declared members, or the version it would build on, include any other."""
    serve_coalition: str | None = None
    """In a run with coalition lines (`federation.coalitions`): the line this region serves (None: its first lawful
    coalition in name order). A line it does not train in is a preflight error, never silently replaced."""
    ledger_retention_days: int | None = None
    """The least time, in days after their last entry, this jurisdiction keeps its ledgers. Recorded and shown
    (`fedrec regimes`); no fedrec command deletes a ledger, so there is nothing it could refuse."""

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any], settings: RunSettings) -> SiloIdentity:
        """Resolve the silo from the node config, with errors that say which key to set.

        A key no silo reads is refused, naming the nearest known key: a misspelt `epsilon_budget` would otherwise
        leave the jurisdiction without the privacy policy it meant to set.
        """
        check_unknown_keys(node_config, NODE_CONFIG_KEYS)
        if "region" in node_config:
            region = str(node_config["region"])
            if "data-path" not in node_config:
                raise ConfigError(f"silo {region!r}: node config has no data-path; a deployed silo reads its data "
                                  "only from where its own node config says (never from the run config)")
            path = Path(str(node_config["data-path"]))
            state_dir = Path(str(node_config["state-dir"])) if "state-dir" in node_config else None
        elif "partition-id" in node_config:
            region = partition_region(settings, int(node_config["partition-id"]))
            path = Path(settings.data_dir) / f"silo_{region}.npz"
            root = silo_state_root(settings)
            state_dir = root / region if root is not None else None
        else:
            raise ConfigError("node config has neither 'region' nor 'partition-id': set region=\"NAME\"")
        if not path.exists():
            raise ConfigError(f"silo data for region {region!r} not found at {path}: set node config data-path")
        budget, max_delta, secure, crowd = _privacy_policy(node_config)
        return cls(region=region, data_path=path, state_dir=state_dir, epsilon_budget=budget,
                   policy=node_policy(region, node_config) or settings.policy_for(region), max_delta=max_delta,
                   require_secure_aggregation=secure, secagg_min_contributors=crowd, deployed="region" in node_config,
                   partners=node_partners(node_config), ledger_retention_days=_retention(node_config),
                   serve_coalition=_serve_coalition(node_config))

    @property
    def requires_dp(self) -> bool:
        """True when the jurisdiction set its own privacy policy (`NODE_DP_KEYS`): nothing leaves without DP."""
        return self.epsilon_budget is not None or self.max_delta is not None

    def delta_for(self, proposed: float) -> float:
        """The δ this silo's budget ledger is kept at, given the run's proposed δ.

        The jurisdiction's `max-delta` when it sets one (a smaller proposal only makes the run's σ larger),
        else the proposal itself. A proposal above the jurisdiction's maximum (`DEFAULT_MAX_DELTA` when it
        sets none) is refused: the coordinator may tighten δ, never loosen it.
        """
        cap = self.max_delta if self.max_delta is not None else DEFAULT_MAX_DELTA
        if proposed > cap:
            where = "its node config max-delta" if self.max_delta is not None else "the default maximum"
            raise PolicyRefusal(f"the run proposes δ={proposed:g} but jurisdiction {self.region!r} accepts at most "
                                f"δ={cap:g} ({where}): a run may tighten a silo's δ, never loosen it")
        return self.max_delta if self.max_delta is not None else proposed

    def describe(self, settings: RunSettings) -> dict[str, Any]:
        """The jurisdiction's effective policy for this run, JSON-ready (`fedrec regimes`, results.json).

        `epsilon_budget`: its own cap (None: it sets none); `run_epsilon`: what this run may spend (the smaller of
        the run's proposal and its cap; None without DP); `delta`: the δ its ledger is kept at under this run (None
        without DP or when the proposal exceeds what it accepts); `partners`: None for any.
        """
        p = settings.privacy_settings()
        try:
            delta = self.delta_for(p.delta) if p.enabled else None
        except PolicyRefusal:
            delta = None
        return {"epsilon_budget": self.epsilon_budget,
                "run_epsilon": p.budget_for(self.region, self.epsilon_budget) if p.enabled else None,
                "max_delta": self.max_delta if self.max_delta is not None else DEFAULT_MAX_DELTA,
                "delta": delta, "requires_dp": self.requires_dp,
                "partners": list(self.partners) if self.partners is not None else None,
                "require_secure_aggregation": self.require_secure_aggregation,
                "secagg_min_contributors": self.secagg_min_contributors,
                "adoption": {k: v for k, v in asdict(self.policy).items() if v is not None},
                "ledger_retention_days": self.ledger_retention_days, "serve_coalition": self.serve_coalition}

    def require_state_dir(self) -> Path:
        """The silo's state dir (ledgers, logs), or a clear error naming the setting."""
        if self.state_dir is None:
            where = ("node config state-dir (a deployed silo keeps its ledger where its own node config says)"
                     if self.deployed else "run-config state-dir or output-dir")
            raise ConfigError(f"silo {self.region!r} has no state dir for its privacy ledger: set {where}")
        return self.state_dir


def partition_region(settings: RunSettings, partition_id: int) -> str:
    """The region a simulated node stands for: the run's regions at its `partition-id`.

    The run's regions are the world's, less `exclude-regions`.
    """
    regions = participating_regions(settings, list(read_manifest(settings.data_dir)["regions"]))
    if not 0 <= partition_id < len(regions):
        raise ConfigError(f"partition-id {partition_id} but the run has {len(regions)} regions: run the simulation "
                          f"with exactly {len(regions)} supernodes (options.num-supernodes)")
    return str(regions[partition_id])


def check_unknown_keys(node_config: dict[str, Any], known: frozenset[str], where: str = "node config") -> None:
    """Refuse a key no silo reads, naming the nearest known key (a misspelt key would silently set nothing)."""
    if unknown := sorted(set(node_config) - known):
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key).replace("_", "-"), sorted(known), n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(hints)}; a silo reads only {', '.join(sorted(known))}")


def _privacy_policy(node_config: dict[str, Any]) -> tuple[float | None, float | None, bool, int]:
    """(epsilon-budget, max-delta, require-secure-aggregation, secagg-min-contributors), checked."""
    budget = _positive(node_config, "epsilon-budget")
    max_delta = _positive(node_config, "max-delta")
    if max_delta is not None and max_delta >= 1:
        raise ConfigError(f"node config max-delta={max_delta!r} must lie in (0, 1)")
    secure = node_config.get("require-secure-aggregation", False)
    if not isinstance(secure, bool):
        raise ConfigError(f"node config require-secure-aggregation={secure!r} must be true or false")
    crowd = node_config.get("secagg-min-contributors", 0)
    if isinstance(crowd, bool) or not isinstance(crowd, int) or crowd < 0:
        raise ConfigError(f"node config secagg-min-contributors={crowd!r} must be a whole number >= 0")
    return budget, max_delta, secure, crowd


def check_policy(region: str, node_config: dict[str, Any]) -> None:
    """Validate the policy keys of a node config or regime entry (no data path needed): a `ConfigError` if bad."""
    _privacy_policy(node_config)
    node_partners(node_config)
    _retention(node_config)
    _serve_coalition(node_config)
    node_policy(region, node_config)


def node_partners(node_config: dict[str, Any]) -> tuple[str, ...] | None:
    """`partners`: region names as a list or a comma-separated string ("" or []: none); None when not set."""
    value = node_config.get("partners")
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"node config partners={value!r} must list region names, e.g. \"eu,na\" or [eu, na]")
    names = [v.strip() for v in items]
    if isinstance(value, str) and not value.strip():
        names = []
    if bad := [n for n in names if not n or any(c.isspace() or c in ",:" for c in n)]:
        raise ConfigError(f"node config partners={value!r}: {bad} is not a region name (comma-separated names)")
    return tuple(sorted(set(names)))


def _serve_coalition(node_config: dict[str, Any]) -> str | None:
    """`serve-coalition`: a coalition name (letters, digits, '-', '_', '.'); None when not set."""
    value = node_config.get("serve-coalition")
    if value is None:
        return None
    if not isinstance(value, str) or not value or not all(c.isalnum() or c in "-_." for c in value):
        raise ConfigError(f"node config serve-coalition={value!r} must name a coalition (letters, digits, '-', '_', "
                          "'.'), e.g. \"atlantic\"")
    return value


def _retention(node_config: dict[str, Any]) -> int | None:
    value = node_config.get("ledger-retention-days")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"node config ledger-retention-days={value!r} must be a whole number of days >= 0")
    return value


NODE_DP_KEYS = ("epsilon-budget", "max-delta")
"""Node-config keys by which a jurisdiction sets its own privacy policy (and so requires user-level DP)."""


class PolicyRefusal(FedrecError):
    """The run asks for something the jurisdiction's own policy does not allow (the silo declines)."""


def _positive(node_config: dict[str, Any], key: str) -> float | None:
    value = node_config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"node config {key}={value!r} must be a number > 0")
    return float(value)


NODE_POLICY_KEYS = {"adopt": "adopt", "adopt-metric": "metric", "adopt-margin": "margin", "pin": "pin",
                    "fork": "fork", "contribute": "contribute", "adapt-rounds": "adapt_rounds", "adapt-mu": "mu",
                    "adapt-confidence": "confidence", "guard": "guard", "guard-k": "guard_k",
                    "guard-max-exposure": "guard_max_exposure",
                    "guard-support": "guard_support"}

REGIME_KEYS = frozenset({*NODE_DP_KEYS, "require-secure-aggregation", "secagg-min-contributors", "partners",
                         "ledger-retention-days", "serve-coalition", *NODE_POLICY_KEYS})
"""The jurisdiction's policy keys: what a simulation's regime entry (`conf/regime/`) may set."""
NODE_CONFIG_KEYS = frozenset({"region", "data-path", "state-dir", "partition-id", "num-partitions", *REGIME_KEYS})
"""Every node-config key a silo reads (`partition-id` / `num-partitions`: set by Flower's simulation engine)."""


def node_policy(region: str, node_config: dict[str, Any]) -> AdoptionPolicy | None:
    """The jurisdiction's own adoption policy from its node config (None when it sets none)."""
    cfg = {NODE_POLICY_KEYS[k]: v for k, v in node_config.items() if k in NODE_POLICY_KEYS}
    if not cfg:
        return None
    try:
        return AdoptionPolicy.from_config(region, cfg)
    except ConfigError as exc:
        raise ConfigError(f"node config: {exc}") from exc
