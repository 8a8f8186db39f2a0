"""Public item features: the synthetic generator's tags, the catalog's validation, the world on disk, and the
`experiment=sovereign_dp` world's shape (sizes checked without generating 79,000 users; sparsity on a scaled copy)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.schema import Catalog
from fedrec.data.split import SplitConfig
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world, latent_item_factors, users_per_region
from fedrec.errors import ConfigError, DataError
from fedrec.world import FEATURES_FILE, load_catalog_features, prepare_world
from tests.test_config import typed

SMALL = SyntheticWorldConfig(n_users=600, n_items=300, region_only_items=10, region_sizes=(5, 2, 1))
COLUMNS = ("user", "item", "rating", "timestamp", "region")


def held_out_r2(features: np.ndarray, latent: np.ndarray, *, seed: int = 0) -> float:
    """How much of the latent item factors a ridge regression on the features explains, on held-out items."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    train, test = order[: len(order) // 2], order[len(order) // 2:]
    x = np.column_stack([features, np.ones(len(features))]).astype(np.float64)
    w = np.linalg.solve(x[train].T @ x[train] + 1e-3 * np.eye(x.shape[1]), x[train].T @ latent[train])
    resid = latent[test] - x[test] @ w
    return float(1.0 - (resid**2).sum() / ((latent[test] - latent[test].mean(0)) ** 2).sum())


# --- the synthetic generator's public item features ------------------------------------------------------------


def test_synthetic_catalog_has_32_binary_tags_by_default_deterministic_by_seed() -> None:
    # Execute
    a, b = generate_world(SMALL).catalog, generate_world(SMALL).catalog
    other = generate_world(replace(SMALL, seed=1)).catalog

    # Assert: [items, 32] float32 in {0, 1}, about 16% of items per tag, the same for a seed, not for another
    assert a.features is not None and a.features.shape == (330, 32) and a.features.dtype == np.float32
    assert set(np.unique(a.features).tolist()) == {0.0, 1.0}
    assert 0.10 < a.features.mean() < 0.22
    assert a.feature_names == tuple(f"tag{j:02d}" for j in range(32))
    assert a == b
    assert other.features is not None and not np.array_equal(a.features, other.features)


def test_features_do_not_change_the_interactions_of_a_seed() -> None:
    # Execute
    with_tags = generate_world(SMALL)
    without = generate_world(replace(SMALL, item_features=0))
    dense = generate_world(replace(SMALL, item_feature_kind="dense", item_feature_noise=3.0))

    # Assert
    assert without.catalog.features is None and without.catalog.n_features == 0
    for col in COLUMNS:
        np.testing.assert_array_equal(getattr(with_tags, col), getattr(without, col), err_msg=col)
        np.testing.assert_array_equal(getattr(with_tags, col), getattr(dense, col), err_msg=col)


@pytest.mark.parametrize("kind", ["binary", "dense"])
def test_features_carry_the_latent_item_factors_and_noise_dilutes_them(kind: str) -> None:
    # Prepare
    cfg = SyntheticWorldConfig(n_users=100, n_items=3000, region_only_items=0, region_sizes=(1.0,),
                               item_feature_kind=kind)
    latent = latent_item_factors(cfg)

    # Execute: held-out R² of the latent factors from the features, at three noise levels and for shuffled rows
    r2 = {noise: held_out_r2(generate_world(replace(cfg, item_feature_noise=noise)).catalog.features, latent)
          for noise in (0.0, 1.0, 5.0)}
    feats = generate_world(cfg).catalog.features
    assert feats is not None
    shuffled = held_out_r2(feats[np.random.default_rng(1).permutation(len(feats))], latent)

    # Assert: informative by default, more so without noise, almost nothing at noise 5 or when shuffled
    assert r2[0.0] > r2[1.0] > r2[5.0]
    assert r2[1.0] > (0.2 if kind == "binary" else 0.45)  # measured 0.31 and 0.58
    assert r2[5.0] < 0.15
    assert shuffled < 0.02


def test_dense_features_have_unit_scale() -> None:
    # Execute
    cat = generate_world(replace(SMALL, item_feature_kind="dense", item_features=8)).catalog

    # Assert
    assert cat.features is not None and cat.features.shape == (330, 8)
    assert cat.feature_names == tuple(f"f{j}" for j in range(8))
    assert 0.7 < float(cat.features.std()) < 1.3


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"item_features": -1}, "item_features"),
    ({"item_feature_kind": "sparse"}, "item_feature_kind"),
    ({"item_feature_noise": -0.5}, "item_feature_noise"),
])
def test_invalid_feature_config_is_a_config_error_naming_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"dataset\.{key}"):
        SyntheticWorldConfig(**kwargs)  # type: ignore[arg-type]


# --- the catalog's validation -----------------------------------------------------------------------------------


def test_catalog_features_are_stored_as_float32_with_default_names() -> None:
    # Execute
    cat = Catalog(n_items=3, features=np.array([[1, 0], [0, 1], [1, 1]], dtype=np.int64))

    # Assert
    assert cat.features is not None and cat.features.dtype == np.float32 and cat.n_features == 2
    assert cat.feature_names == ("f0", "f1")


