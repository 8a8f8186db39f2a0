"""MovieLens (GroupLens' ML-100K and ML-1M) as a sovereign world: one silo per US zip-code region.

Why MovieLens: it is the public benchmark every recommender paper reports, and its user file carries a zip
code, which gives a natural jurisdiction per user (the first digit of a US zip code is a group of states).
The item file is GroupLens' public catalog, so the global item id space comes from public information, as
the trust model requires. Files are read from GroupLens' own layout, from a directory or straight from the
zip GroupLens distributes, with every bad row reported by line number instead of silently skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.schema import Catalog, Interactions, LoadReport, make_interactions
from fedrec.errors import DataError

URLS = {
    "100k": "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    "1m": "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
}
# MD5 checksums GroupLens publishes next to each archive (ml-100k.zip.md5, ml-1m.zip.md5). They are the
# root of trust for the first download; the SHA-256 of the verified file is then pinned in `<zip>.sha256`.
MD5 = {
    "100k": "0e33842e24a9c977be4e0107933c0723",
    "1m": "c4d9eecfca2ab87c1945afe126590906",
}
UNKNOWN_ZIP_MODES = ("own_silo", "drop")
OTHER_REGION = "zip_other"
REGIONS = (*(f"zip{d}" for d in range(10)), OTHER_REGION)
_US_ZIP = r"\d{5}(?:-\d{4})?"


@dataclass(frozen=True)
class _Layout:
    """File names and separators of one MovieLens variant."""

    folder: str
    ratings: str
    users: str
    items: str
    rating_sep: str
    meta_sep: str  # separator of the user and item files
    zip_field: int  # column of the zip code in the user file


_LAYOUTS = {
    "100k": _Layout("ml-100k", "u.data", "u.user", "u.item", "\t", "|", 4),
    "1m": _Layout("ml-1m", "ratings.dat", "users.dat", "movies.dat", "::", "::", 4),
}


def _layout(variant: str) -> _Layout:
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
        if self.members is not None:
            return name in self.members
        return (self.path / name).is_file()

    def where(self, name: str) -> str:
        if self.members is not None:
            return f"{self.path}:{self.members.get(name, name)}"
        return str(self.path / name)

    def read(self, name: str) -> bytes:
        try:
            if self.members is not None:
                with zipfile.ZipFile(self.path) as zf:
                    return zf.read(self.members[name])
            return (self.path / name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {self.where(name)}: {exc}") from exc


def _read_table(src: _Source, name: str, sep: str, n_fields: int, *, exact: bool) -> pd.DataFrame:
    """Read a header-less GroupLens file as strings; index = line number - 1, blank lines removed.

    `exact` requires exactly `n_fields` fields per line; otherwise at least `n_fields` (only those are kept).
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
    return df.iloc[:, :n_fields].set_axis(range(n_fields), axis=1)


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


def load_movielens(path: str | Path, *, variant: str = "100k", unknown_zip: str = "own_silo") -> Interactions:
    """Load GroupLens' MovieLens from a directory or its distributed zip, one region per zip-code digit.

    Users whose zip code is not a valid US one (Canadian codes, malformed ones, `00000`) go to region
    `zip_other` when `unknown_zip="own_silo"`, or are dropped (counted in the LoadReport) with `"drop"`.
    Item ids are remapped to 0..n-1 in item-file order (the public catalog); user ids are kept as given.
    """
    lay = _layout(variant)
    if unknown_zip not in UNKNOWN_ZIP_MODES:
        raise DataError(
            f"unknown_zip={unknown_zip!r} is invalid: use one of {', '.join(map(repr, UNKNOWN_ZIP_MODES))}"
        )
    src = _Source(Path(path).expanduser())
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

    ratings = _read_table(src, lay.ratings, lay.rating_sep, 4, exact=True)
    users = _read_table(src, lay.users, lay.meta_sep, 5, exact=True)
    items = _read_table(src, lay.items, lay.meta_sep, 2, exact=False)

    user = _ints(src, lay.ratings, ratings[0], "user id")
    item_raw = _ints(src, lay.ratings, ratings[1], "item id")
    parsed = pd.to_numeric(ratings[2].str.strip(), errors="coerce")
    bad = parsed.isna() | ~parsed.between(1, 5)
    if bad.any():
        i = bad.idxmax()
        raise DataError(
            f"{src.where(lay.ratings)} line {i + 1}: rating {ratings[2][i]!r} is not a number in 1-5: "
            f"fix or remove that line"
        )
    rating = parsed.to_numpy(dtype=np.float32)
    timestamp = _ints(src, lay.ratings, ratings[3], "timestamp")

    user_ids = _ints(src, lay.users, users[0], "user id")
    item_ids = _ints(src, lay.items, items[0], "item id")
    for name, ids, lines in ((lay.users, user_ids, users.index), (lay.items, item_ids, items.index)):
        dup = pd.Index(ids).duplicated()
        if dup.any():
            k = int(dup.argmax())
            raise DataError(f"{src.where(name)} line {lines[k] + 1}: id {ids[k]} appears twice: fix the file")

    item_index = pd.Index(item_ids).get_indexer(item_raw)
    user_row = pd.Index(user_ids).get_indexer(user)
    checks = (("item", lay.items, item_index, item_raw), ("user", lay.users, user_row, user))
    for what, name, pos, ref in checks:
        missing = pos < 0
        if missing.any():
            k = int(missing.argmax())
            raise DataError(
                f"{src.where(lay.ratings)} line {ratings.index[k] + 1}: {what} {ref[k]} is not in "
                f"{src.where(name)} ({int(missing.sum())} rating rows reference unknown {what}s): the files "
                f"do not belong together; re-download or re-extract them"
            )

    report = LoadReport(source=f"movielens-{variant} ({src.path})", rows_read=len(ratings))
    region = zip_regions(users[lay.zip_field]).to_numpy()[user_row]
    if unknown_zip == "drop":
        keep = region != OTHER_REGION
        n_users = int(np.unique(user[~keep]).size)
        report.drop(f"users with a non-US zip code ({n_users} users)", int((~keep).sum()))
        user, item_index, rating, timestamp, region = (
            a[keep] for a in (user, item_index, rating, timestamp, region)
        )
    catalog = Catalog(
        n_items=len(item_ids),
        titles=tuple(items[1].tolist()),
        source=f"movielens-{variant} {lay.items}",
    )
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


