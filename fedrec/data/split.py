"""Per-silo train/validation/test split, done inside each jurisdiction on its own users.

Per user, interactions are ordered by time; the last `test_fraction` go to test, the `valid_fraction`
before that to validation, the rest to train (or leave-last-out: the last one to test, the one before to
validation). Users keep silo-local ids 0..n-1: a silo never needs, and never sends, a global user id.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.schema import Interactions
from fedrec.errors import ConfigError, DataError

SPLIT_METHODS = ("temporal_ratio", "leave_last_out")


@dataclass(frozen=True)
class SplitConfig:
    """How each silo splits its users' histories; validated on construction."""

    method: str = "temporal_ratio"
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    min_user_interactions: int = 3
    min_users_per_silo: int = 5

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise ConfigError(f"split.method={self.method!r} is unknown; choose one of {SPLIT_METHODS}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"split.test_fraction={self.test_fraction} must lie in (0, 1)")
        if not 0.0 <= self.valid_fraction < 1.0 - self.test_fraction:
            raise ConfigError(
                f"split.valid_fraction={self.valid_fraction} must lie in [0, 1 - test_fraction)"
            )
        if self.min_user_interactions < 3:
            raise ConfigError("split.min_user_interactions must be >= 3 (train, validation and test)")
        if self.min_users_per_silo < 1:
            raise ConfigError("split.min_users_per_silo must be >= 1")


@dataclass(frozen=True)
class SiloData:
    """One jurisdiction's data: three (user, item, rating) parts over silo-local user ids.

    Users with fewer than `min_user_interactions` interactions contribute to training only
    (`n_train_only_users` counts them); they are not evaluated. A re-interaction with an item already in
    the user's training part is removed from validation/test (`n_repeats_removed` counts them): full-ranking
    evaluation excludes training items, so such a target could never be ranked.
    """

    region: str
    n_users: int
    n_items: int
    explicit: bool
    train: tuple[np.ndarray, np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray, np.ndarray]
    n_train_only_users: int = 0
    n_repeats_removed: int = 0

    def save(self, path: Path) -> None:
        """Write the silo to one `.npz` file (what a silo's node keeps on its own disk)."""
        parts = {f"{p}_{c}": a for p in ("train", "valid", "test") for c, a in zip(
            ("user", "item", "rating"), getattr(self, p), strict=True)}
        meta = np.array([self.n_users, self.n_items, int(self.explicit), self.n_train_only_users,
                         self.n_repeats_removed])
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
            np.savez(f, meta=meta, region=np.array(self.region), **parts)

    @classmethod
    def load(cls, path: Path) -> SiloData:
        """Read a silo written by `save`; a missing or corrupt file is a `DataError`."""
        try:
            z = np.load(path, allow_pickle=False)  # a data directory must never execute code
            meta = z["meta"]
            parts = {p: tuple(z[f"{p}_{c}"] for c in ("user", "item", "rating")) for p in ("train", "valid", "test")}
            region = str(z["region"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read silo data {path}: {exc}. Re-create it with `fedrec` (prepare).") from exc
        return cls(region=region, n_users=int(meta[0]), n_items=int(meta[1]), explicit=bool(meta[2]),
                   n_train_only_users=int(meta[3]), n_repeats_removed=int(meta[4]), **parts)  # type: ignore[arg-type]


def split_silos(data: Interactions, cfg: SplitConfig) -> dict[str, SiloData]:
    """Split every region into a `SiloData`; errors name the region that cannot be split and the fix."""
    silos: dict[str, SiloData] = {}
    for code, region in enumerate(data.regions):
        mask = data.region == code
        if not mask.any():
            raise DataError(f"region {region!r} has no interactions (an empty silo): remove it or add data")
        silos[region] = split_one_silo(
            region,
            data.user[mask], data.item[mask], data.rating[mask], data.timestamp[mask],
            n_items=data.catalog.n_items, explicit=data.explicit, cfg=cfg,
        )
    return silos


def _part_sizes(n: np.ndarray, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Test and validation sizes for a user with `n` interactions (per row), leaving at least one to train."""
    if cfg.method == "leave_last_out":
        n_test = np.ones_like(n)
        n_valid = np.full_like(n, 1 if cfg.valid_fraction > 0 else 0)
    else:
        n_test = np.maximum(1, np.floor(n * cfg.test_fraction + 0.5).astype(np.int64))
        n_valid = np.floor(n * cfg.valid_fraction + 0.5).astype(np.int64)
        if cfg.valid_fraction > 0:
            n_valid = np.maximum(1, n_valid)
    # Every evaluated user keeps at least one training interaction (test first, then validation, shrink).
    n_test = np.minimum(n_test, n - 1)
    n_valid = np.clip(np.minimum(n_valid, n - 1 - n_test), 0, None)
    return n_test, n_valid


def _repeated_targets(key: np.ndarray, is_train: np.ndarray, is_valid: np.ndarray, is_test: np.ndarray) -> np.ndarray:
    """Validation/test rows whose (user, item) `key` the user already has in train (or valid, for test)."""
    repeat_of_train = np.isin(key, key[is_train]) & ~is_train
    repeat_of_valid = is_test & np.isin(key, key[is_valid])
    return repeat_of_train | repeat_of_valid


def _check_enough_users(region: str, counts: np.ndarray, cfg: SplitConfig) -> None:
    """Fail when fewer than `min_users_per_silo` users have enough interactions to be evaluated."""
    n_eval_users = int((counts >= cfg.min_user_interactions).sum())
    if n_eval_users < cfg.min_users_per_silo:
        raise DataError(
            f"region {region!r} has {n_eval_users} users with >= {cfg.min_user_interactions} interactions, "
            f"fewer than split.min_users_per_silo={cfg.min_users_per_silo}: too few users to split. "
            "Merge it into another region, drop it from the data, or lower split.min_users_per_silo."
        )


def split_one_silo(
    region: str,
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    *,
    n_items: int,
    explicit: bool,
    cfg: SplitConfig,
) -> SiloData:
    """Split one silo's interactions per user by time (vectorised: one lexsort, no per-user loop)."""
    uniq, local_user = np.unique(user, return_inverse=True)
    order = np.lexsort((item, timestamp, local_user))  # by user, then time (item breaks ties stably)
    u, i, r = local_user[order], item[order], rating[order]
    counts = np.bincount(u, minlength=len(uniq))
    _check_enough_users(region, counts, cfg)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos = np.arange(len(u)) - starts[u]  # position of each interaction in its user's timeline
    n = counts[u]
    n_test, n_valid = _part_sizes(n, cfg)
    evaluable = n >= cfg.min_user_interactions
    is_test = evaluable & (pos >= n - n_test)
    is_valid = evaluable & ~is_test & (pos >= n - n_test - n_valid)
    is_train = ~is_test & ~is_valid
    # Targets already seen earlier by the same user are not new: drop them from validation/test.
    dropped = _repeated_targets(u * np.int64(n_items) + i, is_train, is_valid, is_test)
    is_test &= ~dropped
    is_valid &= ~dropped
    return SiloData(
        region=region,
        n_users=len(uniq),
        n_items=n_items,
        explicit=explicit,
        train=(u[is_train], i[is_train], r[is_train]),
        valid=(u[is_valid], i[is_valid], r[is_valid]),
        test=(u[is_test], i[is_test], r[is_test]),
        n_train_only_users=int((counts < cfg.min_user_interactions).sum()),
        n_repeats_removed=int(dropped.sum()),
    )
