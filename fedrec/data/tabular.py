"""Reading an operator's CSV/TSV/Parquet table and its columns, with errors naming file, column and row.

CSV/TSV columns are read as strings so ids keep exactly the form they were written in; rows are referred to
1-based, plus the file line for CSV/TSV (line 1 is the header). The interactions loader is `fedrec.data.files`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.errors import DataError

SUPPORTED = {".csv": ",", ".tsv": "\t", ".parquet": None, ".pq": None}


def read_frame(path: Path, what: str) -> pd.DataFrame:
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


def row_ref(i: int, is_csv: bool) -> str:
    """Human row reference: 1-based data row, plus the file line for CSV (line 1 is the header)."""
    if is_csv:
        return f"data row {i + 1} (line {i + 2} of the file, line 1 being the header)"
    return f"row {i + 1} (1-based)"


def id_keys(col: pd.Series, *, path: Path, name: str, is_csv: bool) -> pd.Series:
    """Id values as strings (ints and integral floats written without decimals); missing ids are errors."""
    if pd.api.types.is_float_dtype(col) and np.all(np.mod(col.dropna(), 1) == 0):
        col = col.astype("Int64")
    keys = col.astype(str).str.strip()
    missing = col.isna().to_numpy() | (keys == "").to_numpy()
    if missing.any():
        i = int(missing.argmax())
        raise DataError(
            f"{path}: column {name!r} is empty at {row_ref(i, is_csv)} ({int(missing.sum())} empty values): "
            f"every interaction needs a {name}"
        )
    return keys.reset_index(drop=True)


def numeric_values(col: pd.Series, *, path: Path, name: str, is_csv: bool, unit: str) -> np.ndarray:
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
            f"{path}: column {name!r} has a non-numeric or missing value {shown} at {row_ref(i, is_csv)} "
            f"({int(bad.sum())} bad values); it must hold {unit}"
        )
    return num
