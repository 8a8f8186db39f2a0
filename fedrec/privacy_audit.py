"""`fedrec audit privacy`: plant canary users in one silo, run the experiment, bound ε from the released model.

One-run auditing (Steinke, Nasr & Jagielski, NeurIPS 2023; the statistics in `fedrec.privacy.audit`):
- the public catalog gets m extra **canary items**; canary j is a new user of the audited silo holding
  `interactions` interactions with canary item j and nothing else, included with probability 1/2 each (the
  auditor's own seeded coin, independent of the mechanism);
- the experiment runs as configured (the real federation: DP rounds, ledgers, adoption);
- the auditor plays the coordinator and sees only what left the silos. It scores canary j by what was
  learnt about canary item j alone: MF and the two-tower's global item bias (only canary j's user ever
  holds item j), so an included canary's positive interactions push it up while an excluded one only ever
  appears as a negative. `observe="releases"` (default, white-box: what a coordinator without SecAgg sees)
  sums, over every training reply of the audited silo (recorded as it left, `egress_recorder`), the reply's
  item bias minus the global model it trained on; `observe="final"` (black-box) reads the final global model;
- the guesses give an empirical ε lower bound at the chosen confidence, reported next to the ε the silo's
  accountant claims. A bound above the claimed ε means the implementation leaks more than its analysis
  allows; a run without DP is the positive control (its bound must be clearly above 0, or the audit's
  attack is too weak to prove anything).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config import ExperimentConfig
from fedrec.data.schema import Catalog, Interactions, make_interactions
from fedrec.errors import ConfigError
from fedrec.experiment import Engine, run_experiment
from fedrec.flower.egress_recorder import egress_recorder, read_recorded
from fedrec.flower.simulation import run_simulation
from fedrec.messages import STAT_PREFIX
from fedrec.model_io import load_global_model
from fedrec.privacy.audit import AuditResult, audit_scores
from fedrec.settings import RunSettings
from fedrec.versions import ModelRegistry

SCORED_ARRAY = "item_bias.weight"
"""The global array a canary is scored by (MF, two-tower): its item's learnt bias."""
FACTORS_ARRAY = "item.weight"
"""iALS's global array: a canary is scored by its item's factor norm (nobody else holds the item)."""
RELEASED_COUNT = STAT_PREFIX + "item_users"
"""iALS's released statistic a canary is scored by: its item's (noised) user count, summed over the rounds."""
AUDITED_MODELS = ("mf", "twotower", "ials")
OBSERVE = ("releases", "final")


@dataclass(frozen=True)
class CanaryPlan:
    """Which canaries to plant, where, and the auditor's coin flips."""

    region: str
    canaries: int = 500
    interactions: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canaries < 10:
            raise ConfigError(f"--canaries {self.canaries}: an audit needs at least 10 canaries (hundreds to "
                              "certify anything)")
        if self.interactions < 1:
            raise ConfigError(f"--canary-interactions {self.interactions} must be >= 1")


@dataclass(frozen=True)
class Canaries:
    """The planted canaries: their items and whether each was included (the auditor's secret)."""

    items: np.ndarray
    included: np.ndarray


def plant_canaries(data: Interactions, plan: CanaryPlan) -> tuple[Interactions, Canaries]:
    """`data` with m canary items appended to the catalog and the included canary users in `plan.region`."""
    if plan.region not in data.regions:
        raise ConfigError(f"--region {plan.region!r} is not a region of this dataset: {', '.join(data.regions)}")
    rng = np.random.default_rng(plan.seed)
    n_items, m = data.catalog.n_items, plan.canaries
    items = np.arange(n_items, n_items + m)
    included = rng.random(m) < 0.5
    chosen = items[included]
    first_user = int(data.user.max()) + 1
    users = np.repeat(first_user + np.arange(len(chosen)), plan.interactions)
    canary_items = np.repeat(chosen, plan.interactions)
    t0 = int(data.timestamp.max()) + 1
    titles = None if data.catalog.titles is None else (*data.catalog.titles, *(f"canary {j}" for j in range(m)))
    features = data.catalog.features  # a canary item's public metadata: none (zeros)
    catalog = Catalog(n_items=n_items + m, titles=titles, source=f"{data.catalog.source} + {m} audit canary items",
                      features=None if features is None else np.vstack([features, np.zeros((m, features.shape[1]))]),
                      feature_names=data.catalog.feature_names)
    region_names = np.asarray(data.regions)[data.region]
    planted = make_interactions(
        user=np.concatenate([data.user, users]),
        item=np.concatenate([data.item, canary_items]),
        rating=np.concatenate([data.rating, np.full(len(users), 5.0 if data.explicit else 1.0, np.float32)]),
        timestamp=np.concatenate([data.timestamp, t0 + np.arange(len(users))]),
        region_names=np.concatenate([region_names, np.full(len(users), plan.region)]),
        catalog=catalog, explicit=data.explicit, report=data.report, region_order=list(data.regions))
    return planted, Canaries(items=items, included=included)


