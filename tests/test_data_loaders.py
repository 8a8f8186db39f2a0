"""Tests of the MovieLens and generic file loaders on tiny files written into tmp_path (no network)."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data import movielens_download
from fedrec.data.files import load_interactions_file
from fedrec.data.movielens import FEATURE_NAMES, GENRES, load_movielens, zip_regions
from fedrec.data.movielens_download import download_movielens, resolve_movielens
from fedrec.errors import ConfigError, DataError

# --- tiny GroupLens-layout fixtures -------------------------------------------------------------------------

USERS = {  # user id -> zip code
    1: "85711",  # zip8
    2: "94043",  # zip9
    3: "02138",  # zip0 (leading zero kept as text)
    4: "T8H1N",  # Canadian -> zip_other
    5: "1234",  # malformed -> zip_other
    6: "00000",  # not a zip -> zip_other
    7: "55455-1234",  # ZIP+4 -> zip5
}
ITEM_IDS = [10, 20, 30, 40]  # item-file order defines ids 0..3
RELEASE_DATES = ["01-Jan-1995", "15-Dec-1995", "", ""]  # Alien: the title's year; Fargo: neither, the median
GENRE_FLAGS = [  # u.item's 19 flags: unknown, Action, Adventure, Animation, Children's, Comedy, Crime, ...
    [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # Comedy
    [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],  # Action, Crime, Thriller
    [0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],  # Crime, Drama, Thriller
    [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0],  # Action, Horror, Sci-Fi, Thriller, War
]
RATINGS = [  # user, item, rating, timestamp
    (1, 10, 5, 100), (1, 20, 3, 101), (2, 30, 4, 102), (3, 10, 1, 103), (3, 40, 2, 104),
    (4, 20, 5, 105), (4, 30, 4, 106), (5, 10, 3, 107), (6, 40, 2, 108), (6, 10, 1, 109),
    (7, 30, 5, 110), (7, 40, 4, 111),
]


def _ml100k_texts(ratings: list[tuple[int, int, int, int]] = RATINGS) -> dict[str, bytes]:
    data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings).encode()
    user = "".join(f"{u}|30|M|other|{z}\n" for u, z in USERS.items()).encode()
    titles = ["Café (1995)", "Heat (1995)", "Fargo", "Alien (1979)"]
    item = "".join(
        f"{i}|{t}|{d}||http://x|{'|'.join(map(str, g))}\n"
        for i, t, d, g in zip(ITEM_IDS, titles, RELEASE_DATES, GENRE_FLAGS, strict=True)
    ).encode("latin-1")
    return {"u.data": data, "u.user": user, "u.item": item}


def write_ml100k(root: Path, **overrides: bytes) -> Path:
    """Write ML-100K-layout files into root (a file whose override is b"" is left out)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in {**_ml100k_texts(), **overrides}.items():
        if content != b"":
            (root / name).write_bytes(content)
    return root


def write_ml100k_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/", "")
        for name, content in _ml100k_texts().items():
            zf.writestr(f"ml-100k/{name}", content)
        zf.writestr("ml-100k/README", "tiny test copy")
    return path


# --- MovieLens: regions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zip_code", "region"),
    [("85711", "zip8"), ("02138", "zip0"), ("55455-1234", "zip5"), (" 94043 ", "zip9"),
     ("T8H1N", "zip_other"), ("1234", "zip_other"), ("00000", "zip_other"), ("123456", "zip_other"),
     ("12345-12", "zip_other"), ("", "zip_other")],
)
def test_zip_regions_first_digit_of_valid_us_zip(zip_code: str, region: str) -> None:
    # Execute
    got = zip_regions(pd.Series([zip_code]))
    # Assert
    assert got.tolist() == [region]


