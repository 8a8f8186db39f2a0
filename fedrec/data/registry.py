"""Dataset names → loaders, so `dataset=NAME` in config picks one and unknown names list what exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedrec.data.schema import Interactions
from fedrec.errors import ConfigError

if TYPE_CHECKING:
    from fedrec.data.synthetic import SyntheticWorldConfig

Loader = Callable[[dict[str, Any]], Interactions]


def synthetic_config(p: dict[str, Any]) -> SyntheticWorldConfig:
    """The validated synthetic world `dataset=synthetic` with these params would generate."""
    from fedrec.data.synthetic import SyntheticWorldConfig

    params = dict(p)
    for key in ("region_sizes", "region_names", "region_shift_scale"):
        if key in params and params[key] is not None:
            params[key] = tuple(params[key])
    try:
        return SyntheticWorldConfig(**params)
    except TypeError as exc:
        raise ConfigError(f"dataset=synthetic: {exc}") from exc


def _synthetic(p: dict[str, Any]) -> Interactions:
    from fedrec.data.synthetic import generate_world

    return generate_world(synthetic_config(p))


def _check_keys(dataset: str, params: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} for dataset={dataset}; known: {sorted(known)}")


def _movielens(p: dict[str, Any]) -> Interactions:
    from fedrec.data.movielens import load_movielens
    from fedrec.data.movielens_download import resolve_movielens

    _check_keys("movielens", p, {"variant", "path", "cache_dir", "unknown_zip"})
    variant = str(p.get("variant", "100k"))
    path = resolve_movielens(p.get("path"), variant, p.get("cache_dir") or "~/.cache/fedrec")
    return load_movielens(path, variant=variant, unknown_zip=str(p.get("unknown_zip", "own_silo")))


def _file(p: dict[str, Any]) -> Interactions:
    from fedrec.data.files import load_interactions_file

    _check_keys("file", p, {"path", "columns", "catalog_path", "items_public", "implicit", "region_default",
                            "item_features_path"})
    if not p.get("path"):
        raise ConfigError("dataset=file needs dataset.path=FILE (a CSV, TSV or Parquet file of interactions)")
    return load_interactions_file(
        p["path"],
        columns=dict(p.get("columns") or {}),
        catalog_path=p.get("catalog_path"),
        items_public=bool(p.get("items_public", False)),
        implicit=bool(p.get("implicit", False)),
        region_column_default=p.get("region_default"),
        item_features_path=p.get("item_features_path"),
    )


_LOADERS: dict[str, Loader] = {"synthetic": _synthetic, "movielens": _movielens, "file": _file}


def load_dataset(name: str, params: dict[str, Any]) -> Interactions:
    """Load dataset `name` with its group's parameters (everything but `name`)."""
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[name](params)
