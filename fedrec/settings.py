"""The Flower app's flat run config, read and cast once into a frozen dataclass: what the coordinator proposes.

Flower's three channels stay apart: the run config (`RunSettings`: what the coordinator *proposes* for the
whole run, the same for every party), the node config (`jurisdiction.SiloIdentity`: what each jurisdiction *decides*:
its data, its state dir, its budget, its maximum δ, its secure-aggregation requirement, its adoption
policy; a proposal may only tighten it), and the per-round `ConfigRecord` (round number and model version).

`RunSettings` has no defaults or checks of its own: every default is the typed experiment config's
(`fedrec.config`, `TrainConfig`, `ModelSpec`, `PrivacySettings`), every check is theirs, and
`[tool.flwr.app.config]` in pyproject.toml lists the same values (a test holds all three equal). What the
coalition, train-lines, exclude-regions and divestment keys mean for the run is read in `fedrec.run_lines`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from fedrec import run_lines
from fedrec.config import AdoptionPolicy, ExperimentConfig, FederationConfig, StrategyConfig, check_model
from fedrec.errors import ConfigError
from fedrec.io import atomic_write_text
from fedrec.models.base import ModelSpec
from fedrec.privacy.dp_round import check_dp_loss
from fedrec.privacy.plan import PrivacySettings
from fedrec.run_config_values import cast_value, json_object
from fedrec.run_lines import line_key as line_key  # where silos key a coalition line's state (re-exported)
from fedrec.statistics import check_statistics_run, is_statistics_model
from fedrec.training import TrainConfig

OPERATIONAL_KEYS = frozenset({"data-dir", "output-dir", "state-dir", "registry-dir", "resume", "keep-contributions",
                              "client-threads", "round-timeout"})
RETIRED_KEYS = {
    "quiet": "is not a run-config key any more (it did nothing): remove it",
    "privacy-noise": "is not a run-config key: a silo draws its DP noise and sampling from its own OS CSPRNG, "
                     "which nothing outside it can seed (reproducible noise is a Python-only research option)",
}
"""Keys a coordinator may once have sent, refused with the reason (a run config must not steer them)."""

_F, _S, _T, _P = FederationConfig, StrategyConfig, TrainConfig, PrivacySettings


@dataclass(frozen=True)
class RunSettings:
    """What the coordinator proposes for one run, as Flower's flat run config carries it."""

    data_dir: str = ""
    output_dir: str = ""
    num_rounds: int = _F.rounds
    eval_every: int = _F.eval_every
    model: str = ModelSpec.name
    dim: int = ModelSpec.dim
    model_kwargs: str = "{}"
    loss: str = _T.loss
    batch_size: int = _T.batch_size
    lr: float = _T.lr
    weight_decay: float = _T.weight_decay
    n_negatives: int = _T.n_negatives
    local_epochs: int = _F.local_epochs
    refit_epochs: int = _T.refit_epochs
    strategy: str = _S.name
    server_lr: float = _S.server_lr
    server_momentum: float = _S.server_momentum
    adam_beta1: float = _S.beta1
    adam_beta2: float = _S.beta2
    adam_tau: float = _S.tau
    robust: str = _S.robust
    row_clip: float = _S.row_clip
    trim_beta: float = _S.trim_beta
    weighting: str = _F.weighting
    fraction_train: float = _F.fraction_train
    min_nodes: int = 2
    seed: int = 0
    client_threads: int = 1
    privacy: str = _P.mode
    privacy_epsilon: float = _P.epsilon
    privacy_region_epsilon: str = "{}"
    privacy_delta: float = _P.delta
    privacy_clip_norm: float = _P.clip_norm
    privacy_sample_rate: float = _P.sample_rate
    privacy_steps_per_round: int = _P.steps_per_round
    privacy_max_per_user: int = _P.max_per_user
    privacy_normaliser: float = _P.normaliser
    privacy_accountant: str = _P.accountant
    state_dir: str = ""
    registry_dir: str = ""
    adoption: str = "{}"
    round_timeout: float = 600.0
    run_name: str = ""
    resume: bool = False
    min_replies: int = _F.min_replies
    update_norm_factor: float = _F.update_norm_factor
    max_update_norm: float = 0.0
    secure_aggregation: str = _F.secure_aggregation
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 4194304
    secagg_min_contributors: int = 2
    exclude_regions: str = ""
    """Comma-separated regions left out of the run (`federation.exclude_regions`)."""
    start_version: str = ""
    """The registered version the run continues from ("" = the seeded initial model)."""
    keep_contributions: bool = False
    users_from: str = ""
    """A run key: each silo starts from its own per-user state of that run while it has none for this one (the
    rebuilt line of a fast divestment continues its users; `fedrec.divestment`)."""
    divestment: str = "{}"
    """What a divestment run removed, how and from which version (JSON; `fedrec.divestment`): recorded in the
    manifest of every version the run makes."""
    coalitions: str = "{}"
    """Coalition name → regions (JSON; `federation.coalitions`): one global line per coalition ("{}": one line)."""
    train_lines: str = ""
    """The coalition lines this run trains, comma-separated ("": every one). The others stay in `coalitions` so
    each silo still knows which line it serves: a divestment rebuilding one line (`fedrec.divestment`) offers it
    for review only to the regions that serve it."""

    def __post_init__(self) -> None:
        # The typed configs check everything they own (with Hydra's key names in the message) ...
        self.federation_config()
        json_object("divestment", self.divestment)
        StrategyConfig(name=self.strategy, server_lr=self.server_lr, server_momentum=self.server_momentum,
                       beta1=self.adam_beta1, beta2=self.adam_beta2, tau=self.adam_tau, robust=self.robust,
                       row_clip=self.row_clip, trim_beta=self.trim_beta)
        self.train_config()
        privacy = self.privacy_settings()
        check_model(self.model_spec)
        check_statistics_run(self.model_spec, private=privacy.enabled, strategy=self.strategy,
                             secure_aggregation=self.secure_aggregation, weighting=self.weighting, loss=self.loss,
                             local_epochs=self.local_epochs)
        self.adoption_policies()
        # ... the run config checks only what exists in it alone.
        if not self.round_timeout > 0:
            raise ConfigError(f"round-timeout={self.round_timeout} must be > 0 (seconds)")
        if self.secure_aggregation == "secaggplus" and (self.weighting != "uniform" or self.secagg_min_contributors < 2
                                                        or not self.secagg_clipping_range > 0):
            raise ConfigError("secure-aggregation=secaggplus needs weighting=uniform (SecAgg+ here masks weights of "
                              "1), secagg-min-contributors >= 2 and secagg-clipping-range > 0")
        if self.resume and not self.run_name:
            raise ConfigError("resume=true needs run-name: a restarted coordinator gets a new Flower run id, and "
                              "silos find their state (budget plan, users, last reply) by the run's name")
        if self.users_from and (not all(c.isalnum() or c in "-_." for c in self.users_from)
                                or not self.users_from.strip(".")):
            raise ConfigError(f"users-from={self.users_from!r}: a run key (letters, digits, '-', '_' and '.', not "
                              "dots alone): it names a directory in each silo's state dir")
        if self.run_name and (not all(c.isalnum() or c in "-_." for c in self.run_name)
                              or not self.run_name.strip(".")):
            raise ConfigError(f"run-name={self.run_name!r}: use letters, digits, '-', '_' and '.' only (not dots "
                              "alone: the name is a directory in each silo's state dir)")
        if self.coalitions != "{}" or self.train_lines:
            run_lines.check_coalition_run(self)
        if self.max_update_norm < 0:
            raise ConfigError(f"max-update-norm={self.max_update_norm} must be >= 0 (0: no absolute bound)")
        if privacy.enabled and not is_statistics_model(self.model_spec):  # iALS's DP release trains no loss
            check_dp_loss(self.loss)
        if privacy.enabled and self.weighting != "uniform":
            raise ConfigError(f"federation.weighting={self.weighting!r} would send each silo's example count "
                              "un-noised; under privacy=user_dp aggregation weights are uniform")

    @classmethod
    def from_experiment(cls, cfg: ExperimentConfig, *, data_dir: str, output_dir: str,
                        n_regions: int) -> RunSettings:
        """The run config a typed experiment proposes (simulation: one silo per region of the world)."""
        t, f, s, p = cfg.train, cfg.federation, cfg.strategy, cfg.privacy.settings()
        return cls(
            data_dir=data_dir, output_dir=output_dir, num_rounds=f.rounds, eval_every=f.eval_every,
            model=cfg.model.name, dim=cfg.model.dim, model_kwargs=json.dumps(cfg.model.kwargs), loss=t.loss,
            batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay, n_negatives=t.n_negatives,
            local_epochs=f.local_epochs, refit_epochs=t.refit_epochs, strategy=s.name, server_lr=s.server_lr,
            server_momentum=s.server_momentum, adam_beta1=s.beta1, adam_beta2=s.beta2, adam_tau=s.tau,
            robust=s.robust, row_clip=s.row_clip, trim_beta=s.trim_beta,
            weighting=f.weighting, fraction_train=f.fraction_train, min_nodes=n_regions, seed=cfg.seed,
            secure_aggregation=f.secure_aggregation, min_replies=f.min_replies,
            update_norm_factor=f.update_norm_factor, privacy=p.mode, privacy_epsilon=p.epsilon,
            privacy_region_epsilon=p.to_json_regions(), privacy_delta=p.delta, privacy_clip_norm=p.clip_norm,
            privacy_sample_rate=p.sample_rate, privacy_steps_per_round=p.steps_per_round,
            privacy_max_per_user=p.max_per_user, privacy_normaliser=p.normaliser, privacy_accountant=p.accountant,
            state_dir=cfg.privacy.state_dir or "", adoption=json.dumps(cfg.adoption),
            registry_dir=cfg.registry_dir or "", exclude_regions=",".join(f.exclude_regions),
            start_version=f.start_version or "", keep_contributions=f.keep_contributions,
            coalitions=json.dumps(f.coalitions, sort_keys=True),
        )

    @cached_property
    def model_spec(self) -> ModelSpec:
        """The model to build on every party (under DP, silo-wide parameters train through noised sums)."""
        return ModelSpec(name=self.model, dim=self.dim, kwargs=json_object("model-kwargs", self.model_kwargs))

    def federation_config(self) -> FederationConfig:
        """The run's federation settings as the typed config (validated)."""
        return FederationConfig(rounds=self.num_rounds, local_epochs=self.local_epochs, eval_every=self.eval_every,
                                weighting=self.weighting, fraction_train=self.fraction_train,
                                secure_aggregation=self.secure_aggregation, min_replies=self.min_replies,
                                update_norm_factor=self.update_norm_factor,
                                exclude_regions=run_lines.excluded_regions(self),
                                start_version=self.start_version or None, keep_contributions=self.keep_contributions,
                                coalitions=run_lines.coalition_members(self))

    # The silo's message handlers ask the settings themselves for these three (`fedrec.run_lines` has the rest).
    def coalition_members(self) -> dict[str, list[str]]:
        """The run's coalitions, name → regions (`run_lines.coalition_members`)."""
        return run_lines.coalition_members(self)

    def coalitions_of(self, region: str) -> list[str]:
        """The coalitions `region` trains in (`run_lines.coalitions_of`)."""
        return run_lines.coalitions_of(self, region)

    def trained_lines(self) -> list[str]:
        """The coalition lines this run trains (`run_lines.trained_lines`)."""
        return run_lines.trained_lines(self)

    @cached_property
    def _privacy(self) -> PrivacySettings:
        regions = json_object("privacy-region-epsilon", self.privacy_region_epsilon)
        return PrivacySettings(
            mode=self.privacy, epsilon=self.privacy_epsilon, region_epsilon=regions, delta=self.privacy_delta,
            clip_norm=self.privacy_clip_norm, sample_rate=self.privacy_sample_rate,
            steps_per_round=self.privacy_steps_per_round, max_per_user=self.privacy_max_per_user,
            normaliser=self.privacy_normaliser,
            accountant=self.privacy_accountant)

    def privacy_settings(self) -> PrivacySettings:
        """The run's proposed DP settings (parsed once)."""
        return self._privacy

    def registry_root(self) -> Path | None:
        """Where this run's global versions are registered: `registry-dir`, else `<output-dir>/registry`."""
        if self.registry_dir:
            return Path(self.registry_dir)
        return Path(self.output_dir) / "registry" if self.output_dir else None

    def run_key(self, flower_run_id: int | str) -> str:
        """What silos and coordinator key this run's state by: `run-name` (resumable), else Flower's run id."""
        return self.run_name or str(flower_run_id)

    @cached_property
    def _adoption(self) -> dict[str, AdoptionPolicy]:
        raw = json_object("adoption", self.adoption)
        if not all(isinstance(v, dict) for v in raw.values()):
            raise ConfigError(f"adoption must map region names (or 'default') to policies, got {self.adoption!r}")
        return {str(r): AdoptionPolicy.from_config(str(r), cfg) for r, cfg in raw.items()}

    def adoption_policies(self) -> dict[str, AdoptionPolicy]:
        """Per-region adoption policies of a simulation (`default` for regions not named); parsed once."""
        return self._adoption

    def policy_for(self, region: str) -> AdoptionPolicy:
        """The run's policy for `region`: its own entry, else `default`, else `adopt: always`."""
        policies = self.adoption_policies()
        return policies.get(region) or policies.get("default") or AdoptionPolicy()

    def train_config(self) -> TrainConfig:
        """Local training settings of one round."""
        return TrainConfig(loss=self.loss, batch_size=self.batch_size, lr=self.lr,
                           weight_decay=self.weight_decay, n_negatives=self.n_negatives,
                           epochs=self.local_epochs, refit_epochs=self.refit_epochs)

    def model_config(self) -> dict[str, Any]:
        """The run config without where things live and how the run is operated: what makes the model."""
        return {k: v for k, v in self.to_run_config().items() if k not in OPERATIONAL_KEYS}

    def to_run_config(self) -> dict[str, Any]:
        """Flat, hyphenated keys as Flower's `[tool.flwr.app.config]` and `--run-config` use them."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        """Read and cast a Flower run config; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        retired = sorted(set(run_config) & set(RETIRED_KEYS))
        if retired:
            raise ConfigError("; ".join(f"run-config {k}: {RETIRED_KEYS[k]}" for k in retired))
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(f"unknown run-config keys {unknown}; known keys: {sorted(known)}")
        values = {known[key].name: cast_value(key, value, str(known[key].type))
                  for key, value in run_config.items()}
        return cls(**values)


