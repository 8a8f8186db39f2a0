"""The experiment config as plain frozen dataclasses, built once from Hydra's composed config.

Hydra lives at the entry point (`fedrec.commands`); everything else takes these dataclasses, so notebooks and
tests can build them directly. Unknown keys and bad values fail here with the key named.

These classes are the one source of every default and every check: `conf/` states the same values (a test
holds them equal), and the Flower app's flat run config (`fedrec.settings.RunSettings`, and
`[tool.flwr.app.config]` in pyproject.toml) takes its defaults from them and validates through them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from fedrec.adoption_policy import AdoptionPolicy
from fedrec.data.split import SplitConfig
from fedrec.errors import ConfigError
from fedrec.models import ModelSpec, available_models
from fedrec.privacy.plan import PrivacySettings
from fedrec.statistics import check_model_catalog, check_statistics_run
from fedrec.training import TrainConfig

BOUNDS = ("centralized", "local_only")
BASELINES = ("ease", "itemknn", "popularity")
"""Strong simple baselines, pooled and local-only, tuned on validation (`fedrec.baselines`)."""
STRATEGIES = ("fedavg", "fedavgm", "fedadam")
ROBUST = ("none", "row_clip", "median", "trimmed_mean", "nnm", "krum", "bulyan")
WEIGHTINGS = ("uniform", "examples")
SECURE_AGGREGATION = ("none", "secaggplus")


def _require(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: must be {need}")


def check_model(spec: ModelSpec) -> None:
    """A registered model with a positive dimension (its own kwargs are checked when it is built)."""
    _require(spec.name in available_models(), "model.name", spec.name, f"one of {available_models()}")
    _require(spec.dim >= 1, "model.dim", spec.dim, ">= 1")


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset and its loader's parameters (validated by the loader)."""

    name: str = "synthetic"
    params: dict[str, Any] = field(default_factory=dict)


def usable_name(name: object) -> bool:
    """True for a name that can be a directory (letters, digits, '-', '_' and '.', not dots alone)."""
    return (isinstance(name, str) and name != "" and all(c.isalnum() or c in "-_." for c in name)
            and name.strip(".") != "")


def check_coalitions(coalitions: object) -> None:
    """`federation.coalitions`: names usable as directory names, each a non-empty list of distinct region names."""
    _require(isinstance(coalitions, dict), "federation.coalitions", coalitions,
             "a mapping of coalition names to region lists, e.g. {atlantic: [eu, na], pacific: [na, apac]}")
    assert isinstance(coalitions, dict)
    for name, regions in coalitions.items():
        _require(usable_name(name), "federation.coalitions", name,
                 "keyed by names of letters, digits, '-', '_' and '.' (not dots alone): a name is a directory in "
                 "each silo's state dir")
        _require(isinstance(regions, list | tuple) and len(regions) > 0
                 and all(isinstance(r, str) and r and "," not in r for r in regions)
                 and len(set(regions)) == len(regions), f"federation.coalitions.{name}", regions,
                 "a non-empty list of distinct region names")
    _require(len({str(name).casefold() for name in coalitions}) == len(coalitions), "federation.coalitions",
             sorted(coalitions), "names that differ other than by case (a line's state is a directory RUN@NAME, and "
             "on a case-insensitive file system two such lines would share one silo's users and replies)")