def test_load_movielens_maps_users_to_zip_regions_and_keeps_everyone(tmp_path: Path) -> None:
    # Prepare
    root = write_ml100k(tmp_path / "ml-100k")
    # Execute
    data = load_movielens(root)
    # Assert
    assert len(data) == len(RATINGS)
    assert data.regions == ("zip0", "zip5", "zip8", "zip9", "zip_other")
    assert data.users_per_region() == {"zip0": 1, "zip5": 1, "zip8": 1, "zip9": 1, "zip_other": 3}
    assert set(data.user[data.region_mask("zip_other")].tolist()) == {4, 5, 6}
    assert data.user.tolist() == [u for u, _, _, _ in RATINGS]  # user ids kept as given
    assert data.item.tolist() == [ITEM_IDS.index(i) for _, i, _, _ in RATINGS]  # item-file order
    assert data.rating.tolist() == [float(r) for _, _, r, _ in RATINGS]
    assert data.timestamp.tolist() == [t for _, _, _, t in RATINGS]
    assert data.explicit is True
    assert data.catalog.n_items == 4
    assert data.catalog.source == "movielens-100k u.item"
    assert data.catalog.titles is not None and data.catalog.titles[0] == "Café (1995)"  # latin-1 decoded
    assert data.report is not None and data.report.rows_read == len(RATINGS) and not data.report.dropped


def test_load_movielens_drop_mode_counts_every_dropped_row(tmp_path: Path) -> None:
    # Prepare
    root = write_ml100k(tmp_path / "ml-100k")
    non_us_rows = sum(1 for u, _, _, _ in RATINGS if u in (4, 5, 6))
    # Execute
    data = load_movielens(root, unknown_zip="drop")
    # Assert
    report = data.report
    assert report is not None
    assert report.dropped == {"users with a non-US zip code (3 users)": non_us_rows}
    assert report.rows_read == len(data) + sum(report.dropped.values())
    assert "zip_other" not in data.regions
    assert not np.isin(data.user, [4, 5, 6]).any()
    assert any("non-US zip code" in line for line in report.lines())


def test_load_movielens_rejects_unknown_zip_mode(tmp_path: Path) -> None:
    # Prepare
    root = write_ml100k(tmp_path / "ml-100k")
    # Execute / Assert
    with pytest.raises(DataError, match=r"unknown_zip='ignore'.*'own_silo', 'drop'"):
        load_movielens(root, unknown_zip="ignore")


def test_load_movielens_reads_grouplens_zip_without_extracting(tmp_path: Path) -> None:
    # Prepare
    archive = write_ml100k_zip(tmp_path / "ml-100k.zip")
    from_dir = load_movielens(write_ml100k(tmp_path / "dir"))
    # Execute
    from_zip = load_movielens(archive)
    # Assert
    assert from_zip.regions == from_dir.regions
    for name in ("user", "item", "rating", "timestamp", "region"):
        np.testing.assert_array_equal(getattr(from_zip, name), getattr(from_dir, name))
    assert from_zip.catalog == from_dir.catalog
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "ml-100k.zip"]  # nothing extracted


