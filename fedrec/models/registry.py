"""Model registry: a name → constructor map, so configs and checkpoints name models by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedrec.errors import ConfigError
from fedrec.models.base import ModelSpec, RecModel
from fedrec.models.ease import EASE
from fedrec.models.ials import IALS
from fedrec.models.mf import BiasedMF
from fedrec.models.twotower import TwoTower

ModelFactory = Callable[..., RecModel]
_MODELS: dict[str, ModelFactory] = {"ease": EASE, "ials": IALS, "mf": BiasedMF, "twotower": TwoTower}


def register_model(name: str, factory: ModelFactory, *, force: bool = False) -> None:
    """Register `factory(n_users, n_items, dim, **kwargs)` under `name`; refuses to overwrite unless `force`."""
    if name in _MODELS and not force:
        raise ValueError(f"model {name!r} is already registered; pass force=True to replace it")
    _MODELS[name] = factory


def available_models() -> list[str]:
    """Registered model names."""
    return sorted(_MODELS)


def model_factory(name: str) -> ModelFactory:
    """The constructor registered under `name` (its signature holds the model's defaults)."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _MODELS[name]


def build_model(spec: ModelSpec, *, n_users: int, n_items: int) -> RecModel:
    """Instantiate a registered model; unknown names list what exists."""
    if spec.name not in _MODELS:
        raise ConfigError(f"unknown model {spec.name!r}; available: {', '.join(available_models())}")
    kwargs: dict[str, Any] = dict(spec.kwargs)
    try:
        return _MODELS[spec.name](n_users, n_items, dim=spec.dim, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {spec.name!r} rejected its arguments {kwargs}: {exc}") from exc