@dataclass(frozen=True)
class FederationConfig:
    """How the federation runs: rounds, local budget, aggregation weights, participation."""

    rounds: int = 20
    local_epochs: int = 1
    eval_every: int = 1
    weighting: str = "uniform"
    fraction_train: float = 1.0
    cpus_per_client: float = 1.0
    secure_aggregation: str = "none"
    min_replies: int = 1
    update_norm_factor: float = 10.0
    ray_address: str | None = None
    """The Ray cluster Flower's simulation engine runs on: None (Ray's own choice: RAY_ADDRESS, else the cluster
    `ray start` last started on this machine, else a new local one), "auto" (an existing cluster, or an error), or
    "HOST:PORT"."""
    exclude_regions: list[str] = field(default_factory=list)
    """Regions left out of the run: no silo of theirs trains, evaluates or receives anything (simulation: no node;
    deployment: a node claiming one fails the preflight). A divested region's rebuilt line uses it."""
    start_version: str | None = None
    """Continue the line from this registered version (an id or a unique prefix, in `registry_dir`): the run
    trains rounds `version.round + 1 .. rounds` from its weights; None starts from the seeded initial model."""
    keep_contributions: bool = False
    """The coordinator keeps, per region, what its updates added to the current global model (FedAvg / FedAvgM,
    updates seen in the clear), in `<output dir>/contributions.safetensors`: what fast divestment subtracts."""
    coalitions: dict[str, list[str]] = field(default_factory=dict)
    """Coalition name → its regions: the run trains one global line per coalition (`fedrec.coordinator.
    coalition_line`); a region may be in several and then trains, and spends budget, for each. Empty: one line of
    every region (the single-line run)."""

    def __post_init__(self) -> None:
        _require(self.rounds >= 1, "federation.rounds", self.rounds, ">= 1")
        check_coalitions(self.coalitions)
        _require(isinstance(self.exclude_regions, list | tuple)
                 and all(isinstance(r, str) and r and "," not in r for r in self.exclude_regions)
                 and len(set(self.exclude_regions)) == len(self.exclude_regions),
                 "federation.exclude_regions", self.exclude_regions, "a list of distinct region names")
        start = self.start_version
        _require(start is None or (isinstance(start, str) and start.strip() != ""),
                 "federation.start_version", self.start_version, "null or a version id (or unique prefix)")
        _require(self.ray_address is None or (isinstance(self.ray_address, str) and self.ray_address.strip() != ""),
                 "federation.ray_address", self.ray_address, "null, auto or HOST:PORT")
        _require(self.eval_every >= 1, "federation.eval_every", self.eval_every, ">= 1")
        _require(self.local_epochs >= 1, "federation.local_epochs", self.local_epochs, ">= 1")
        _require(self.weighting in WEIGHTINGS, "federation.weighting", self.weighting, f"one of {WEIGHTINGS}")
        _require(0 < self.fraction_train <= 1, "federation.fraction_train", self.fraction_train, "in (0, 1]")
        _require(self.cpus_per_client > 0, "federation.cpus_per_client", self.cpus_per_client, "> 0")
        _require(self.secure_aggregation in SECURE_AGGREGATION, "federation.secure_aggregation",
                 self.secure_aggregation, f"one of {SECURE_AGGREGATION}")
        _require(self.min_replies >= 1, "federation.min_replies", self.min_replies, ">= 1")
        _require(self.update_norm_factor > 1, "federation.update_norm_factor", self.update_norm_factor, "> 1")


@dataclass(frozen=True)
class StrategyConfig:
    """Server-side aggregation and optimizer."""

    name: str = "fedavg"
    server_lr: float = 1.5
    server_momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    robust: str = "none"
    """Robust aggregation (`fedrec.coordinator.robust`): row_clip | median | trimmed_mean | nnm | krum | bulyan |
    none."""
    row_clip: float = 2.0
    """row_clip: each silo's change to an item row is clipped to this multiple of the silos' median change."""
    trim_beta: float = 0.1
    """trimmed_mean / nnm: the fraction of replies cut at each end, per coordinate (nnm also mixes each row with
    its n - int(trim_beta x n) nearest); krum / bulyan: int(trim_beta x n) is the number of hostile silos tolerated."""

    def __post_init__(self) -> None:
        _require(self.name in STRATEGIES, "strategy.name", self.name, f"one of {STRATEGIES}")
        _require(self.robust in ROBUST, "strategy.robust", self.robust, f"one of {ROBUST}")
        _require(self.row_clip >= 1, "strategy.row_clip", self.row_clip, ">= 1 (a multiple of the median change)")
        _require(0 < self.trim_beta < 0.5, "strategy.trim_beta", self.trim_beta, "in (0, 0.5)")
        replaces_average = self.robust in ("median", "trimmed_mean", "nnm", "krum", "bulyan")
        _require(not replaces_average or (self.name == "fedavg" and self.server_lr == 1),
                 "strategy.robust", self.robust,
                 "row_clip or none with fedavgm / fedadam / server_lr != 1 (Flower's FedMedian and FedTrimmedAvg "
                 "replace the average: set strategy.name=fedavg strategy.server_lr=1)")
        _require(self.server_lr > 0, "strategy.server_lr", self.server_lr, "> 0")
        _require(0 <= self.server_momentum < 1, "strategy.server_momentum", self.server_momentum, "in [0, 1)")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "strategy.beta1/beta2", (self.beta1, self.beta2),
                 "in [0, 1)")
        _require(self.tau > 0, "strategy.tau", self.tau, "> 0")