def test_load_movielens_reads_ml1m_layout(tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1::5::978300760\n2::2::3::978302109\n1::2::4::978301968\n")
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::V3N4P\n")
    movies = "1::Toy Story (1995)::Animation\n2::Amélie (2001)::Comedy\n"
    (root / "movies.dat").write_bytes(movies.encode("latin-1"))
    # Execute
    data = load_movielens(root, variant="1m")
    # Assert
    assert data.regions == ("zip4", "zip_other")
    assert data.item.tolist() == [0, 1, 1]
    assert data.catalog.titles == ("Toy Story (1995)", "Amélie (2001)")
    assert data.catalog.source == "movielens-1m movies.dat"


# --- MovieLens: public item features (genres, release year) -----------------------------------------------


def test_load_movielens_100k_catalog_carries_genres_and_release_year(tmp_path: Path) -> None:
    # Execute
    data = load_movielens(write_ml100k(tmp_path / "ml-100k"))
    # Assert: 19 genre flags then the year, in item-file order (Alien's from its title, Fargo's the median)
    cat = data.catalog
    assert cat.features is not None and cat.features.dtype == np.float32 and cat.features.shape == (4, 20)
    assert cat.feature_names == FEATURE_NAMES and cat.feature_names[-1] == "year"
    assert cat.feature_names[5] == "genre:Comedy" and len(GENRES) == 19
    np.testing.assert_array_equal(cat.features[:, :19], np.array(GENRE_FLAGS, dtype=np.float32))
    assert cat.features[:, 19].tolist() == [1995.0, 1995.0, 1995.0, 1979.0]
    assert data.report is not None
    assert any("1 items without a release year" in n and "median, 1995" in n for n in data.report.notes)


def test_load_movielens_1m_catalog_carries_genres_and_year_from_the_title(tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1::5::978300760\n2::2::3::978302109\n")
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (root / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                      "2::Amélie (2001)::Romance\n".encode("latin-1"))
    # Execute
    cat = load_movielens(root, variant="1m").catalog
    # Assert
    assert cat.features is not None and cat.features.shape == (2, 20)
    on = [[n for n, v in zip(FEATURE_NAMES[:19], row, strict=True) if v] for row in cat.features[:, :19]]
    assert on == [["genre:Animation", "genre:Children's", "genre:Comedy"], ["genre:Romance"]]
    assert cat.features[:, 19].tolist() == [1995.0, 2001.0]


def test_load_movielens_bad_genre_flag_names_the_line(tmp_path: Path) -> None:
    # Prepare: line 3's Crime flag is "x"; an 8-field u.item (flags missing) fails the same way
    lines = _ml100k_texts()["u.item"].decode("latin-1").splitlines()
    fields = lines[2].split("|")
    fields[11] = "x"
    lines[2] = "|".join(fields)
    root = write_ml100k(tmp_path / "ml-100k", **{"u.item": ("\n".join(lines) + "\n").encode("latin-1")})
    short = write_ml100k(tmp_path / "short", **{"u.item": b"10|A (1995)|01-Jan-1995||http://x|0|1|0\n"
                                                         b"20|B|||x|0|0|0\n30|C|||x|0|0|0\n40|D|||x|0|0|0\n"})
    # Execute / Assert
    with pytest.raises(DataError, match=r"u\.item line 3: genre flag 7 \(Crime, field 12\) is 'x', expected 0 or 1"):
        load_movielens(root)
    with pytest.raises(DataError, match=r"u\.item line 1: genre flag 4 \(Animation, field 9\) is '', "
                                        r"expected 0 or 1: u\.item needs 24 fields"):
        load_movielens(short)


def test_load_movielens_1m_unknown_genre_names_the_line(tmp_path: Path) -> None:
    # Prepare
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text("1::1::5::978300760\n")
    (root / "users.dat").write_text("1::F::1::10::48067\n")
    (root / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Heat (1995)::Action|Heist\n")
    # Execute / Assert
    with pytest.raises(DataError, match=r"movies\.dat line 2: unknown genre 'Heist'"):
        load_movielens(root, variant="1m")


# --- MovieLens: bad input -----------------------------------------------------------------------------------


def test_load_movielens_missing_directory(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match=r"nowhere does not exist.*download_movielens.*u\.data"):
        load_movielens(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["u.data", "u.user", "u.item"])
def test_load_movielens_missing_required_file(tmp_path: Path, name: str) -> None:
    # Prepare
    root = write_ml100k(tmp_path / "ml-100k", **{name: b""})
    # Execute / Assert
    with pytest.raises(DataError, match=rf"{name} is missing.*download_movielens.*contains u\.data"):
        load_movielens(root)


def test_load_movielens_points_at_the_inner_folder(tmp_path: Path) -> None:
    # Prepare
    write_ml100k(tmp_path / "ml-100k")
    # Execute / Assert
    with pytest.raises(DataError, match=r"u\.data is missing \(it has a ml-100k/ folder: pass"):
        load_movielens(tmp_path)


def test_load_movielens_suggests_the_other_variant(tmp_path: Path) -> None:
    # Prepare
    root = write_ml100k(tmp_path / "ml-100k")
    # Execute / Assert
    with pytest.raises(DataError, match=r"ratings\.dat is missing \(it holds u\.data.*variant='100k'"):
        load_movielens(root, variant="1m")


def test_load_movielens_rating_with_unknown_item(tmp_path: Path) -> None:
    # Prepare
    bad = [*RATINGS[:2], (2, 99, 4, 200), *RATINGS[2:]]
    root = write_ml100k(tmp_path / "ml-100k", **{"u.data": _ml100k_texts(bad)["u.data"]})
    # Execute / Assert
    with pytest.raises(DataError, match=r"u\.data line 3: item 99 is not in .*u\.item"):
        load_movielens(root)


def test_load_movielens_rating_with_unknown_user(tmp_path: Path) -> None:
    # Prepare
    bad = [*RATINGS, (42, 10, 4, 200)]
    root = write_ml100k(tmp_path / "ml-100k", **{"u.data": _ml100k_texts(bad)["u.data"]})
    # Execute / Assert
    with pytest.raises(DataError, match=rf"u\.data line {len(bad)}: user 42 is not in .*u\.user"):
        load_movielens(root)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"1\t10\t5\t100\n1\tabc\t3\t101\n", r"u\.data line 2: item id 'abc' is not an integer"),
        (b"1\t10\t5\t100\n\n1\t20\t3.5x\t101\n", r"u\.data line 3: rating '3\.5x' is not a number in 1-5"),
        (b"1\t10\t9\t100\n", r"u\.data line 1: rating '9' is not a number in 1-5"),
        (b"1\t10\t5\t100\n1\t20\t3\n", r"u\.data line 2: unparsable row \(expected 4 non-empty fields"),
        (b"1\t10\t5\t100\n1\t20\t3\t1\t7\n", r"u\.data.*unparsable row.*line 2"),
        (b"1,10,5,100\n", r"u\.data line 1: expected 4 fields separated by tab, found 1"),
        (b"", r"u\.data is empty"),
    ],
)
def test_load_movielens_unparsable_ratings(tmp_path: Path, content: bytes, match: str) -> None:
    # Prepare
    root = write_ml100k(tmp_path / "ml-100k")
    (root / "u.data").write_bytes(content)
    # Execute / Assert
    with pytest.raises(DataError, match=match):
        load_movielens(root)


