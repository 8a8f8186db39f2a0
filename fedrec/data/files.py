"""Interactions from the operator's own CSV/TSV/Parquet file, checked row by row before training.

Why strict: a federated run is long and each silo spends privacy budget on it, so bad input must fail at load
time with the file, column, row and fix, not as a silent skew later. Three checks matter for sovereignty:
a user lives in exactly one region (the privacy unit is a user of one silo), (user, item, timestamp) rows
are unique, and the item id space comes from a public catalog, never from the private interactions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.schema import Catalog, Interactions, LoadReport, make_interactions
from fedrec.errors import ConfigError, DataError

LOGICAL_COLUMNS = ("user", "item", "rating", "timestamp", "region")
SUPPORTED = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}


def _read_frame(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV/TSV (all columns as strings, ids kept as written) or Parquet file."""
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        raise DataError(
            f"{what} {path}: unsupported extension {path.suffix or '(none)'!r}; supported: "
            f"{', '.join(SUPPORTED)} (CSV/TSV separator is taken from the extension)"
        )
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist or is not a file: fix the path")
    try:
        if SUPPORTED[ext] is None:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=SUPPORTED[ext], dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {path} is empty: it needs a header line and at least one row") from None
    except Exception as exc:  # pyarrow and the CSV parser raise many types; all mean "unreadable"
        raise DataError(f"{what} {path} cannot be read as {ext[1:].upper()}: {exc}") from exc


def _row(i: int, is_csv: bool) -> str:
    """Human row reference: 1-based data row, plus the file line for CSV (line 1 is the header)."""
    if is_csv:
        return f"data row {i + 1} (line {i + 2} of the file, line 1 being the header)"
    return f"row {i + 1} (1-based)"


def _keys(col: pd.Series, *, path: Path, name: str, is_csv: bool) -> pd.Series:
    """Id values as strings (ints and integral floats written without decimals); missing ids are errors."""
    if pd.api.types.is_float_dtype(col) and np.all(np.mod(col.dropna(), 1) == 0):
        col = col.astype("Int64")
    keys = col.astype(str).str.strip()
    missing = col.isna().to_numpy() | (keys == "").to_numpy()
    if missing.any():
        i = int(missing.argmax())
        raise DataError(
            f"{path}: column {name!r} is empty at {_row(i, is_csv)} ({int(missing.sum())} empty values): "
            f"every interaction needs a {name}"
        )
    return keys.reset_index(drop=True)


def _numbers(col: pd.Series, *, path: Path, name: str, is_csv: bool, unit: str) -> np.ndarray:
    """Finite float64 values; the first non-numeric or NaN value is reported with its row."""
    if pd.api.types.is_datetime64_any_dtype(col):  # Parquet timestamps -> unix seconds
        num = col.astype("datetime64[s]").astype("int64").astype("float64").where(col.notna()).to_numpy()
    else:
        num = pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()
    bad = ~np.isfinite(num)
    if bad.any():
        i = int(bad.argmax())
        value = col.iloc[i]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise DataError(
            f"{path}: column {name!r} has a non-numeric or missing value {shown} at {_row(i, is_csv)} "
            f"({int(bad.sum())} bad values); it must hold {unit}"
        )
    return num


