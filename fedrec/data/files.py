"""Interactions from the operator's own CSV/TSV/Parquet file, checked row by row before training.

Why strict: a federated run is long and each silo spends privacy budget on it, so bad input must fail at load
time with the file, column, row and fix, not as a silent skew later. Three checks matter for sovereignty:
a user lives in exactly one region (the privacy unit is a user of one silo), (user, item, timestamp) rows
are unique, and the item id space comes from a public catalog, never from the private interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.schema import Catalog, Interactions, LoadReport, make_interactions
from fedrec.data.tabular import id_keys, numeric_values, read_frame, row_ref
from fedrec.errors import ConfigError, DataError

LOGICAL_COLUMNS = ("user", "item", "rating", "timestamp", "region")


def _check_duplicates(user: pd.Series, item: pd.Series, ts: np.ndarray, path: Path, is_csv: bool) -> None:
    """Fail on repeated (user, item, timestamp) rows, naming the first ones."""
    key = pd.DataFrame({"user": user, "item": item, "ts": ts})
    extra = key.duplicated()
    if extra.any():
        j = int(extra.to_numpy().argmax())
        rows = np.flatnonzero((key == key.iloc[j]).all(axis=1).to_numpy())[:5]
        convention = "1-based data rows, header not counted" if is_csv else "1-based rows"
        raise DataError(
            f"{path}: {int(extra.sum())} duplicate (user, item, timestamp) rows; the first are rows "
            f"{', '.join(str(r + 1) for r in rows)} ({convention}) for user {key['user'].iloc[j]!r}, "
            f"item {key['item'].iloc[j]!r}: deduplicate upstream"
        )


def _check_one_region(user: pd.Series, region: pd.Series, path: Path) -> None:
    """Fail when a user appears in more than one region: a user belongs to exactly one silo."""
    pairs = pd.DataFrame({"user": user, "region": region}).drop_duplicates()
    multi = pairs["user"].duplicated(keep=False)
    if multi.any():
        u = pairs["user"][multi].iloc[0]
        regions = pairs["region"][pairs["user"] == u].tolist()
        n = pairs["user"][multi].nunique()
        raise DataError(
            f"{path}: user {u!r} appears in regions {regions} ({n} users span several regions). A user "
            f"belongs to exactly one silo (the privacy unit is one user of one silo): fix the region column"
        )


def _file_catalog(catalog_path: Path) -> tuple[pd.Index, Catalog]:
    """Read the public catalog file: column `item` (its order is the id space), optional `title`."""
    what = "catalog file (dataset.catalog_path)"
    df = read_frame(catalog_path, what)
    is_csv = catalog_path.suffix.lower() in (".csv", ".tsv")
    if "item" not in df.columns:
        raise DataError(
            f"{what} {catalog_path} has no column 'item' (it has {list(map(str, df.columns))}): the catalog "
            f"needs an 'item' column, optionally a 'title' column"
        )
    if df.empty:
        raise DataError(f"{what} {catalog_path} has no rows: the catalog needs at least one item")
    keys = id_keys(df["item"], path=catalog_path, name="item", is_csv=is_csv)
    dup = keys.duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        raise DataError(
            f"{what} {catalog_path}: item {keys.iloc[i]!r} is listed twice (again at {row_ref(i, is_csv)}): "
            f"each catalog item must appear once"
        )
    titles = None
    if "title" in df.columns:
        titles = tuple(df["title"].fillna("").astype(str).tolist())
    catalog = Catalog(n_items=len(keys), titles=titles, source=f"catalog file {catalog_path.name}")
    return pd.Index(keys), catalog


def _declared_catalog(item: pd.Series, path: Path) -> tuple[pd.Index, Catalog]:
    """Catalog = the sorted distinct item ids of the file (numeric order when all ids are integers)."""
    uniq = pd.Series(item.unique())
    num = pd.to_numeric(uniq, errors="coerce")
    order = np.argsort(num.to_numpy(), kind="stable") if not num.isna().any() else np.argsort(uniq.to_numpy())
    keys = uniq.iloc[order].reset_index(drop=True)
    catalog = Catalog(n_items=len(keys), source=f"item ids of {path.name} (declared public by the operator)")
    return pd.Index(keys), catalog


def _column_mapping(columns: dict[str, str] | None) -> dict[str, str]:
    """Logical column -> the file's column name: the logical name unless `columns` renames it."""
    mapping = {name: name for name in LOGICAL_COLUMNS}
    for key, actual in (columns or {}).items():
        if key not in mapping:
            raise ConfigError(
                f"dataset.columns.{key} is not a known column: use one of {', '.join(LOGICAL_COLUMNS)}"
            )
        mapping[key] = str(actual)
    return mapping


