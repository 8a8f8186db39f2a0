"""Per-silo split invariants on a generated synthetic world, plus hand-made timelines with known answers."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from fedrec.data.schema import Catalog, Interactions
from fedrec.data.split import SiloData, SplitConfig, split_one_silo, split_silos
from fedrec.data.synthetic import SyntheticWorldConfig, generate_world
from fedrec.errors import ConfigError, DataError

WORLD_CFG = SyntheticWorldConfig(n_users=600, n_items=300, region_only_items=10, region_sizes=(5, 2, 1))


@pytest.fixture(scope="module")
def world() -> Interactions:
    """The synthetic world with each row's index in the rating column.

    The split carries ratings through untouched, so every row of every part names the world row it came from:
    its global user and timestamp, which a silo itself never stores.
    """
    data = generate_world(WORLD_CFG)
    return replace(data, rating=np.arange(len(data), dtype=np.float32))


@pytest.fixture(scope="module")
def silos(world: Interactions) -> dict[str, SiloData]:
    return split_silos(world, SplitConfig())


def rows(part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """World row indices of a split part (see the `world` fixture)."""
    return part[2].astype(np.int64)


def assert_time_ordered(world: Interactions, silo: SiloData) -> None:
    """Per local user: every train interaction is no later than any valid one, valid no later than test."""
    for u in range(silo.n_users):
        train, valid, test = (world.timestamp[rows(p)[p[0] == u]] for p in (silo.train, silo.valid, silo.test))
        if len(test):
            assert train.max() <= min(valid.min(initial=test.min()), test.min()), u
        if len(valid):
            assert valid.max() <= test.min(), u


# --- partition ------------------------------------------------------------------------------------------------


def test_every_user_belongs_to_exactly_one_silo(world: Interactions, silos: dict[str, SiloData]) -> None:
    # Prepare
    user_region_pairs = np.unique(np.stack([world.user, world.region.astype(np.int64)]), axis=1)

    # Execute
    n_regions_per_user = np.bincount(user_region_pairs[0])
    users_of = {r: set(world.user[rows(s.train)].tolist()) for r, s in silos.items()}

    # Assert: one region per user, silos hold disjoint users, and their user counts add up to the world's
    assert set(n_regions_per_user.tolist()) == {1}
    assert sum(len(u) for u in users_of.values()) == len(set.union(*users_of.values()))
    assert sum(s.n_users for s in silos.values()) == len(np.unique(world.user))
    assert {r: s.n_users for r, s in silos.items()} == world.users_per_region()


def test_every_interaction_lands_in_exactly_one_part(world: Interactions, silos: dict[str, SiloData]) -> None:
    for region, silo in silos.items():
        # Prepare
        parts = (silo.train, silo.valid, silo.test)

        # Execute
        all_rows = np.concatenate([rows(p) for p in parts])
        local_global = {(lu, gu) for p in parts for lu, gu in zip(p[0].tolist(), world.user[rows(p)].tolist(),
                                                                   strict=True)}

        # Assert: each of the region's rows exactly once, with its own item, under one local id per user
        assert sum(len(p[0]) for p in parts) == int(world.region_mask(region).sum()), region
        np.testing.assert_array_equal(np.sort(all_rows), np.flatnonzero(world.region_mask(region)))
        for p in parts:
            np.testing.assert_array_equal(p[1], world.item[rows(p)])
        assert len(local_global) == silo.n_users == len({lu for lu, _ in local_global}) == len(
            {gu for _, gu in local_global})
        assert {lu for lu, _ in local_global} == set(range(silo.n_users))


def test_test_interactions_are_each_users_latest(world: Interactions, silos: dict[str, SiloData]) -> None:
    for silo in silos.values():
        assert_time_ordered(world, silo)
        assert set(silo.test[0].tolist()) == set(range(silo.n_users))  # every synthetic user is evaluable


def test_test_items_are_never_in_the_same_users_train(silos: dict[str, SiloData]) -> None:
    for silo in silos.values():
        # Prepare
        train_pairs = set(zip(silo.train[0].tolist(), silo.train[1].tolist(), strict=True))

        # Execute
        overlap = [(u, i) for u, i in zip(silo.test[0].tolist(), silo.test[1].tolist(), strict=True)
                   if (u, i) in train_pairs]

        # Assert
        assert overlap == []


def test_temporal_ratio_respects_the_fractions(world: Interactions, silos: dict[str, SiloData]) -> None:
    for silo in silos.values():
        # Prepare
        n = np.bincount(np.concatenate([silo.train[0], silo.valid[0], silo.test[0]]), minlength=silo.n_users)

        # Execute
        n_test = np.bincount(silo.test[0], minlength=silo.n_users)
        n_valid = np.bincount(silo.valid[0], minlength=silo.n_users)

        # Assert: per user within one interaction of 20% / 10% (rounding), overall close to the fractions
        assert np.all(np.abs(n_test - 0.2 * n) <= 1)
        assert np.all(np.abs(n_valid - 0.1 * n) <= 1)
        assert n_test.sum() / n.sum() == pytest.approx(0.2, abs=0.02)
        assert n_valid.sum() / n.sum() == pytest.approx(0.1, abs=0.02)


def test_leave_last_out_gives_one_test_and_one_valid_per_user(world: Interactions) -> None:
    # Prepare
    cfg = SplitConfig(method="leave_last_out")

    # Execute
    silos = split_silos(world, cfg)

    # Assert: every synthetic user has >= 8 interactions, so all are evaluable: 1 test (the latest), 1 valid
    for silo in silos.values():
        assert np.bincount(silo.test[0], minlength=silo.n_users).tolist() == [1] * silo.n_users
        assert np.bincount(silo.valid[0], minlength=silo.n_users).tolist() == [1] * silo.n_users
        assert_time_ordered(world, silo)


def test_users_below_min_interactions_are_train_only_and_counted(world: Interactions) -> None:
    # Prepare: a threshold that catches part of the (>= 8 interaction) synthetic users
    cfg = SplitConfig(min_user_interactions=15)

    # Execute
    silos = split_silos(world, cfg)

    # Assert
    for region, silo in silos.items():
        _, world_counts = np.unique(world.user[world.region_mask(region)], return_counts=True)
        n = np.bincount(np.concatenate([silo.train[0], silo.valid[0], silo.test[0]]), minlength=silo.n_users)
        short = np.flatnonzero(n < 15)
        assert silo.n_train_only_users == int((world_counts < 15).sum()) == len(short) > 0, region
        assert not np.isin(short, silo.test[0]).any()
        assert not np.isin(short, silo.valid[0]).any()
        assert np.isin(np.flatnonzero(n >= 15), silo.test[0]).all()


def test_hand_made_timeline_is_split_by_time() -> None:
    # Prepare: user 7 has 10 interactions with items 0..9 at shuffled times; user 3 has 2 (below the minimum 3)
    times = [50, 10, 90, 30, 70, 20, 100, 60, 40, 80]  # item k happens at times[k]
    user = np.array([7] * 10 + [3, 3])
    item = np.array([*range(10), 4, 5])
    timestamp = np.array([*times, 1, 2])

    # Execute
    silo = split_one_silo("r", user, item, np.ones(12, np.float32), timestamp, n_items=10, explicit=False,
                          cfg=SplitConfig(min_users_per_silo=1))

    # Assert: local ids by sorted global id (3 -> 0, 7 -> 1). For user 7, test = round(10 * 0.2) = 2 latest
    # (times 100, 90: items 6, 2), valid = round(10 * 0.1) = 1 before those (time 80: item 9), train the rest.
    assert silo.n_users == 2
    assert silo.n_train_only_users == 1
    assert sorted(silo.test[1].tolist()) == [2, 6]
    assert silo.valid[1].tolist() == [9]
    assert sorted(silo.train[1][silo.train[0] == 1].tolist()) == [0, 1, 3, 4, 5, 7, 8]
    assert sorted(silo.train[1][silo.train[0] == 0].tolist()) == [4, 5]


def test_every_evaluated_user_keeps_a_training_interaction() -> None:
    # Prepare: a configuration SplitConfig accepts, and a user with 3 interactions
    cfg = SplitConfig(test_fraction=0.5, valid_fraction=0.4, min_users_per_silo=1)

    # Execute
    silo = split_one_silo("r", np.zeros(3, np.int64), np.arange(3), np.ones(3, np.float32), np.arange(3),
                          n_items=3, explicit=False, cfg=cfg)

    # Assert
    assert len(silo.test[0]) >= 1
    assert len(silo.train[0]) >= 1


def test_a_reinteracted_item_is_not_in_both_train_and_test() -> None:
    # Prepare: item 0 watched first and again last
    user = np.zeros(6, np.int64)
    item = np.array([0, 1, 2, 3, 4, 0])
    timestamp = np.arange(6)

    # Execute
    silo = split_one_silo("r", user, item, np.ones(6, np.float32), timestamp, n_items=5, explicit=False,
                          cfg=SplitConfig(min_users_per_silo=1))

    # Assert
    assert set(silo.test[1].tolist()).isdisjoint(silo.train[1].tolist())


# --- errors ---------------------------------------------------------------------------------------------------


def test_region_with_too_few_users_is_a_data_error_naming_it(world: Interactions) -> None:
    # Prepare: users per region are 375 / 150 / 75 (eu / na / apac)
    cfg = SplitConfig(min_users_per_silo=100)

    # Execute / Assert
    with pytest.raises(DataError, match=r"'apac'.*split\.min_users_per_silo=100"):
        split_silos(world, cfg)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"method": "random"}, "split.method"),
    ({"test_fraction": 0.0}, "split.test_fraction"),
    ({"test_fraction": 1.0}, "split.test_fraction"),
    ({"test_fraction": 2.0}, "split.test_fraction"),
    ({"valid_fraction": -0.1}, "split.valid_fraction"),
    ({"valid_fraction": 0.8}, "split.valid_fraction"),  # 0.8 + 0.2 leaves nothing to train on
    ({"min_user_interactions": 2}, "split.min_user_interactions"),
    ({"min_users_per_silo": 0}, "split.min_users_per_silo"),
])
def test_bad_split_config_is_a_config_error_naming_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        SplitConfig(**kwargs)  # type: ignore[arg-type]


# --- storage --------------------------------------------------------------------------------------------------


def test_silo_data_roundtrips_through_a_file(silos: dict[str, SiloData], tmp_path: Path) -> None:
    # Prepare
    silo = silos["na"]
    path = tmp_path / "silo_na.npz"

    # Execute
    silo.save(path)
    loaded = SiloData.load(path)

    # Assert
    for f in fields(SiloData):
        a, b = getattr(silo, f.name), getattr(loaded, f.name)
        if isinstance(a, tuple):
            for x, y in zip(a, b, strict=True):
                np.testing.assert_array_equal(x, y)
                assert x.dtype == y.dtype
        else:
            assert a == b, f.name


def test_silo_data_roundtrips_through_a_path_without_suffix(silos: dict[str, SiloData], tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "silo_na"

    # Execute
    silos["na"].save(path)
    loaded = SiloData.load(path)

    # Assert
    assert loaded.n_users == silos["na"].n_users


def _write_junk(path: Path, silo: SiloData) -> None:
    path.write_bytes(b"not a numpy file at all " * 20)


def _write_truncated(path: Path, silo: SiloData) -> None:
    silo.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_empty(path: Path, silo: SiloData) -> None:
    path.write_bytes(b"")


def _write_without_meta(path: Path, silo: SiloData) -> None:
    np.savez(path, region=np.array("na"))


def _no_file(path: Path, silo: SiloData) -> None:
    pass




@pytest.mark.parametrize("corrupt", [
    _write_junk,
    _write_without_meta,
    _no_file,
    _write_truncated,
    _write_empty,
], ids=["junk", "missing-key", "missing-file", "truncated", "empty"])
def test_loading_a_corrupt_silo_file_is_a_data_error(corrupt, silos: dict[str, SiloData], tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "silo_na.npz"
    corrupt(path, silos["na"])

    # Execute / Assert: the message names the file and how to fix it
    with pytest.raises(DataError, match=r"silo_na\.npz.*Re-create it"):
        SiloData.load(path)


def test_a_declared_region_without_interactions_is_an_empty_silo_error() -> None:
    # Prepare: two declared regions, every interaction in the first one
    n = 40
    data = Interactions(user=np.repeat(np.arange(8), 5), item=np.tile(np.arange(5), 8),
                        rating=np.ones(n, np.float32), timestamp=np.arange(n), region=np.zeros(n, np.int16),
                        regions=("eu", "mena"), catalog=Catalog(n_items=5))

    # Execute / Assert
    with pytest.raises(DataError, match=r"'mena' has no interactions \(an empty silo\)"):
        split_silos(data, SplitConfig(min_users_per_silo=1))
