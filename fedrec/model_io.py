"""Self-describing checkpoints: global weights in safetensors with the model spec in the header.

A reader can rebuild the model (`ModelSpec`) and read its provenance without the run that made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from fedrec.io import atomic_save_arrays
from fedrec.models.base import ModelSpec


def save_global_model(path: Path, arrays: dict[str, np.ndarray], *, spec: ModelSpec,
                      metadata: dict[str, Any] | None = None) -> None:
    """Write global parameters and their description; the file never holds per-user parameters."""
    header = {"fedrec-model": json.dumps(spec.to_dict()), "fedrec-meta": json.dumps(metadata or {})}
    atomic_save_arrays(Path(path), arrays, header)


def load_global_model(path: Path) -> tuple[dict[str, np.ndarray], ModelSpec, dict[str, Any]]:
    """Read back (arrays, spec, metadata) written by `save_global_model`."""
    with safe_open(str(path), framework="np") as f:
        header = f.metadata() or {}
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    spec = ModelSpec(**json.loads(header.get("fedrec-model", "{}")))
    return arrays, spec, json.loads(header.get("fedrec-meta", "{}"))
