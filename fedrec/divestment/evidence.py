"""The removal test: whether what only a region could have taught the model is still in it.

A region's *own items* are the items only its users interacted with in training (no other region's training
data has them), so whatever a global model knows about them it learnt from that region. The *signal* of a model
is how well it ranks those items for the region's own test users: their user vectors are fitted to the model's
frozen global parameters on their training history (what the region does when it evaluates a version), and each
user's held-out interactions with the region's own items are ranked among the whole catalog (recall@20, the
mean over the users who have such an interaction). A model that never trained on the region ranks them like
any item it knows nothing about.

Two models are compared on the same users (a paired bootstrap over users, `compare`): before divestment against
the exact line shows the signal was there; the fast line against the exact line shows whether it is gone.

The second test uses *canary users* planted in the region before training (`fedrec.privacy_audit.plant_canaries`):
canary j is a user of the region holding interactions with canary item j only, planted with probability 1/2 (a
seeded coin). An excluded canary's item is an item no model ever trained on. `canary_test` reads what each model
learnt about every canary item (only canary j's user ever held it as a positive) and gives the AUC of included
against excluded canaries. Before divestment the AUC is far from 0.5 (on either side): the model knows which
canaries were there. After a complete removal it is 0.5: included canaries look like items the model never
trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from fedrec.data.split import SiloData
from fedrec.evaluation import evaluate_model
from fedrec.models.base import ModelSpec
from fedrec.settings import read_manifest
from fedrec.training import TrainConfig, fitted_model

SIGNAL_METRIC = "recall@20"
BOOTSTRAP = 2000


def own_items(silos: Mapping[str, SiloData], region: str) -> np.ndarray:
    """The items only `region`'s users interacted with in training (sorted item ids)."""
    n_items = silos[region].n_items
    elsewhere = np.zeros(n_items, bool)
    for r, s in silos.items():
        if r != region:
            elsewhere[s.train[1]] = True
    mine = np.zeros(n_items, bool)
    mine[silos[region].train[1]] = True
    return np.flatnonzero(mine & ~elsewhere)


def on_items(silo: SiloData, items: np.ndarray) -> SiloData:
    """`silo` with its test interactions restricted to `items` (training and validation unchanged)."""
    keep = np.isin(silo.test[1], items)
    return dataclasses.replace(silo, test=tuple(a[keep] for a in silo.test))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Signal:
    """Per test user (`users`), the model's recall@20 on the region's own held-out items."""

    users: np.ndarray
    values: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.values.size else float("nan")


def signal(silo: SiloData, items: np.ndarray, spec: ModelSpec, arrays: Mapping[str, np.ndarray], cfg: TrainConfig,
           *, seed: int = 0) -> Signal:
    """The model's signal on `items` for `silo`'s test users (their vectors fitted to the frozen global part)."""
    restricted = on_items(silo, items)
    model = fitted_model(spec, restricted, dict(arrays), None, cfg, seed=seed)
    ev = evaluate_model(model, restricted, split="test")
    if ev.per_user is None or ev.n_users == 0:
        return Signal(np.zeros(0, np.int64), np.zeros(0))
    return Signal(np.asarray(ev.per_user["users"]), np.asarray(ev.per_user[SIGNAL_METRIC], dtype=np.float64))


@dataclass(frozen=True)
class Comparison:
    """`a`'s signal minus `b`'s on the same users: the mean difference and its 95% bootstrap interval."""

    a: float
    b: float
    difference: float
    low: float
    high: float
    users: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def compare(a: Signal, b: Signal, *, seed: int = 0) -> Comparison:
    """Paired bootstrap over the users both signals scored (the same region, the same split)."""
    if not np.array_equal(a.users, b.users):
        raise ValueError("the two signals were measured on different users")
    d = a.values - b.values
    if d.size == 0:
        return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, (BOOTSTRAP, d.size))].mean(axis=1)
    low, high = np.quantile(boots, [0.025, 0.975])
    return Comparison(a.mean, b.mean, float(d.mean()), float(low), float(high), int(d.size))