def _require_columns(
    path: Path, mapping: dict[str, str], present: set[str], *, implicit: bool, region_default: str | None
) -> None:
    """Fail when a needed column is absent, naming each one, the setting that renames it and the alternatives."""
    optional = {"rating"} if implicit else set()
    if region_default is not None:
        optional.add("region")
    missing = [k for k in LOGICAL_COLUMNS if k not in optional and mapping[k] not in present]
    if missing:
        wanted = ", ".join(f"{k!r} (looked for column {mapping[k]!r})" for k in missing)
        fixes = " ".join(f"dataset.columns.{k}=<column>" for k in missing)
        why = " A timestamp is required: the train/test split is temporal." if "timestamp" in missing else ""
        alt = []
        if "rating" in missing:
            alt.append("dataset.implicit=true if the feedback is implicit")
        if "region" in missing:
            alt.append("dataset.region_column_default=<region> if all rows belong to one region")
        raise DataError(
            f"{path}: missing column(s) {wanted}; the file has columns {sorted(present)}. Set {fixes} to "
            f"name the file's column{' (or ' + '; '.join(alt) + ')' if alt else ''}.{why}"
        )


@dataclass(frozen=True)
class _Table:
    """The interactions file as read (rows renumbered from 0), and which file column holds each logical one."""

    path: Path
    df: pd.DataFrame
    mapping: dict[str, str]
    present: set[str]
    is_csv: bool

    def has(self, name: str) -> bool:
        """Whether the file has the column the logical column `name` maps to."""
        return self.mapping[name] in self.present

    def keys(self, name: str) -> pd.Series:
        """The id column for logical column `name`, as strings (see `id_keys`)."""
        column = self.mapping[name]
        return id_keys(self.df[column], path=self.path, name=column, is_csv=self.is_csv)

    def numbers(self, name: str, unit: str) -> np.ndarray:
        """The numeric column for logical column `name`, as finite float64 (see `numeric_values`)."""
        column = self.mapping[name]
        return numeric_values(self.df[column], path=self.path, name=column, is_csv=self.is_csv, unit=unit)


def _regions(table: _Table, region_default: str | None, report: LoadReport) -> pd.Series:
    """Each row's region: the region column, or `region_default` for every row when the file has none."""
    if table.has("region"):
        return table.keys("region")
    report.notes.append(
        f"no column {table.mapping['region']!r}: all rows are in region {region_default!r} "
        f"(dataset.region_column_default)"
    )
    return pd.Series(str(region_default), index=table.df.index)


def _ratings(table: _Table, implicit: bool, report: LoadReport) -> np.ndarray:
    """Each row's rating: the rating column, or 1.0 for every row with implicit feedback."""
    if not implicit:
        return table.numbers("rating", "numeric ratings")
    if table.has("rating"):
        report.notes.append(
            f"implicit feedback: column {table.mapping['rating']!r} ignored, every row counts 1.0"
        )
    return np.ones(len(table.df), dtype=np.float32)


def _item_catalog(
    item: pd.Series, path: Path, catalog_path: str | Path | None, items_public: bool, report: LoadReport
) -> tuple[pd.Index, Catalog]:
    """The item id space: the catalog file, else the file's own ids if declared public, else an error."""
    if catalog_path is not None:
        keys, catalog = _file_catalog(Path(catalog_path).expanduser())
        if items_public:
            report.notes.append("dataset.items_public ignored: the catalog file defines the item ids")
        return keys, catalog
    if items_public:
        keys, catalog = _declared_catalog(item, path)
        report.notes.append(
            f"the operator declared the item ids public (dataset.items_public=true): the catalog is the "
            f"{catalog.n_items:,} distinct items of {path.name}"
        )
        return keys, catalog
    raise DataError(
        f"{path}: no public item catalog. Item ids must come from a public catalog, not from the private "
        f"interactions: a catalog built from them reveals, for a rare item, that someone in some silo "
        f"interacted with it, and the model's shape carries that out of the silo. Either set "
        f"dataset.catalog_path=FILE (a CSV/TSV/Parquet file with an 'item' column, optionally 'title') "
        f"or, if these item ids are public anyway, dataset.items_public=true"
    )


