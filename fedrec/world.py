"""Preparing a world for a run: load the dataset, split each silo, write one file per silo + a manifest.

In simulation this stands in for each jurisdiction having its data on its own disk: the ClientApp of a
region opens only `silo_<region>.npz`. The manifest holds public facts only (region names, catalog size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedrec.data.schema import Interactions
from fedrec.data.split import SiloData, SplitConfig, split_silos


@dataclass(frozen=True)
class PreparedWorld:
    """A split world on disk and in memory."""

    data_dir: Path
    regions: tuple[str, ...]
    n_items: int
    silos: dict[str, SiloData]


def prepare_world(data: Interactions, split: SplitConfig, data_dir: Path) -> PreparedWorld:
    """Split `data` by region and write the silo files and manifest under `data_dir`."""
    silos = split_silos(data, split)
    data_dir.mkdir(parents=True, exist_ok=True)
    for region, silo in silos.items():
        silo.save(data_dir / f"silo_{region}.npz")
    manifest = {"regions": list(data.regions), "n_items": data.catalog.n_items, "explicit": data.explicit,
                "catalog_source": data.catalog.source}
    (data_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return PreparedWorld(data_dir=data_dir, regions=data.regions, n_items=data.catalog.n_items, silos=silos)