def _digests(path: Path) -> tuple[str, str]:
    """MD5 and SHA-256 of a file, read in chunks."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _verify_file(path: Path, *, md5: str | None = None, sha256: str | None = None) -> str:
    """Check a file against the given checksums (each optional) and return its SHA-256.

    Raises DataError naming the file, the expected and the actual value when one does not match.
    """
    got_md5, got_sha = _digests(path)
    for algo, want, got in (("MD5", md5, got_md5), ("SHA-256", sha256, got_sha)):
        if want is not None and want.strip().lower() != got:
            raise DataError(f"{path}: {algo} checksum mismatch (expected {want}, got {got})")
    return got_sha


def _sidecar(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".sha256")


def _cached_ok(zip_path: Path, md5: str) -> bool:
    """Whether an existing archive is the verified one (pinned SHA-256 if recorded, else published MD5)."""
    side = _sidecar(zip_path)
    try:
        if side.is_file():
            _verify_file(zip_path, sha256=side.read_text().split()[0])
        else:
            side.write_text(_verify_file(zip_path, md5=md5) + "\n")
        return True
    except (DataError, IndexError):
        return False


def download_movielens(variant: str, cache_dir: str | Path) -> Path:
    """Download GroupLens' `ml-<variant>.zip` into `cache_dir` and return its path, verified.

    Trust chain: the first download is checked against the MD5 GroupLens publishes (module constant `MD5`);
    the SHA-256 of that verified file is then written to `<zip>.sha256` and every later use checks the
    archive against it (SHA-256 has no practical collisions, MD5 does). An archive already in `cache_dir`
    that passes the check is used without touching the network; one that fails is deleted and downloaded
    again. A download that fails the MD5 check is deleted and raises DataError.
    """
    lay = _layout(variant)
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the MovieLens cache directory {cache}: {exc}") from exc
    zip_path = cache / f"{lay.folder}.zip"
    if zip_path.is_file():
        if _cached_ok(zip_path, MD5[variant]):
            return zip_path
        zip_path.unlink()
        _sidecar(zip_path).unlink(missing_ok=True)

    url = URLS[variant]
    part = zip_path.with_name(zip_path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, part.open("wb") as out:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise DataError(
            f"cannot download {url} ({exc}): download it by hand and pass the zip (or the extracted "
            f"{lay.folder}/ directory) as the MovieLens path"
        ) from exc
    try:
        sha = _verify_file(part, md5=MD5[variant])
    except DataError as exc:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{exc}. The download of {url} is corrupt or was altered and has been deleted: retry, or "
            f"download it by hand and check it against GroupLens' published {lay.folder}.zip.md5"
        ) from None
    part.replace(zip_path)
    _sidecar(zip_path).write_text(sha + "\n")
    return zip_path


def resolve_movielens(path: str | Path | None, variant: str, cache_dir: str | Path) -> Path:
    """Return the MovieLens location to load: `path` when given (it must exist), else a verified download."""
    _layout(variant)
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(
                f"MovieLens path {p} does not exist: fix the path, or leave it unset to download "
                f"{URLS[variant]} into {cache_dir}"
            )
        return p
    return download_movielens(variant, cache_dir)