def _item_features_file(features_path: Path, keys: pd.Index, catalog: Catalog) -> Catalog:
    """The catalog with public item features read from `features_path`: an `item` column + numeric columns.

    Every catalog item needs exactly one row; every other column is a feature (finite numbers). Errors name
    the file, the row and the fix.
    """
    what = "item feature file (dataset.item_features_path)"
    df = read_frame(features_path, what)
    is_csv = features_path.suffix.lower() in (".csv", ".tsv")
    if "item" not in df.columns:
        raise DataError(
            f"{what} {features_path} has no column 'item' (it has {list(map(str, df.columns))}): it needs an "
            f"'item' column with the catalog's item ids, every other column being a numeric feature"
        )
    columns = [c for c in df.columns if c != "item"]
    if not columns:
        raise DataError(f"{what} {features_path} has only the 'item' column: add at least one numeric feature column")
    if df.empty:
        raise DataError(f"{what} {features_path} has no rows: it needs one row per catalog item")
    df = df.reset_index(drop=True)
    ids = id_keys(df["item"], path=features_path, name="item", is_csv=is_csv)
    dup = ids.duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        first = int(np.flatnonzero((ids == ids.iloc[i]).to_numpy())[0])
        raise DataError(
            f"{what} {features_path}: item {ids.iloc[i]!r} has two rows ({row_ref(first, is_csv)} and "
            f"{row_ref(i, is_csv)}): give each catalog item exactly one row"
        )
    pos = keys.get_indexer(ids)
    if (pos < 0).any():
        i = int((pos < 0).argmax())
        raise DataError(
            f"{what} {features_path}: item {ids.iloc[i]!r} at {row_ref(i, is_csv)} is not in the catalog "
            f"{catalog.source} ({int((pos < 0).sum())} such rows): remove those rows or use the catalog the "
            f"features were written for"
        )
    if len(ids) < len(keys):
        missing = np.setdiff1d(np.arange(len(keys)), pos)
        raise DataError(
            f"{what} {features_path}: {len(missing):,} of {len(keys):,} catalog items have no row; the first is "
            f"item {keys[int(missing[0])]!r}: add a row for every catalog item (fill unknown values, e.g. with 0)"
        )
    values = np.column_stack([
        numeric_values(df[c], path=features_path, name=str(c), is_csv=is_csv, unit="numeric item features")
        for c in columns
    ])
    features = np.empty_like(values)
    features[pos] = values  # catalog order
    return Catalog(n_items=catalog.n_items, titles=catalog.titles, source=catalog.source,
                   features=features, feature_names=tuple(map(str, columns)))


def _catalog_index(keys: pd.Index, catalog: Catalog, item: pd.Series, path: Path, is_csv: bool) -> np.ndarray:
    """Each row's item as an index into the catalog; an item the catalog lacks fails with its row."""
    item_index = keys.get_indexer(item)
    unknown = item_index < 0
    if unknown.any():
        i = int(unknown.argmax())
        raise DataError(
            f"{path}: {int(unknown.sum()):,} of {len(item):,} interactions reference items not in the "
            f"catalog {catalog.source}; the first is item {item.iloc[i]!r} at {row_ref(i, is_csv)}. Use the "
            f"catalog these interactions were recorded against, or remove those rows upstream"
        )
    return item_index


def load_interactions_file(
    path: str | Path,
    *,
    columns: dict[str, str] | None = None,
    catalog_path: str | Path | None = None,
    items_public: bool = False,
    implicit: bool = False,
    region_column_default: str | None = None,
    item_features_path: str | Path | None = None,
) -> Interactions:
    """Load interactions from CSV/TSV/Parquet with logical columns user, item, rating, timestamp, region.

    `columns` maps a logical name to the file's column name. `rating` may be absent with `implicit=True`
    (every interaction then counts 1.0); `region` may be absent when `region_column_default` names the one
    region all rows belong to. The item id space is `catalog_path` (a public catalog file) or, only when
    the operator declares the ids public (`items_public=True`), the file's own distinct item ids.
    `item_features_path` (optional) is a public item-feature file: an `item` column and numeric feature
    columns, one row per catalog item; the features travel in the catalog (`Catalog.features`).
    """
    path = Path(path).expanduser()
    mapping = _column_mapping(columns)
    df = read_frame(path, "interactions file")
    is_csv = path.suffix.lower() in (".csv", ".tsv")
    present = set(map(str, df.columns))
    _require_columns(path, mapping, present, implicit=implicit, region_default=region_column_default)
    if df.empty:
        raise DataError(f"{path} has a header but no rows: nothing to load")
    table = _Table(path, df.reset_index(drop=True), mapping, present, is_csv)
    report = LoadReport(source=str(path), rows_read=len(table.df))

    user = table.keys("user")
    item = table.keys("item")
    region = _regions(table, region_column_default, report)
    rating = _ratings(table, implicit, report)
    timestamp = table.numbers("timestamp", "unix timestamps (numbers)").astype(np.int64)

    _check_duplicates(user, item, timestamp, path, is_csv)
    _check_one_region(user, region, path)
    keys, catalog = _item_catalog(item, path, catalog_path, items_public, report)
    if item_features_path is not None:
        catalog = _item_features_file(Path(item_features_path).expanduser(), keys, catalog)
        report.notes.append(f"public item features: {catalog.n_features} columns from {Path(item_features_path).name}")
    item_index = _catalog_index(keys, catalog, item, path, is_csv)
    _, user_code = np.unique(user.to_numpy(dtype=str), return_inverse=True)
    return make_interactions(
        user=user_code,
        item=item_index,
        rating=rating,
        timestamp=timestamp,
        region_names=region.to_numpy(dtype=str),
        catalog=catalog,
        explicit=not implicit,
        report=report,
    )