def canary_scores(global_arrays: dict[str, np.ndarray], canaries: Canaries) -> np.ndarray:
    """Each canary's score from the released global model.

    Its item's learnt global bias (MF, two-tower), or its item's factor norm (iALS: an item nobody else holds
    gets factors only from its canary).
    """
    if SCORED_ARRAY in global_arrays:
        return np.asarray(global_arrays[SCORED_ARRAY], dtype=np.float64).reshape(-1)[canaries.items]
    if FACTORS_ARRAY in global_arrays:
        return np.linalg.norm(np.asarray(global_arrays[FACTORS_ARRAY], dtype=np.float64)[canaries.items], axis=1)
    raise ConfigError(f"the privacy audit scores canaries by {SCORED_ARRAY!r} or {FACTORS_ARRAY!r}, which this "
                      f"model's global parameters do not have ({sorted(global_arrays)}): audit model="
                      f"{' / '.join(AUDITED_MODELS)}")


def release_scores(replies_dir: Path, registry_dir: Path, region: str, canaries: Canaries) -> np.ndarray:
    """Σ over the region's training replies of (its item bias − the sent model's) at each canary item.

    For iALS: Σ of its released (noised) user count at each canary item.
    """
    registry = ModelRegistry(registry_dir, create=False)
    total = np.zeros(len(canaries.items))
    seen = 0
    for reply in read_recorded(replies_dir):
        meta = reply.records.get("meta", {})
        if reply.message_type != "train" or reply.has_error or meta.get("region") != region:
            continue
        arrays = reply.arrays.get("arrays", {})
        if RELEASED_COUNT in arrays:
            total += np.asarray(arrays[RELEASED_COUNT], np.float64).reshape(-1)[canaries.items]
            seen += 1
            continue
        if SCORED_ARRAY not in arrays or not meta.get("model-version"):
            continue  # a decline or a cached re-send without parameters
        sent, _ = registry.load(str(meta["model-version"]))
        delta = np.asarray(arrays[SCORED_ARRAY], np.float64) - np.asarray(sent[SCORED_ARRAY], np.float64)
        total += delta.reshape(-1)[canaries.items]
        seen += 1
    if seen == 0:
        raise ConfigError(f"no training reply of {region} with parameters was recorded: nothing to audit")
    return total


def run_privacy_audit(cfg: ExperimentConfig, out_dir: Path, plan: CanaryPlan, *, confidence: float = 0.95,
                      observe: str = "releases", log: Any = print, engine: Engine | None = None) -> dict[str, Any]:
    """Plant, run the experiment, score, bound; write `privacy_audit.json` next to `results.json`."""
    if cfg.model.name not in AUDITED_MODELS:
        raise ConfigError(f"the privacy audit scores canaries by their item's bias (mf, twotower) or released "
                          f"count and factors (ials): model={cfg.model.name} has neither; audit model="
                          f"{' / '.join(AUDITED_MODELS)}")
    if observe not in OBSERVE:
        raise ConfigError(f"observe={observe!r}: choose one of {', '.join(OBSERVE)}")
    if observe == "releases" and cfg.federation.secure_aggregation != "none":
        raise ConfigError("under secure aggregation the coordinator never sees one silo's release: audit with "
                          "observe='final' (the released global model)")
    found: dict[str, Canaries] = {}

    def plant(data: Interactions) -> Interactions:
        planted, found["canaries"] = plant_canaries(data, plan)
        return planted

    audited = replace(cfg, baselines=())  # the baselines see the canaries too but tell the audit nothing
    replies = out_dir / "audit_replies"
    run = functools.partial(engine or run_simulation, client_mods=[egress_recorder(replies)])
    results = run_experiment(audited, out_dir, log=log, transform=plant, engine=run)
    canaries = found["canaries"]
    if observe == "releases":
        root = RunSettings.from_experiment(audited, data_dir="", output_dir=str(out_dir), n_regions=1).registry_root()
        if root is None:
            raise ConfigError("observe='releases' reads the sent models from the run's registry, which is off")
        scores = release_scores(replies, Path(root), plan.region, canaries)
    else:
        arrays, _, _ = load_global_model(out_dir / "global_model.safetensors")
        scores = canary_scores(arrays, canaries)
    privacy = results["privacy"].get(plan.region, {})
    delta = float(privacy.get("delta", 0.0))
    result: AuditResult = audit_scores(scores, canaries.included, delta=delta, confidence=confidence)
    report = {"region": plan.region, "plan": plan.__dict__, "observe": observe, "audit": result.to_dict(),
              "claimed_epsilon": privacy.get("epsilon"), "private": bool(results["privacy"]),
              "federated_ndcg@20": results["final"]["federated"]["overall"].get("ndcg@20")}
    (out_dir / "privacy_audit.json").write_text(json.dumps(report, indent=1, default=float))
    claimed = "no DP (positive control)" if privacy.get("epsilon") is None else f"claimed ε={privacy['epsilon']:.3f}"
    log(f"privacy audit of {plan.region} ({observe}): {result.correct}/{result.guesses} guesses right on "
        f"{result.canaries} canaries ({result.included} included) → empirical ε ≥ {result.epsilon_lower_bound:.3f} at "
        f"{confidence:.0%} confidence; {claimed}")
    return report