@pytest.mark.parametrize(("features", "names", "match"), [
    (np.zeros((2, 2)), None, r"shape \(2, 2\), expected \[3, n_features >= 1\]"),
    (np.zeros(3), None, r"shape \(3,\), expected \[3, n_features >= 1\]"),
    (np.zeros((3, 0)), None, r"shape \(3, 0\)"),
    (np.array([[0.0], [np.nan], [1.0]]), None, r"1 non-finite values .* item row 1, feature column 0"),
    (np.array([[0.0], [1e300], [1.0]]), None, r"item row 1, feature column 0"),
    (np.array([["a"], ["b"], ["c"]]), None, r"must be numeric"),
    (np.zeros((3, 2)), ("a",), r"1 feature names for 2 feature columns"),
    (np.zeros((3, 2)), ("a", "a"), r"not unique"),
    (None, ("a",), r"feature_names but no features"),
])
def test_bad_catalog_features_are_data_errors(features: object, names: tuple[str, ...] | None, match: str) -> None:
    with pytest.raises(DataError, match=match):
        Catalog(n_items=3, source="test catalog", features=features, feature_names=names)  # type: ignore[arg-type]


# --- the world on disk ----------------------------------------------------------------------------------------------


def test_prepared_world_writes_the_public_features_for_silos_and_coordinator(tmp_path: Path) -> None:
    # Prepare
    data = generate_world(SMALL)

    # Execute
    world = prepare_world(data, SplitConfig(), tmp_path / "world")
    loaded = load_catalog_features(tmp_path / "world")

    # Assert: the file next to the manifest, named and hashed there, read back exactly
    manifest = json.loads((tmp_path / "world" / "manifest.json").read_text())
    entry = manifest["item_features"]
    assert (entry["file"], entry["n_features"], entry["names"][0]) == (FEATURES_FILE, 32, "tag00")
    assert loaded is not None and data.catalog.features is not None
    np.testing.assert_array_equal(loaded.features, data.catalog.features)
    assert loaded.names == data.catalog.feature_names and loaded.source == "synthetic generator (public)"
    assert world.item_features is not None and world.feature_names == loaded.names
    assert not any(k in json.dumps(manifest) for k in ("user", "train"))  # public facts only


def test_a_world_without_features_has_none_and_drops_a_stale_file(tmp_path: Path) -> None:
    # Prepare: a world with features, then another without in the same directory
    prepare_world(generate_world(SMALL), SplitConfig(), tmp_path)

    # Execute
    prepare_world(generate_world(replace(SMALL, item_features=0)), SplitConfig(), tmp_path)

    # Assert
    assert load_catalog_features(tmp_path) is None
    assert not (tmp_path / FEATURES_FILE).exists()


def test_a_changed_features_file_is_refused(tmp_path: Path) -> None:
    # Prepare
    prepare_world(generate_world(SMALL), SplitConfig(), tmp_path)
    path = tmp_path / FEATURES_FILE
    path.write_bytes(path.read_bytes()[:-4] + b"\x00\x00\x80\x3f")

    # Execute / Assert
    with pytest.raises(DataError, match=r"catalog_features\.npy: SHA-256 differs from the manifest's"):
        load_catalog_features(tmp_path)
    path.unlink()
    with pytest.raises(DataError, match=r"lists public item features but the file cannot be read"):
        load_catalog_features(tmp_path)


# --- experiment=sovereign_dp: the world's shape -----------------------------------------------------------------


def sovereign_config(**changes: object) -> SyntheticWorldConfig:
    stated = typed(["experiment=sovereign_dp"]).dataset.params
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in stated.items()}
    return SyntheticWorldConfig(**{**params, **changes})


def test_sovereign_world_sizes_span_2k_to_50k_users() -> None:
    # Execute (no generation: the split of users is arithmetic)
    cfg = sovereign_config()
    users = dict(zip(cfg.names, users_per_region(cfg).tolist(), strict=True))

    # Assert: 6 jurisdictions, 2,000 to 50,000 users (25x), four of them under 10% of the world
    assert users == {"eu": 50000, "na": 14000, "apac": 6000, "latam": 4000, "mena": 3000, "africa": 2000}
    assert sum(1 for n in users.values() if n < 0.1 * cfg.n_users) == 4
    assert cfg.n_items + len(users) * cfg.region_only_items == 5600
    assert cfg.item_features == 32


@pytest.mark.parametrize("seed", [0, 1])
def test_sovereign_world_is_sparse_and_long_tailed_by_seed(seed: int) -> None:
    # Prepare: the same world at 1/20 of its users (same shares, catalog and history lengths)
    cfg = sovereign_config(n_users=3950, seed=seed)

    # Execute
    world = generate_world(cfg)
    per_user = np.bincount(world.user)
    counts = np.sort(np.bincount(world.item, minlength=world.catalog.n_items))[::-1]

    # Assert: tens of interactions per user, at least 5, a catalog of 5,600 items with a long tail
    assert world.catalog.n_items == 5600
    assert per_user.min() >= 5 and 15 <= per_user.mean() <= 25 and np.median(per_user) < 20
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.3
    assert world.users_per_region()["eu"] / world.users_per_region()["africa"] == pytest.approx(25, rel=0.02)