def _check_duplicates(user: pd.Series, item: pd.Series, ts: np.ndarray, path: Path, is_csv: bool) -> None:
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
    df = _read_frame(catalog_path, what)
    is_csv = catalog_path.suffix.lower() in (".csv", ".tsv")
    if "item" not in df.columns:
        raise DataError(
            f"{what} {catalog_path} has no column 'item' (it has {list(map(str, df.columns))}): the catalog "
            f"needs an 'item' column, optionally a 'title' column"
        )
    if df.empty:
        raise DataError(f"{what} {catalog_path} has no rows: the catalog needs at least one item")
    keys = _keys(df["item"], path=catalog_path, name="item", is_csv=is_csv)
    dup = keys.duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        raise DataError(
            f"{what} {catalog_path}: item {keys.iloc[i]!r} is listed twice (again at {_row(i, is_csv)}): "
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


def load_interactions_file(
    path: str | Path,
    *,
    columns: dict[str, str] | None = None,
    catalog_path: str | Path | None = None,
    items_public: bool = False,
    implicit: bool = False,
    region_column_default: str | None = None,
) -> Interactions:
    """Load interactions from CSV/TSV/Parquet with logical columns user, item, rating, timestamp, region.

    `columns` maps a logical name to the file's column name. `rating` may be absent with `implicit=True`
    (every interaction then counts 1.0); `region` may be absent when `region_column_default` names the one
    region all rows belong to. The item id space is `catalog_path` (a public catalog file) or, only when
    the operator declares the ids public (`items_public=True`), the file's own distinct item ids.
    """
    path = Path(path).expanduser()
    mapping = {name: name for name in LOGICAL_COLUMNS}
    for key, actual in (columns or {}).items():
        if key not in mapping:
            raise ConfigError(
                f"dataset.columns.{key} is not a known column: use one of {', '.join(LOGICAL_COLUMNS)}"
            )
        mapping[key] = str(actual)

    df = _read_frame(path, "interactions file")
    is_csv = path.suffix.lower() in (".csv", ".tsv")
    present = set(map(str, df.columns))
    optional = {"rating"} if implicit else set()
    if region_column_default is not None:
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
    if df.empty:
        raise DataError(f"{path} has a header but no rows: nothing to load")
    df = df.reset_index(drop=True)
    report = LoadReport(source=str(path), rows_read=len(df))

    user = _keys(df[mapping["user"]], path=path, name=mapping["user"], is_csv=is_csv)
    item = _keys(df[mapping["item"]], path=path, name=mapping["item"], is_csv=is_csv)
    if mapping["region"] in present:
        region = _keys(df[mapping["region"]], path=path, name=mapping["region"], is_csv=is_csv)
    else:
        region = pd.Series(str(region_column_default), index=df.index)
        report.notes.append(
            f"no column {mapping['region']!r}: all rows are in region {region_column_default!r} "
            f"(dataset.region_column_default)"
        )
    if implicit:
        rating = np.ones(len(df), dtype=np.float32)
        if mapping["rating"] in present:
            report.notes.append(
                f"implicit feedback: column {mapping['rating']!r} ignored, every row counts 1.0"
            )
    else:
        rating = _numbers(
            df[mapping["rating"]], path=path, name=mapping["rating"], is_csv=is_csv, unit="numeric ratings"
        )
    ts = _numbers(
        df[mapping["timestamp"]], path=path, name=mapping["timestamp"], is_csv=is_csv,
        unit="unix timestamps (numbers)",
    )
    timestamp = ts.astype(np.int64)

    _check_duplicates(user, item, timestamp, path, is_csv)
    _check_one_region(user, region, path)

    if catalog_path is not None:
        keys, catalog = _file_catalog(Path(catalog_path).expanduser())
        if items_public:
            report.notes.append("dataset.items_public ignored: the catalog file defines the item ids")
    elif items_public:
        keys, catalog = _declared_catalog(item, path)
        report.notes.append(
            f"the operator declared the item ids public (dataset.items_public=true): the catalog is the "
            f"{catalog.n_items:,} distinct items of {path.name}"
        )
    else:
        raise DataError(
            f"{path}: no public item catalog. Item ids must come from a public catalog, not from the private "
            f"interactions: a catalog built from them reveals, for a rare item, that someone in some silo "
            f"interacted with it, and the model's shape carries that out of the silo. Either set "
            f"dataset.catalog_path=FILE (a CSV/TSV/Parquet file with an 'item' column, optionally 'title') "
            f"or, if these item ids are public anyway, dataset.items_public=true"
        )
    item_index = keys.get_indexer(item)
    unknown = item_index < 0
    if unknown.any():
        i = int(unknown.argmax())
        raise DataError(
            f"{path}: {int(unknown.sum()):,} of {len(item):,} interactions reference items not in the "
            f"catalog {catalog.source}; the first is item {item.iloc[i]!r} at {_row(i, is_csv)}. Use the "
            f"catalog these interactions were recorded against, or remove those rows upstream"
        )
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