def test_load_movielens_duplicate_item_in_item_file(tmp_path: Path) -> None:
    # Prepare
    item = _ml100k_texts()["u.item"] + b"20|Again (1999)|||\n"
    root = write_ml100k(tmp_path / "ml-100k", **{"u.item": item})
    # Execute / Assert
    with pytest.raises(DataError, match=r"u\.item line 5: id 20 appears twice"):
        load_movielens(root)


def test_load_movielens_rejects_unknown_variant(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match="unknown MovieLens variant '10m'"):
        load_movielens(write_ml100k(tmp_path / "ml-100k"), variant="10m")


# --- MovieLens: checksums and download (the URL opener is replaced; no network) -----------------------------


def test_verify_file_checks_md5_and_sha256(tmp_path: Path) -> None:
    # Prepare
    f = tmp_path / "blob.zip"
    f.write_bytes(b"movielens")
    md5 = hashlib.md5(b"movielens").hexdigest()
    sha = hashlib.sha256(b"movielens").hexdigest()
    # Execute
    got = movielens_download._verify_file(f, md5=md5, sha256=sha.upper())
    # Assert
    assert got == sha
    zeros = "0" * 32
    with pytest.raises(DataError, match=rf"blob\.zip: MD5 checksum mismatch \(expected {zeros}, got {md5}\)"):
        movielens_download._verify_file(f, md5="0" * 32)
    with pytest.raises(DataError, match="SHA-256 checksum mismatch"):
        movielens_download._verify_file(f, md5=md5, sha256="f" * 64)


def _serve(monkeypatch: pytest.MonkeyPatch, payload: bytes) -> list[str]:
    """Replace urllib's opener by one serving `payload`; returns the list of URLs requested."""
    calls: list[str] = []

    def fake_urlopen(url: str, timeout: float = 0) -> io.BytesIO:
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


def test_download_rejects_and_deletes_a_file_with_the_wrong_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    calls = _serve(monkeypatch, b"not the real archive")
    # Execute / Assert
    with pytest.raises(DataError, match=r"MD5 checksum mismatch.*has been deleted"):
        download_movielens("100k", tmp_path)
    assert calls == [movielens_download.URLS["100k"]]
    assert list(tmp_path.iterdir()) == []


