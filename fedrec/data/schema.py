"""The interactions schema every loader produces, and the report of what a loader filtered.

One table of parallel numpy arrays (user, item, rating, timestamp, region) plus the public item catalog.
Item ids index the catalog (one global id space across silos); user ids are only unique within the
table and never leave a silo. Columnar numpy keeps a million interactions in a few MB and makes every
later step (split, batching) vectorised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.errors import DataError


@dataclass(frozen=True)
class Catalog:
    """The public item catalog: the global item id space silos agree on.

    It must come from public information (a catalog file, a generator), never from the union of private
    interactions, because the catalog's shape travels with the model (see the trust model).
    """

    n_items: int
    titles: tuple[str, ...] | None = None
    source: str = "generated"

    def __post_init__(self) -> None:
        if self.n_items <= 0:
            raise DataError(f"catalog has {self.n_items} items; a catalog needs at least one item")
        if self.titles is not None and len(self.titles) != self.n_items:
            raise DataError(f"catalog has {self.n_items} items but {len(self.titles)} titles")


@dataclass
class LoadReport:
    """What a loader read, kept and filtered, so nothing is dropped silently."""

    source: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, count: int) -> None:
        """Record that `count` rows were filtered for `reason` (zero counts are not recorded)."""
        if count:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(count)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per fact."""
        out = [f"{self.source}: read {self.rows_read:,} rows"]
        out += [f"  dropped {n:,} rows: {why}" for why, n in self.dropped.items()]
        out += [f"  {note}" for note in self.notes]
        return out


@dataclass(frozen=True)
class Interactions:
    """All interactions of a world, each tagged with the jurisdiction (region) that holds it.

    `region` holds indices into `regions`. `rating` is the explicit rating, or 1.0 for implicit feedback.
    """

    user: np.ndarray  # int64
    item: np.ndarray  # int64, indexes the catalog
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64
    region: np.ndarray  # int16 index into `regions`
    regions: tuple[str, ...]
    catalog: Catalog
    explicit: bool = False
    report: LoadReport | None = None

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "rating", "timestamp", "region"):
            if len(getattr(self, name)) != n:
                raise DataError(f"column {name!r} has {len(getattr(self, name))} rows, 'user' has {n}")
        if n == 0:
            raise DataError("no interactions: the dataset is empty after loading")
        if len(set(self.regions)) != len(self.regions):
            raise DataError(f"region names are not unique: {self.regions}")
        if self.item.min() < 0 or self.item.max() >= self.catalog.n_items:
            raise DataError(
                f"item ids must lie in [0, {self.catalog.n_items}) (the catalog), "
                f"found [{self.item.min()}, {self.item.max()}]"
            )
        if self.region.min() < 0 or self.region.max() >= len(self.regions):
            raise DataError("region codes out of range of the region names")

    def __len__(self) -> int:
        return len(self.user)

    def region_mask(self, name: str) -> np.ndarray:
        """Boolean mask of the interactions held by region `name`."""
        return self.region == self.regions.index(name)

    def users_per_region(self) -> dict[str, int]:
        """Number of distinct users in each region."""
        return {
            r: int(np.unique(self.user[self.region == i]).size) for i, r in enumerate(self.regions)
        }


def make_interactions(
    *,
    user: np.ndarray,
    item: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    region_names: np.ndarray,
    catalog: Catalog,
    explicit: bool,
    report: LoadReport | None = None,
    region_order: list[str] | None = None,
) -> Interactions:
    """Build `Interactions` from per-row region *names*, fixing dtypes and a stable region order.

    Regions are ordered by `region_order` when given, else sorted by name, so the same data always gives
    the same silo numbering.
    """
    names, codes = np.unique(np.asarray(region_names).astype(str), return_inverse=True)
    if region_order is not None:
        missing = set(names) - set(region_order)
        if missing:
            raise DataError(f"regions {sorted(missing)} are not in the declared region order")
        order = [r for r in region_order if r in set(names)]
        remap = np.array([order.index(n) for n in names], dtype=np.int64)
        codes = remap[codes]
        names = np.array(order)
    return Interactions(
        user=np.asarray(user, dtype=np.int64),
        item=np.asarray(item, dtype=np.int64),
        rating=np.asarray(rating, dtype=np.float32),
        timestamp=np.asarray(timestamp, dtype=np.int64),
        region=codes.astype(np.int16),
        regions=tuple(str(n) for n in names),
        catalog=catalog,
        explicit=explicit,
        report=report,
    )
