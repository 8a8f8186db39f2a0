"""Preparing a world for a run: load the dataset, split each silo, write one file per silo + a manifest.

In simulation this stands in for each jurisdiction having its data on its own disk: the ClientApp of a
region opens only `silo_<region>.npz`. The manifest holds public facts only (region names, catalog size,
the public item features' file, shape, names and SHA-256). The catalog's item features are public, like
the catalog, so they are written once next to the manifest (`catalog_features.npy`, float32 [n_items,
n_features]) for every silo and the coordinator to read with `load_catalog_features`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.schema import Interactions, check_item_features
from fedrec.data.split import SiloData, SplitConfig, split_silos
from fedrec.errors import DataError
from fedrec.io import atomic_write_bytes

FEATURES_FILE = "catalog_features.npy"


@dataclass(frozen=True)
class PreparedWorld:
    """A split world on disk and in memory."""

    data_dir: Path
    regions: tuple[str, ...]
    n_items: int
    silos: dict[str, SiloData]
    item_features: np.ndarray | None = None  # public: [n_items, n_features] float32, or None
    feature_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CatalogFeatures:
    """The public item features of a prepared world, as read back from its data directory."""

    features: np.ndarray  # [n_items, n_features] float32
    names: tuple[str, ...]
    source: str


def prepare_world(data: Interactions, split: SplitConfig, data_dir: Path) -> PreparedWorld:
    """Split `data` by region and write the silo files, the catalog's public features and the manifest."""
    silos = split_silos(data, split)
    data_dir.mkdir(parents=True, exist_ok=True)
    for region, silo in silos.items():
        silo.save(data_dir / f"silo_{region}.npz")
    manifest: dict[str, Any] = {"regions": list(data.regions), "n_items": data.catalog.n_items,
                                "explicit": data.explicit, "catalog_source": data.catalog.source,
                                "item_features": None}
    catalog = data.catalog
    if catalog.features is not None:
        buf = io.BytesIO()
        np.save(buf, catalog.features, allow_pickle=False)
        payload = buf.getvalue()
        atomic_write_bytes(data_dir / FEATURES_FILE, payload)
        manifest["item_features"] = {"file": FEATURES_FILE, "n_features": catalog.n_features,
                                     "names": list(catalog.feature_names or ()),
                                     "sha256": hashlib.sha256(payload).hexdigest()}
    elif (data_dir / FEATURES_FILE).exists():  # a stale file of an earlier world must not be read as this one's
        (data_dir / FEATURES_FILE).unlink()
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return PreparedWorld(data_dir=data_dir, regions=data.regions, n_items=catalog.n_items, silos=silos,
                         item_features=catalog.features, feature_names=catalog.feature_names)


def load_catalog_features(data_dir: str | Path) -> CatalogFeatures | None:
    """The public item features of the world in `data_dir`, or None when its catalog has none.

    Checks what the manifest promises: the file's SHA-256, its shape [n_items, n_features], the feature names,
    float32 and finite values. Any mismatch is a `DataError` naming the file and how to re-create it.
    """
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read world manifest {manifest_path}: {exc}. Re-create the world with `fedrec`"
                        ) from exc
    entry = manifest.get("item_features")
    if entry is None:
        return None
    path = data_dir / str(entry.get("file", FEATURES_FILE))
    fix = "re-create the world with `fedrec` (prepare) or copy the data directory again"
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: the manifest lists public item features but the file cannot be read ({exc}): "
                        f"{fix}") from exc
    if hashlib.sha256(payload).hexdigest() != entry.get("sha256"):
        raise DataError(f"{path}: SHA-256 differs from the manifest's: the file was changed or truncated; {fix}")
    try:
        arr = np.load(io.BytesIO(payload), allow_pickle=False)  # a data directory must never execute code
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a NumPy array file ({exc}); {fix}") from exc
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[1] != entry.get("n_features"):
        raise DataError(f"{path}: holds {arr.dtype} {arr.shape}, the manifest promises float32 [n_items, "
                        f"{entry.get('n_features')}]; {fix}")
    names = tuple(entry.get("names") or ())
    features, names = check_item_features(arr, int(manifest["n_items"]), names or None, what=str(path))
    return CatalogFeatures(features=features, names=names, source=str(manifest.get("catalog_source", "")))
