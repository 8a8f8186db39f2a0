"""Recommender models whose parameters are split into global (they travel) and local (they stay)."""

from fedrec.models.base import LOCAL_PREFIX, ModelSpec, RecModel, global_state, load_global_state, local_state
from fedrec.models.registry import available_models, build_model, register_model

__all__ = [
    "LOCAL_PREFIX",
    "ModelSpec",
    "RecModel",
    "available_models",
    "build_model",
    "global_state",
    "load_global_state",
    "local_state",
    "register_model",
]