RUN_CONFIG_FILE = "run_config.json"
"""What the coordinator proposed for a run, as it wrote it into the run's output dir (`save_run_config`)."""


def save_run_config(settings: RunSettings) -> None:
    """Write `<output-dir>/run_config.json` (the flat run config; nothing without an output dir)."""
    if settings.output_dir:
        out = Path(settings.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RUN_CONFIG_FILE, json.dumps(settings.to_run_config(), indent=1, sort_keys=True))


def load_run_config(run_dir: Path) -> RunSettings:
    """The settings a finished run's coordinator proposed (its `run_config.json`), with a clear error else."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path} is missing: is {run_dir} a fedrec run's output directory?") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return RunSettings.from_run_config(raw)


def silo_state_root(settings: RunSettings) -> Path | None:
    """Where simulated silos keep their state, `<root>/<region>`.

    Run-config state-dir, else `<output-dir>/silo-state`; None when neither is set (deployment nodes set
    node config state-dir).
    """
    if settings.state_dir:
        return Path(settings.state_dir)
    return Path(settings.output_dir) / "silo-state" if settings.output_dir else None


def read_manifest(data_dir: str) -> dict[str, Any]:
    """The prepared world's public description (regions, catalog size)."""
    if not data_dir:
        raise ConfigError("run-config data-dir is empty: prepare a world first (`fedrec` does it for you)")
    path = Path(data_dir) / "manifest.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read world manifest {path}: {exc}") from exc

