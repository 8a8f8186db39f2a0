"""MovieLens (GroupLens' ML-100K and ML-1M) as a sovereign world: one silo per US zip-code region.

Why MovieLens: it is the public benchmark every recommender paper reports, and its user file carries a zip
code, which gives a natural jurisdiction per user (the first digit of a US zip code is a group of states).
The item file is GroupLens' public catalog, so the global item id space comes from public information, as
the trust model requires. Files are read from GroupLens' own layout, from a directory or straight from the
zip GroupLens distributes, with every bad row reported by line number instead of silently skipped.
Downloading and checking the archive is `fedrec.data.movielens_download`.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.schema import Catalog, Interactions, LoadReport, make_interactions
from fedrec.errors import DataError

UNKNOWN_ZIP_MODES = ("own_silo", "drop")
OTHER_REGION = "zip_other"
REGIONS = (*(f"zip{d}" for d in range(10)), OTHER_REGION)
_US_ZIP = r"\d{5}(?:-\d{4})?"
# GroupLens' 19 genres in u.item's flag order (ML-1M's movies.dat names 18 of them, never "unknown").
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
FEATURE_NAMES = (*(f"genre:{g}" for g in GENRES), "year")
_ML100K_GENRE_FIELD = 5  # u.item: id | title | release date | video release date | IMDb URL | 19 flags


@dataclass(frozen=True)
class Layout:
    """File names and separators of one MovieLens variant."""

    folder: str
    ratings: str
    users: str
    items: str
    rating_sep: str
    meta_sep: str  # separator of the user and item files
    zip_field: int  # column of the zip code in the user file


_LAYOUTS = {
    "100k": Layout("ml-100k", "u.data", "u.user", "u.item", "\t", "|", 4),
    "1m": Layout("ml-1m", "ratings.dat", "users.dat", "movies.dat", "::", "::", 4),
}


def layout(variant: str) -> Layout:
    """The layout of MovieLens `variant`; an unknown variant is a DataError listing the known ones."""
    if variant not in _LAYOUTS:
        raise DataError(f"unknown MovieLens variant {variant!r}: use one of {sorted(_LAYOUTS)}")
    return _LAYOUTS[variant]


class _Source:
    """A MovieLens directory or GroupLens zip, read member by member (a zip is never extracted)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, str] | None = None
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise DataError(
                    f"{path} is a file but not a zip archive: pass the MovieLens directory (the one that "
                    f"contains u.data or ratings.dat) or the ml-100k.zip / ml-1m.zip GroupLens distributes"
                )
            with zipfile.ZipFile(path) as zf:
                names = sorted((n for n in zf.namelist() if not n.endswith("/")), key=lambda n: n.count("/"))
            self.members = {}
            for name in names:  # shallowest member wins when a base name repeats
                self.members.setdefault(name.rsplit("/", 1)[-1], name)
        elif not path.is_dir():
            raise DataError(
                f"MovieLens path {path} does not exist: download the data with download_movielens(variant, "
                f"cache_dir), or pass the directory that contains u.data (ML-100K) or ratings.dat (ML-1M)"
            )

    def has(self, name: str) -> bool:
        """Whether the directory or zip holds a file of that base name."""
        if self.members is not None:
            return name in self.members
        return (self.path / name).is_file()

    def where(self, name: str) -> str:
        """Where a file is, as shown in messages (`zip:member` for a zip)."""
        if self.members is not None:
            return f"{self.path}:{self.members.get(name, name)}"
        return str(self.path / name)

    def read(self, name: str) -> bytes:
        """The bytes of one file; an unreadable one is a DataError naming it."""
        try:
            if self.members is not None:
                with zipfile.ZipFile(self.path) as zf:
                    return zf.read(self.members[name])
            return (self.path / name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {self.where(name)}: {exc}") from exc


def _read_table(src: _Source, name: str, sep: str, n_fields: int, *, exact: bool,
                keep: int | None = None) -> pd.DataFrame:
    """Read a header-less GroupLens file as strings; index = line number - 1, blank lines removed.

    `exact` requires exactly `n_fields` non-empty fields per line; otherwise at least `n_fields` non-empty
    fields, of which the first `keep` (default `n_fields`) are kept, absent ones as "" (checked by the caller).
    """
    raw = src.read(name)
    if sep == "::":
        raw = raw.replace(b"::", b"\x1f")
        sep = "\x1f"
    shown_sep = {"\t": "tab", "\x1f": "'::'"}.get(sep, repr(sep))
    try:
        df = pd.read_csv(
            io.BytesIO(raw), sep=sep, header=None, dtype=str, encoding="latin-1", quoting=csv.QUOTE_NONE,
            skip_blank_lines=False, keep_default_na=False, na_filter=False, engine="c",
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{src.where(name)} is empty: re-download or re-extract the files") from None
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{src.where(name)}: unparsable row ({exc}); expected {n_fields} fields separated by {shown_sep}"
        ) from exc
    df = df.fillna("")
    df = df[(df != "").any(axis=1)]
    if df.empty:
        raise DataError(f"{src.where(name)} is empty: re-download or re-extract the MovieLens files")
    if df.shape[1] < n_fields:
        raise DataError(
            f"{src.where(name)} line {df.index[0] + 1}: expected {n_fields} fields separated by {shown_sep}, "
            f"found {df.shape[1]}: is this the right file for this MovieLens variant?"
        )
    short = (df.iloc[:, :n_fields] == "").any(axis=1)
    long = (df.iloc[:, n_fields:] != "").any(axis=1) if exact else pd.Series(False, index=df.index)
    bad = short | long
    if bad.any():
        line = int(bad.idxmax()) + 1
        raise DataError(
            f"{src.where(name)} line {line}: unparsable row (expected {n_fields} non-empty fields separated "
            f"by {shown_sep}): fix or remove that line, or re-download the data"
        )
    keep = n_fields if keep is None else keep
    for j in range(df.shape[1], keep):
        df[j] = ""
    return df.iloc[:, :keep].set_axis(range(keep), axis=1)


def _ints(src: _Source, name: str, col: pd.Series, what: str) -> np.ndarray:
    """Parse a string column as integers, naming the first bad line."""
    num = pd.to_numeric(col.str.strip(), errors="coerce")
    bad = num.isna() | (num != np.floor(num))
    if bad.any():
        i = bad.idxmax()
        raise DataError(
            f"{src.where(name)} line {i + 1}: {what} {col[i]!r} is not an integer: fix or remove that line"
        )
    return num.to_numpy(dtype=np.int64)


def zip_regions(zips: pd.Series) -> pd.Series:
    """Region of each zip code: `zip<first digit>` for a valid US zip, else `zip_other`.

    Valid means exactly 5 digits, optionally followed by `-dddd`, and not `00000`.
    """
    z = zips.astype(str).str.strip()
    valid = z.str.fullmatch(_US_ZIP) & (z.str[:5] != "00000")
    return ("zip" + z.str[0]).where(valid, OTHER_REGION)




def _check_unknown_zip_mode(unknown_zip: str) -> None:
    """Refuse an `unknown_zip` mode other than `own_silo` or `drop`."""
    if unknown_zip not in UNKNOWN_ZIP_MODES:
        raise DataError(
            f"unknown_zip={unknown_zip!r} is invalid: use one of {', '.join(map(repr, UNKNOWN_ZIP_MODES))}"
        )


def _require_files(src: _Source, variant: str, lay: Layout) -> None:
    """Fail on the first missing file of the variant, hinting at another variant or a nested folder."""
    for name in (lay.ratings, lay.users, lay.items):
        if not src.has(name):
            hint = ""
            other = next((v for v, o in _LAYOUTS.items() if v != variant and src.has(o.ratings)), None)
            if other is not None:
                found = _LAYOUTS[other].ratings
                hint = f" (it holds {found}: is it MovieLens {other}? pass variant={other!r})"
            elif src.members is None and (src.path / lay.folder / lay.ratings).is_file():
                hint = f" (it has a {lay.folder}/ folder: pass {src.path / lay.folder})"
            raise DataError(
                f"{src.where(name)}: required MovieLens {variant} file {name} is missing{hint}. Download the "
                f"data with download_movielens({variant!r}, cache_dir), or pass the directory that contains "
                f"{lay.ratings}"
            )


def _ratings_1_to_5(src: _Source, name: str, col: pd.Series) -> np.ndarray:
    """Parse the rating column as float32, naming the first line whose rating is not a number in 1-5."""
    parsed = pd.to_numeric(col.str.strip(), errors="coerce")
    bad = parsed.isna() | ~parsed.between(1, 5)
    if bad.any():
        i = bad.idxmax()
        raise DataError(
            f"{src.where(name)} line {i + 1}: rating {col[i]!r} is not a number in 1-5: "
            f"fix or remove that line"
        )
    return parsed.to_numpy(dtype=np.float32)


def _check_unique_ids(src: _Source, name: str, ids: np.ndarray, lines: pd.Index) -> None:
    """Fail on the first id of a user or item file that appears twice."""
    dup = pd.Index(ids).duplicated()
    if dup.any():
        k = int(dup.argmax())
        raise DataError(f"{src.where(name)} line {lines[k] + 1}: id {ids[k]} appears twice: fix the file")


def _rating_columns(
    src: _Source, lay: Layout, ratings: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """User id, raw item id, rating and timestamp of every rating row, each checked with its line."""
    user = _ints(src, lay.ratings, ratings[0], "user id")
    item_raw = _ints(src, lay.ratings, ratings[1], "item id")
    rating = _ratings_1_to_5(src, lay.ratings, ratings[2])
    timestamp = _ints(src, lay.ratings, ratings[3], "timestamp")
    return user, item_raw, rating, timestamp


def _link_ratings(
    src: _Source, lay: Layout, lines: pd.Index,
    *, user: np.ndarray, item: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Row of each rating's item in the item file and of its user in the user file; unknown ones fail."""
    item_index = pd.Index(item_ids).get_indexer(item)
    user_row = pd.Index(user_ids).get_indexer(user)
    checks = (("item", lay.items, item_index, item), ("user", lay.users, user_row, user))
    for what, name, pos, ref in checks:
        missing = pos < 0
        if missing.any():
            k = int(missing.argmax())
            raise DataError(
                f"{src.where(lay.ratings)} line {lines[k] + 1}: {what} {ref[k]} is not in "
                f"{src.where(name)} ({int(missing.sum())} rating rows reference unknown {what}s): the files "
                f"do not belong together; re-download or re-extract them"
            )
    return item_index, user_row


def _keep_us_users(user: np.ndarray, region: np.ndarray, report: LoadReport) -> np.ndarray:
    """Mask of the rows whose user has a valid US zip code; the dropped rows and users go in the report."""
    keep = region != OTHER_REGION
    n_users = int(np.unique(user[~keep]).size)
    report.drop(f"users with a non-US zip code ({n_users} users)", int((~keep).sum()))
    return keep


def _release_years(col: pd.Series, pattern: str) -> np.ndarray:
    """The 4-digit year `pattern` captures in each row of `col` (float; NaN where there is none)."""
    return pd.to_numeric(col.str.extract(pattern, expand=False), errors="coerce").to_numpy(dtype=np.float64, copy=True)


def _ml100k_genres(src: _Source, name: str, items: pd.DataFrame) -> np.ndarray:
    """u.item's 19 genre flags (fields 6-24) as a 0/1 matrix; a missing or non-0/1 flag fails with its line."""
    flags = items.iloc[:, _ML100K_GENRE_FIELD:_ML100K_GENRE_FIELD + len(GENRES)].apply(lambda c: c.str.strip())
    bad = ~flags.isin(["0", "1"]).to_numpy()
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        value = flags.iat[row, col]
        raise DataError(
            f"{src.where(name)} line {items.index[row] + 1}: genre flag {col + 1} ({GENRES[col]}, field "
            f"{_ML100K_GENRE_FIELD + col + 1}) is {value!r}, expected 0 or 1: u.item needs 24 fields "
            f"separated by '|' (id, title, release date, video release date, URL, 19 genre flags); re-download it"
        )
    return (flags.to_numpy() == "1").astype(np.float32)


def _ml1m_genres(src: _Source, name: str, col: pd.Series, lines: pd.Index) -> np.ndarray:
    """movies.dat's '|'-separated genre names as 0/1 flags over `GENRES`; an unknown name fails with its line."""
    out = np.zeros((len(col), len(GENRES)), dtype=np.float32)
    index = {g: j for j, g in enumerate(GENRES)}
    for row, text in enumerate(col.tolist()):
        for genre in filter(None, (g.strip() for g in text.split("|"))):
            if genre not in index:
                raise DataError(
                    f"{src.where(name)} line {lines[row] + 1}: unknown genre {genre!r}; MovieLens genres are "
                    f"{', '.join(GENRES[1:])}: fix that line or re-download the data"
                )
            out[row, index[genre]] = 1.0
    return out


def _item_features(src: _Source, variant: str, lay: Layout, items: pd.DataFrame,
                   report: LoadReport) -> np.ndarray:
    """Public item features from the item file: 19 genre flags and the release year ([n_items, 20] float32).

    ML-100K: the flags of u.item and the year of its release date (else of the title's "(YYYY)"); ML-1M:
    movies.dat's genre names and the year in the title's "(YYYY)". An item without a year gets the catalog's
    median year (counted in the report).
    """
    if variant == "100k":
        genres = _ml100k_genres(src, lay.items, items)
        years = _release_years(items[2], r"(\d{4})\s*$")
        from_title = _release_years(items[1], r"\((\d{4})\)\s*$")
        years = np.where(np.isnan(years), from_title, years)  # no release date: the title's "(YYYY)"
    else:
        genres = _ml1m_genres(src, lay.items, items[2], items.index)
        years = _release_years(items[1], r"\((\d{4})\)\s*$")
    missing = np.isnan(years)
    if missing.all():
        years[:] = 0.0
        report.notes.append(f"{src.where(lay.items)}: no item has a release year: feature 'year' is 0")
    elif missing.any():
        median = float(np.median(years[~missing]))
        years[missing] = median
        report.notes.append(f"{src.where(lay.items)}: {int(missing.sum())} items without a release year: "
                            f"feature 'year' set to the catalog's median, {median:g}")
    return np.column_stack([genres, years.astype(np.float32)])


def load_movielens(path: str | Path, *, variant: str = "100k", unknown_zip: str = "own_silo") -> Interactions:
    """Load GroupLens' MovieLens from a directory or its distributed zip, one region per zip-code digit.

    Users whose zip code is not a valid US one (Canadian codes, malformed ones, `00000`) go to region
    `zip_other` when `unknown_zip="own_silo"`, or are dropped (counted in the LoadReport) with `"drop"`.
    Item ids are remapped to 0..n-1 in item-file order (the public catalog); user ids are kept as given.
    The catalog carries the item file's public features: 19 genre flags and the release year (`FEATURE_NAMES`).
    """
    lay = layout(variant)
    _check_unknown_zip_mode(unknown_zip)
    src = _Source(Path(path).expanduser())
    _require_files(src, variant, lay)
    ratings = _read_table(src, lay.ratings, lay.rating_sep, 4, exact=True)
    users = _read_table(src, lay.users, lay.meta_sep, 5, exact=True)
    items = _read_table(src, lay.items, lay.meta_sep, 2, exact=False,
                        keep=_ML100K_GENRE_FIELD + len(GENRES) if variant == "100k" else 3)

    user, item_raw, rating, timestamp = _rating_columns(src, lay, ratings)
    user_ids = _ints(src, lay.users, users[0], "user id")
    item_ids = _ints(src, lay.items, items[0], "item id")
    _check_unique_ids(src, lay.users, user_ids, users.index)
    _check_unique_ids(src, lay.items, item_ids, items.index)
    item_index, user_row = _link_ratings(
        src, lay, ratings.index, user=user, item=item_raw, user_ids=user_ids, item_ids=item_ids
    )

    report = LoadReport(source=f"movielens-{variant} ({src.path})", rows_read=len(ratings))
    region = zip_regions(users[lay.zip_field]).to_numpy()[user_row]
    if unknown_zip == "drop":
        keep = _keep_us_users(user, region, report)
        user, item_index, rating, timestamp, region = (
            a[keep] for a in (user, item_index, rating, timestamp, region)
        )
    titles = tuple(items[1].tolist())
    catalog = Catalog(n_items=len(item_ids), titles=titles, source=f"movielens-{variant} {lay.items}",
                      features=_item_features(src, variant, lay, items, report), feature_names=FEATURE_NAMES)
    return make_interactions(
        user=user,
        item=item_index,
        rating=rating,
        timestamp=timestamp,
        region_names=region,
        catalog=catalog,
        explicit=True,
        report=report,
        region_order=list(REGIONS),
    )