def test_download_pins_sha256_then_reuses_the_verified_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    payload = write_ml100k_zip(tmp_path / "served.zip").read_bytes()
    monkeypatch.setitem(movielens_download.MD5, "100k", hashlib.md5(payload).hexdigest())
    calls = _serve(monkeypatch, payload)
    cache = tmp_path / "cache"
    # Execute
    first = download_movielens("100k", cache)
    second = download_movielens("100k", cache)
    # Assert
    assert first == second == cache / "ml-100k.zip"
    assert len(calls) == 1  # the second call used the verified cached file
    sidecar = cache / "ml-100k.zip.sha256"
    assert sidecar.read_text().strip() == hashlib.sha256(payload).hexdigest()
    assert len(load_movielens(first)) == len(RATINGS)


def test_download_replaces_a_cached_file_that_fails_its_pinned_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    payload = write_ml100k_zip(tmp_path / "served.zip").read_bytes()
    monkeypatch.setitem(movielens_download.MD5, "100k", hashlib.md5(payload).hexdigest())
    calls = _serve(monkeypatch, payload)
    cache = tmp_path / "cache"
    path = download_movielens("100k", cache)
    path.write_bytes(b"tampered")
    # Execute
    again = download_movielens("100k", cache)
    # Assert
    assert len(calls) == 2
    assert again.read_bytes() == payload


