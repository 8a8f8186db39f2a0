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


@dataclass(frozen=True, eq=False)
class Catalog:
    """The public item catalog: the global item id space silos agree on, and optionally public item features.

    It must come from public information (a catalog file, a generator), never from the union of private
    interactions, because the catalog's shape travels with the model (see the trust model).

    `features` ([n_items, n_features] float32, finite) is public item metadata (MovieLens genres and year,
    an operator's item-feature file, the generator's tags): public like the catalog, so silos and the
    coordinator may all read it and using it costs no privacy. `feature_names` names its columns
    (default `f0`, `f1`, ...). Any numeric array is accepted and stored as C-contiguous float32.
    """

    n_items: int
    titles: tuple[str, ...] | None = None
    source: str = "generated"
    features: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.n_items <= 0:
            raise DataError(f"catalog has {self.n_items} items; a catalog needs at least one item")
        if self.titles is not None and len(self.titles) != self.n_items:
            raise DataError(f"catalog has {self.n_items} items but {len(self.titles)} titles")
        if self.features is None:
            if self.feature_names is not None:
                raise DataError("catalog has feature_names but no features: give both or neither")
            return
        features, names = check_item_features(self.features, self.n_items, self.feature_names, what=self.source)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "feature_names", names)

    @property
    def n_features(self) -> int:
        """Number of public item features (0 when the catalog has none)."""
        return 0 if self.features is None else int(self.features.shape[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Catalog):
            return NotImplemented
        same_features = (self.features is None and other.features is None) or (
            self.features is not None and other.features is not None
            and np.array_equal(self.features, other.features))
        return (same_features and (self.n_items, self.titles, self.source, self.feature_names)
                == (other.n_items, other.titles, other.source, other.feature_names))

    __hash__ = None  # type: ignore[assignment]  # holds an array: compared by value, not hashable


def check_item_features(features: object, n_items: int, names: tuple[str, ...] | None = None, *,
                        what: str = "catalog") -> tuple[np.ndarray, tuple[str, ...]]:
    """Validate public item features: numeric, [n_items, n_features], finite; return float32 and names.

    Errors are `DataError`s naming `what` (the catalog's source), the shape expected and, for a value that is
    not finite, the first item row and feature column holding one.
    """
    try:
        arr = np.asarray(features)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: item features are not an array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what}: item features must be numeric (bool, int or float), got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[0] != n_items or arr.shape[1] < 1:
        raise DataError(
            f"{what}: item features have shape {arr.shape}, expected [{n_items}, n_features >= 1] "
            f"(one row per catalog item, in catalog order)"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below, with its row
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{what}: item features hold {int(bad.sum())} non-finite values (NaN or inf, also a float64 value "
            f"beyond float32's range); the first is item row {row}, feature column {col}: fill or drop them"
        )
    if names is None:
        names = tuple(f"f{j}" for j in range(arr.shape[1]))
    names = tuple(str(n) for n in names)
    if len(names) != arr.shape[1]:
        raise DataError(f"{what}: {len(names)} feature names for {arr.shape[1]} feature columns")
    if len(set(names)) != len(names):
        raise DataError(f"{what}: feature names {list(names)} are not unique")
    return arr, names


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
