"""Getting GroupLens' MovieLens archive: a verified download into a cache, or the operator's local copy.

Trust chain: the first download is checked against the MD5 GroupLens publishes next to the archive; the
SHA-256 of that verified file is then pinned in `<zip>.sha256`, and every later use checks against it.
Reading the files is `fedrec.data.movielens`.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from fedrec.data.movielens import Layout, layout
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
    """The file next to the archive that pins its verified SHA-256."""
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


def _make_cache(cache_dir: str | Path) -> Path:
    """Create the cache directory if needed and return it."""
    cache = Path(cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the MovieLens cache directory {cache}: {exc}") from exc
    return cache


def _fetch(url: str, part: Path, lay: Layout) -> None:
    """Stream `url` into the partial file `part`; a failed download leaves no partial file behind."""
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


def _verify_download(part: Path, url: str, md5: str, lay: Layout) -> str:
    """Check a fresh download against the published MD5 and return its SHA-256; a bad one is deleted."""
    try:
        return _verify_file(part, md5=md5)
    except DataError as exc:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{exc}. The download of {url} is corrupt or was altered and has been deleted: retry, or "
            f"download it by hand and check it against GroupLens' published {lay.folder}.zip.md5"
        ) from None


def download_movielens(variant: str, cache_dir: str | Path) -> Path:
    """Download GroupLens' `ml-<variant>.zip` into `cache_dir` and return its path, verified.

    Trust chain: the first download is checked against the MD5 GroupLens publishes (module constant `MD5`);
    the SHA-256 of that verified file is then written to `<zip>.sha256` and every later use checks the
    archive against it (SHA-256 has no practical collisions, MD5 does). An archive already in `cache_dir`
    that passes the check is used without touching the network; one that fails is deleted and downloaded
    again. A download that fails the MD5 check is deleted and raises DataError.
    """
    lay = layout(variant)
    zip_path = _make_cache(cache_dir) / f"{lay.folder}.zip"
    if zip_path.is_file():
        if _cached_ok(zip_path, MD5[variant]):
            return zip_path
        zip_path.unlink()
        _sidecar(zip_path).unlink(missing_ok=True)

    url = URLS[variant]
    part = zip_path.with_name(zip_path.name + ".part")
    _fetch(url, part, lay)
    sha = _verify_download(part, url, MD5[variant], lay)
    part.replace(zip_path)
    _sidecar(zip_path).write_text(sha + "\n")
    return zip_path


def resolve_movielens(path: str | Path | None, variant: str, cache_dir: str | Path) -> Path:
    """Return the MovieLens location to load: `path` when given (it must exist), else a verified download."""
    layout(variant)
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(
                f"MovieLens path {p} does not exist: fix the path, or leave it unset to download "
                f"{URLS[variant]} into {cache_dir}"
            )
        return p
    return download_movielens(variant, cache_dir)