def test_download_network_failure_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    def offline(url: str, timeout: float = 0) -> io.BytesIO:
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    # Execute / Assert
    with pytest.raises(DataError, match=r"cannot download .*ml-1m\.zip.*download it by hand"):
        download_movielens("1m", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resolve_movielens_prefers_a_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    root = write_ml100k(tmp_path / "ml-100k")
    calls = _serve(monkeypatch, b"")
    # Execute
    got = resolve_movielens(str(root), "100k", tmp_path / "cache")
    # Assert
    assert got == root and calls == []
    with pytest.raises(DataError, match="missing does not exist"):
        resolve_movielens(str(tmp_path / "missing"), "100k", tmp_path / "cache")


def test_resolve_movielens_downloads_when_no_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    payload = write_ml100k_zip(tmp_path / "served.zip").read_bytes()
    monkeypatch.setitem(movielens_download.MD5, "100k", hashlib.md5(payload).hexdigest())
    _serve(monkeypatch, payload)
    # Execute
    got = resolve_movielens(None, "100k", tmp_path / "cache")
    # Assert
    assert got == tmp_path / "cache" / "ml-100k.zip"


# --- generic file loader ------------------------------------------------------------------------------------

INTERACTIONS = pd.DataFrame(
    {
        "user": ["alice", "alice", "bob", "carol", "carol", "dave"],
        "item": [3, 1, 2, 10, 3, 2],
        "rating": [5.0, 3.0, 4.0, 1.0, 2.0, 4.5],
        "timestamp": [100, 101, 102, 103, 104, 105],
        "region": ["eu", "eu", "na", "eu", "apac", "na"],
    }
)
INTERACTIONS.loc[4, "user"] = "erin"  # one user per region


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


@pytest.mark.parametrize("name", ["inter.csv", "inter.tsv", "inter.parquet", "inter.pq"])
def test_file_loader_happy_path_with_declared_public_items(tmp_path: Path, name: str) -> None:
    # Prepare
    path = _write(INTERACTIONS, tmp_path / name)
    # Execute
    data = load_interactions_file(path, items_public=True)
    # Assert
    assert len(data) == 6 and data.explicit is True
    assert data.regions == ("apac", "eu", "na")
    assert data.catalog.n_items == 4  # items 1, 2, 3, 10 in numeric order
    assert data.item.tolist() == [2, 0, 1, 3, 2, 1]
    assert data.rating.tolist() == [5.0, 3.0, 4.0, 1.0, 2.0, 4.5]
    assert data.timestamp.tolist() == [100, 101, 102, 103, 104, 105]
    assert data.users_per_region() == {"apac": 1, "eu": 2, "na": 2}
    assert data.report is not None and data.report.rows_read == 6
    assert any("declared the item ids public" in n for n in data.report.notes)


def test_file_loader_remaps_columns(tmp_path: Path) -> None:
    # Prepare
    columns = {"user": "uid", "item": "movie", "rating": "stars", "timestamp": "ts", "region": "country"}
    path = _write(INTERACTIONS.rename(columns=columns), tmp_path / "inter.csv")
    # Execute
    data = load_interactions_file(path, columns=columns, items_public=True)
    # Assert
    assert len(data) == 6 and data.regions == ("apac", "eu", "na")
    with pytest.raises(ConfigError, match=r"dataset\.columns\.movie is not a known column"):
        load_interactions_file(path, columns={"movie": "movie"}, items_public=True)


def test_file_loader_uses_catalog_order_and_titles(tmp_path: Path) -> None:
    # Prepare
    path = _write(INTERACTIONS, tmp_path / "inter.parquet")
    catalog = _write(pd.DataFrame({"item": [10, 3, 2, 1, 99], "title": ["J", "C", "B", "A", "Z"]}),
                     tmp_path / "catalog.csv")
    # Execute
    data = load_interactions_file(path, catalog_path=str(catalog), items_public=True)
    # Assert
    assert data.catalog.n_items == 5 and data.catalog.titles == ("J", "C", "B", "A", "Z")
    assert data.item.tolist() == [1, 3, 2, 0, 1, 2]
    assert data.report is not None
    assert not any("declared the item ids public" in n for n in data.report.notes)


def test_file_loader_item_missing_from_catalog(tmp_path: Path) -> None:
    # Prepare
    path = _write(INTERACTIONS, tmp_path / "inter.csv")
    catalog = _write(pd.DataFrame({"item": [1, 2, 3]}), tmp_path / "catalog.tsv")
    # Execute / Assert
    with pytest.raises(DataError, match=r"1 of 6 interactions reference items not in the catalog.*"
                                        r"item '10' at data row 4 \(line 5"):
        load_interactions_file(path, catalog_path=catalog)


def test_file_loader_catalog_without_item_column(tmp_path: Path) -> None:
    # Prepare
    path = _write(INTERACTIONS, tmp_path / "inter.csv")
    catalog = _write(pd.DataFrame({"movie": [1, 2, 3]}), tmp_path / "catalog.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=r"catalog.csv has no column 'item' \(it has \['movie'\]\)"):
        load_interactions_file(path, catalog_path=catalog)


def test_file_loader_refuses_a_catalog_from_private_interactions(tmp_path: Path) -> None:
    # Prepare
    path = _write(INTERACTIONS, tmp_path / "inter.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=r"no public item catalog.*rare item.*dataset\.catalog_path=FILE.*"
                                        r"dataset\.items_public=true"):
        load_interactions_file(path)


def test_file_loader_implicit_without_rating_and_default_region(tmp_path: Path) -> None:
    # Prepare
    path = _write(INTERACTIONS.drop(columns=["rating", "region"]), tmp_path / "inter.csv")
    # Execute
    data = load_interactions_file(path, implicit=True, region_column_default="eu", items_public=True)
    # Assert
    assert data.explicit is False and data.rating.tolist() == [1.0] * 6
    assert data.regions == ("eu",)
    assert data.report is not None and any("all rows are in region 'eu'" in n for n in data.report.notes)


@pytest.mark.parametrize(
    ("drop", "kwargs", "match"),
    [
        (["rating"], {}, r"missing column\(s\) 'rating'.*dataset\.columns\.rating=.*dataset\.implicit=true"),
        (["timestamp"], {}, r"missing column\(s\) 'timestamp'.*columns\.timestamp=.*split is temporal"),
        (["region"], {}, r"missing column\(s\) 'region'.*region_column_default"),
        (["user", "item"], {}, r"'user' \(looked for column 'user'\), 'item'.*the file has columns "
                               r"\['rating', 'region', 'timestamp'\].*dataset\.columns\.user=<column> "
                               r"dataset\.columns\.item=<column>"),
        ([], {"columns": {"user": "uid"}}, r"'user' \(looked for column 'uid'\)"),
    ],
)
def test_file_loader_missing_columns(tmp_path: Path, drop: list[str], kwargs: dict, match: str) -> None:
    # Prepare
    path = _write(INTERACTIONS.drop(columns=drop), tmp_path / "inter.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=match):
        load_interactions_file(path, items_public=True, **kwargs)


def test_file_loader_non_numeric_rating_names_row_and_value(tmp_path: Path) -> None:
    # Prepare
    bad = INTERACTIONS.astype({"rating": object})
    bad.loc[2, "rating"] = "four"
    path = _write(bad, tmp_path / "inter.csv")
    # Execute / Assert
    where = r"data row 3 \(line 4 of the file, line 1 being the header\)"
    with pytest.raises(DataError, match=rf"inter\.csv: column 'rating' has a non-numeric or missing value "
                                        rf"'four' at {where}"):
        load_interactions_file(path, items_public=True)


def test_file_loader_nan_timestamp_in_parquet(tmp_path: Path) -> None:
    # Prepare
    bad = INTERACTIONS.astype({"timestamp": float})
    bad.loc[5, "timestamp"] = np.nan
    path = _write(bad, tmp_path / "inter.parquet")
    # Execute / Assert
    with pytest.raises(DataError, match=r"column 'timestamp' has a non-numeric or missing value nan at row 6 "
                                        r"\(1-based\)"):
        load_interactions_file(path, items_public=True)


def test_file_loader_empty_csv_rating(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "inter.csv"
    path.write_text("user,item,rating,timestamp,region\nu1,1,5,10,eu\nu1,2,,11,eu\n")
    # Execute / Assert
    with pytest.raises(DataError, match=r"column 'rating' has a non-numeric or missing value '' at "
                                        r"data row 2"):
        load_interactions_file(path, items_public=True)


def test_file_loader_duplicate_rows(tmp_path: Path) -> None:
    # Prepare
    dup = pd.concat([INTERACTIONS, INTERACTIONS.iloc[[1, 1]]], ignore_index=True)
    path = _write(dup, tmp_path / "inter.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=r"2 duplicate \(user, item, timestamp\) rows; the first are rows "
                                        r"2, 7, 8 \(1-based data rows, header not counted\).*deduplicate"):
        load_interactions_file(path, items_public=True)


def test_file_loader_user_in_two_regions(tmp_path: Path) -> None:
    # Prepare
    bad = INTERACTIONS.copy()
    bad.loc[1, "region"] = "na"
    path = _write(bad, tmp_path / "inter.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=r"user 'alice' appears in regions \['eu', 'na'\].*one silo"):
        load_interactions_file(path, items_public=True)


def test_file_loader_empty_user_id(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "inter.csv"
    path.write_text("user,item,rating,timestamp,region\nu1,1,5,10,eu\n,2,4,11,eu\n")
    # Execute / Assert
    with pytest.raises(DataError, match=r"column 'user' is empty at data row 2"):
        load_interactions_file(path, items_public=True)


def test_file_loader_unsupported_extension_and_missing_file(tmp_path: Path) -> None:
    # Prepare
    json_file = tmp_path / "inter.json"
    json_file.write_text("{}")
    # Execute / Assert
    supported = r"supported: \.csv, \.tsv, \.parquet, \.pq"
    with pytest.raises(DataError, match=rf"unsupported extension '\.json'; {supported}"):
        load_interactions_file(json_file, items_public=True)
    with pytest.raises(DataError, match=r"nothere\.csv does not exist"):
        load_interactions_file(tmp_path / "nothere.csv", items_public=True)


def test_file_loader_unreadable_parquet(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "inter.parquet"
    path.write_bytes(b"definitely not parquet")
    # Execute / Assert
    with pytest.raises(DataError, match=r"interactions file .*inter\.parquet cannot be read as PARQUET"):
        load_interactions_file(path, items_public=True)


# --- dataset=file: public item features ---------------------------------------------------------------------

FEATURES = pd.DataFrame({"item": [10, 3, 2, 1], "year": [1999, 2001, 1987, 2010], "is_drama": [1, 0, 0, 1],
                         "price": [9.5, 3.0, 4.25, 0.0]})


@pytest.mark.parametrize("name", ["features.csv", "features.parquet"])
def test_file_loader_reads_public_item_features_in_catalog_order(tmp_path: Path, name: str) -> None:
    # Prepare: the catalog's order is 1, 2, 3, 10; the feature file lists the items in another order
    path = _write(INTERACTIONS, tmp_path / "inter.csv")
    features = _write(FEATURES, tmp_path / name)
    # Execute
    data = load_interactions_file(path, items_public=True, item_features_path=features)
    # Assert
    cat = data.catalog
    assert cat.feature_names == ("year", "is_drama", "price")
    assert cat.features is not None and cat.features.dtype == np.float32
    np.testing.assert_array_equal(cat.features, np.array(
        [[2010, 1, 0.0], [1987, 0, 4.25], [2001, 0, 3.0], [1999, 1, 9.5]], dtype=np.float32))
    assert data.report is not None and any("public item features: 3 columns" in n for n in data.report.notes)


def test_file_loader_feature_file_missing_a_catalog_item(tmp_path: Path) -> None:
    # Prepare
    path = _write(INTERACTIONS, tmp_path / "inter.csv")
    features = _write(FEATURES[FEATURES["item"] != 2], tmp_path / "features.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=r"features\.csv: 1 of 4 catalog items have no row; the first is item '2': "
                                        r"add a row for every catalog item"):
        load_interactions_file(path, items_public=True, item_features_path=features)


def test_file_loader_feature_file_non_numeric_value_names_the_row(tmp_path: Path) -> None:
    # Prepare
    bad = FEATURES.astype({"year": object})
    bad.loc[2, "year"] = "late eighties"
    path = _write(INTERACTIONS, tmp_path / "inter.csv")
    features = _write(bad, tmp_path / "features.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=r"features\.csv: column 'year' has a non-numeric or missing value "
                                        r"'late eighties' at data row 3 \(line 4 of the file"):
        load_interactions_file(path, items_public=True, item_features_path=features)


@pytest.mark.parametrize(("frame", "match"), [
    (pd.concat([FEATURES, pd.DataFrame({"item": [77], "year": [1], "is_drama": [0], "price": [1.0]})]),
     r"item '77' at data row 5 \(line 6 of the file, line 1 being the header\) is not in the catalog"),
    (pd.concat([FEATURES, FEATURES.iloc[[1]]]), r"item '3' has two rows \(data row 2 .* and data row 5"),
    (FEATURES.rename(columns={"item": "movie"}), r"has no column 'item'"),
    (FEATURES[["item"]], r"has only the 'item' column"),
    (FEATURES.assign(year=[1999, 2001, 1e300, 2010]), r"non-finite values .* item row 1, feature column 0"),
])
def test_file_loader_feature_file_errors_name_file_row_and_fix(tmp_path: Path, frame: pd.DataFrame,
                                                                 match: str) -> None:
    # Prepare
    path = _write(INTERACTIONS, tmp_path / "inter.csv")
    features = _write(frame, tmp_path / "features.csv")
    # Execute / Assert
    with pytest.raises(DataError, match=match):
        load_interactions_file(path, items_public=True, item_features_path=features)


# --- the real ML-100K, when a copy is at hand ---------------------------------------------------------------


@pytest.mark.skipif(
    not (os.environ.get("FEDREC_ML100K") and Path(os.environ["FEDREC_ML100K"], "u.data").is_file()),
    reason="set FEDREC_ML100K to a directory holding GroupLens' u.data, u.user and u.item",
)
def test_real_ml100k_when_present() -> None:
    # Prepare
    root = Path(os.environ["FEDREC_ML100K"])
    # Execute
    data = load_movielens(root)
    # Assert
    assert len(data) == 100_000
    assert np.unique(data.user).size == 943
    assert data.catalog.n_items == 1682
    assert data.regions == (*(f"zip{d}" for d in range(10)), "zip_other")
    assert sum(data.users_per_region().values()) == 943
    assert data.catalog.features is not None and data.catalog.features.shape == (1682, 20)
    assert data.catalog.features[:, 8].sum() == 725  # genre:Drama, the most frequent genre
    assert data.catalog.features[:, 19].min() >= 1920 and data.catalog.features[:, 19].max() <= 1998