@dataclass(frozen=True)
class PrivacyConfig:
    """`privacy=none` (the non-private reference) or `privacy=user_dp` (user-level DP in every silo).

    Fields mirror `fedrec.privacy.plan.PrivacySettings` (which validates them); `state_dir` is where the
    silos of a simulation keep their privacy ledgers (default: `<output dir>/silo-state`); point it at a
    fixed path to make budgets persist across experiments.
    """

    name: str = PrivacySettings.mode
    epsilon: float = PrivacySettings.epsilon
    region_epsilon: dict[str, float] = field(default_factory=dict)
    delta: float = PrivacySettings.delta
    clip_norm: float = PrivacySettings.clip_norm
    sample_rate: float = PrivacySettings.sample_rate
    steps_per_round: int | None = PrivacySettings.steps_per_round
    max_per_user: int | None = None
    normaliser: float = PrivacySettings.normaliser
    accountant: str = PrivacySettings.accountant
    state_dir: str | None = None

    def __post_init__(self) -> None:
        self.settings()

    def settings(self) -> PrivacySettings:
        """The validated run-wide settings."""
        return PrivacySettings(mode=self.name, epsilon=self.epsilon, region_epsilon=dict(self.region_epsilon),
                               delta=self.delta, clip_norm=self.clip_norm, sample_rate=self.sample_rate,
                               steps_per_round=self.steps_per_round or 0, max_per_user=self.max_per_user or 0,
                               normaliser=self.normaliser,
                               accountant=self.accountant)


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: data, split, model, training, federation, strategy, privacy, bounds."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    bounds: tuple[str, ...] = BOUNDS
    baselines: tuple[str, ...] = BASELINES
    seed: int = 0
    adoption: dict[str, dict[str, Any]] = field(default_factory=dict)
    registry_dir: str | None = None
    regime: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each simulated jurisdiction's own policy (`conf/regime/`), region or `default` → node-config keys. The silos'
    own, never the run's proposal: checked and applied by `fedrec.silo.regime.Regimes` in the simulated silos."""

    def __post_init__(self) -> None:
        for region, policy in self.regime.items():
            if not isinstance(policy, dict):
                raise ConfigError(f"regime.{region} must be a policy such as {{epsilon-budget: 4, partners: [na]}}, "
                                  f"got {policy!r}")
        for region, policy in self.adoption.items():
            if not isinstance(policy, dict):
                raise ConfigError(f"adoption.{region} must be a policy such as {{adopt: always}}, got {policy!r}")
            AdoptionPolicy.from_config(region, policy)
        check_model(self.model)
        check_statistics_run(self.model, private=self.privacy.settings().enabled, strategy=self.strategy.name,
                             secure_aggregation=self.federation.secure_aggregation,
                             weighting=self.federation.weighting, loss=self.train.loss,
                             local_epochs=self.federation.local_epochs)
        bad = [b for b in self.bounds if b not in BOUNDS]
        if bad:
            raise ConfigError(f"bounds {bad} are unknown; choose from {BOUNDS}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ConfigError(f"baselines {bad} are unknown; choose from {BASELINES}")

    def check_regions(self, regions: tuple[str, ...]) -> None:
        """Per-region settings must name regions of the world (a typo must not silently fall back)."""
        named = {"adoption": set(self.adoption) - {"default"},
                 "privacy.region_epsilon": set(self.privacy.region_epsilon)}
        for key, names in named.items():
            unknown = sorted(names - set(regions))
            if unknown:
                raise ConfigError(f"{key} names unknown region(s) {unknown}; this world's regions: {list(regions)}")
        excluded = self.federation.exclude_regions
        if unknown := sorted(set(excluded) - set(regions)):
            raise ConfigError(f"federation.exclude_regions names unknown region(s) {unknown}; this world's regions: "
                              f"{list(regions)}")
        if len(set(regions) - set(excluded)) < 1:
            raise ConfigError(f"federation.exclude_regions={list(excluded)} leaves no region to train")
        for name, members in self.federation.coalitions.items():
            if unknown := sorted(set(members) - set(regions) | set(members) & set(excluded)):
                raise ConfigError(f"federation.coalitions.{name} names region(s) {unknown} that do not take part; this "
                                  f"run's regions: {[r for r in regions if r not in excluded]}")

    def check_catalog(self, n_items: int) -> None:
        """The model fits the world's catalog (EASE's dense item-item solve: at most 20,000 items)."""
        check_model_catalog(self.model, n_items)

    @property
    def total_epochs(self) -> int:
        """Passes over the data each method gets (rounds × local epochs)."""
        return self.federation.rounds * self.federation.local_epochs


RETIRED = {
    ("privacy", "noise"): "privacy.noise is gone: a silo always draws DP noise and sampling from its own OS CSPRNG "
                          "(reproducible noise is a Python-only research option: make_client_app(..., "
                          "reproducible_noise=True))",
    ("split", "strategy"): "split.strategy is now split.method (temporal_ratio | leave_last_out): `strategy` names "
                           "the server optimiser group (strategy=fedavg|fedavgm|fedadam)",
}


def _build(cls: type, group: str, values: dict[str, Any]) -> Any:
    for (g, key), why in RETIRED.items():
        if g == group and key in values:
            raise ConfigError(why)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config group '{group}'; known: {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config group '{group}': {exc}") from exc


def experiment_from_dict(cfg: dict[str, Any]) -> ExperimentConfig:
    """Build the typed config from a plain dict (Hydra's composed config after `to_container`)."""
    cfg = dict(cfg)
    ds = dict(cfg.get("dataset") or {})
    name = ds.pop("name", "synthetic")
    model = dict(cfg.get("model") or {})
    train = dict(cfg.get("train") or {})
    fed = dict(cfg.get("federation") or {})
    train["epochs"] = int(fed.get("local_epochs", 1))
    return ExperimentConfig(
        dataset=DatasetConfig(name=name, params=ds),
        split=_build(SplitConfig, "split", dict(cfg.get("split") or {})),
        model=_build(ModelSpec, "model", {**model, "kwargs": dict(model.get("kwargs") or {})}),
        train=_build(TrainConfig, "train", train),
        federation=_build(FederationConfig, "federation",
                          {**fed, **({"exclude_regions": [str(r) for r in fed["exclude_regions"]]}
                                     if isinstance(fed.get("exclude_regions"), list | tuple) else {}),
                                  **({"coalitions": {str(k): [str(r) for r in v] if isinstance(v, list | tuple) else v
                                                     for k, v in fed["coalitions"].items()}}
                                     if isinstance(fed.get("coalitions"), dict) else {})}),
        strategy=_build(StrategyConfig, "strategy", dict(cfg.get("strategy") or {})),
        privacy=_build(PrivacyConfig, "privacy", {**(p := dict(cfg.get("privacy") or {})),
                                                  "region_epsilon": dict(p.get("region_epsilon") or {})}),
        bounds=tuple(cfg.get("bounds", BOUNDS)),
        baselines=tuple(cfg.get("baselines", BASELINES)),
        seed=int(cfg.get("seed", 0)),
        adoption={str(k): dict(v) if isinstance(v, dict) else v for k, v in (cfg.get("adoption") or {}).items()},
        registry_dir=cfg.get("registry_dir"),
        regime={str(k): dict(v) if isinstance(v, dict) else v for k, v in (cfg.get("regime") or {}).items()},
    )