def world_silos(data_dir: Path) -> dict[str, SiloData]:
    """Every region's silo of a prepared world (a simulation's `world/` directory)."""
    manifest = read_manifest(str(data_dir))
    return {r: SiloData.load(Path(data_dir) / f"silo_{r}.npz") for r in manifest["regions"]}


def removal_test(data_dir: Path, region: str, spec: ModelSpec, cfg: TrainConfig,
                 models: Mapping[str, Mapping[str, np.ndarray]], *, seed: int = 0) -> dict[str, Any]:
    """The region's own items and each model's signal on them.

    With `before` among the models, each other model is compared with it (`before` minus the model, paired over
    the same users: how much signal it lost).
    """
    silos = world_silos(data_dir)
    items = own_items(silos, region)
    signals = {label: signal(silos[region], items, spec, arrays, cfg, seed=seed) for label, arrays in models.items()}
    out: dict[str, Any] = {"region": region, "own_items": int(items.size),
                           "users": int(next(iter(signals.values())).users.size) if signals else 0,
                           "metric": SIGNAL_METRIC, "signal": {k: v.mean for k, v in signals.items()}}
    if "before" in signals:
        out["lost"] = {k: compare(signals["before"], v, seed=seed).to_dict() for k, v in signals.items()
                       if k != "before"}
    return out


@dataclass(frozen=True)
class CanarySignal:
    """How well a model's canary scores tell included canaries from excluded ones: AUC and its 95% interval."""

    auc: float
    low: float
    high: float
    included: int
    excluded: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def canary_features(arrays: Mapping[str, np.ndarray], items: np.ndarray, n_items: int) -> dict[str, np.ndarray]:
    """What a model learnt about each of `items`, per per-item table: its value (one column) or its row's norm."""
    out = {}
    for name, v in arrays.items():
        if np.ndim(v) >= 1 and np.shape(v)[0] == n_items:
            rows = np.asarray(v, np.float64).reshape(n_items, -1)[items]
            out[name] = rows[:, 0] if rows.shape[1] == 1 else np.linalg.norm(rows, axis=1)
    if not out:
        raise ValueError(f"the model has no per-item table of {n_items} rows")
    return out


def canary_test(models: Mapping[str, Mapping[str, np.ndarray]], items: np.ndarray, included: np.ndarray,
                n_items: int, *, reference: str = "before", seed: int = 0) -> dict[str, Any]:
    """Each model's AUC of included against excluded canaries, on the feature that separates them best in `reference`.

    The feature (an item table's value or row norm, `canary_features`) is chosen once, on the reference model (the
    one trained with the region), then read the same way from every model. Which one carries the signal depends on
    the model and its loss: on the default MF world the embedding norm does (AUC 0.998, the bias 0.48); on a tiny
    world trained with other settings the bias does. A removal leaves AUC 0.5 on it.
    """
    features = {label: canary_features(a, items, n_items) for label, a in models.items()}
    ref = features[reference]
    chosen = max(sorted(ref), key=lambda f: abs(float(roc_auc_score(included, ref[f])) - 0.5))
    return {"feature": chosen, "auc": {label: canary_auc(f[chosen], included, seed=seed).to_dict()
                                       for label, f in features.items()}}


def canary_auc(scores: np.ndarray, included: np.ndarray, *, seed: int = 0) -> CanarySignal:
    """AUC of `scores` for included (True) against excluded canaries, with a bootstrap over canaries.

    0.5: the model's scores carry nothing about which canaries were planted (as for items it never trained on).
    """
    included = np.asarray(included, dtype=bool)
    if included.all() or not included.any():
        raise ValueError("a canary test needs both included and excluded canaries")
    auc = float(roc_auc_score(included, scores))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(BOOTSTRAP // 4):
        idx = rng.integers(0, included.size, included.size)
        if included[idx].any() and not included[idx].all():
            boots.append(roc_auc_score(included[idx], scores[idx]))
    low, high = np.quantile(boots, [0.025, 0.975])
    return CanarySignal(auc, float(low), float(high), int(included.sum()), int((~included).sum()))
