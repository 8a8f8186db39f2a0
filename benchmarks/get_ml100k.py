"""Rebuild MovieLens 100K in GroupLens' layout (u.data, u.user, u.item) from the copy RecBole ships.

Why: where files.grouplens.org cannot be reached but PyPI can, the RecBole wheel carries ML-100K in its
own tab-separated "atomic" format (`recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}`). This
script reads those members straight from the wheel (a zip) and writes the GroupLens layout that
`fedrec.data.movielens.load_movielens` reads, so the real-data test and manual checks can run.

Ratings and users are exact. u.item is partly reconstructed: RecBole keeps the title without its year, the
release year and the genres, so the title is rebuilt as "Title (year)" (the original's year can differ for
a few titles), the release date, video release date and IMDb URL fields are left empty, and the 19 genre
flags are rebuilt from the genre names.

Usage: python benchmarks/get_ml100k.py [--out /tmp/ml-100k] [--wheel-dir /tmp/w]
Not imported by the package.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

RECBOLE = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
# Genre order of ML-100K's u.genre (the flag columns of u.item).
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def find_wheel(wheel_dir: Path) -> Path:
    """The RecBole wheel in `wheel_dir`, fetched with `pip download --no-deps` if absent."""
    wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheel_dir), RECBOLE]
        subprocess.run(cmd, check=True)
        wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        raise SystemExit(f"no recbole-1.2.1 wheel in {wheel_dir} after pip download")
    return wheels[0]


def read_atomic(wheel: zipfile.ZipFile, kind: str) -> pd.DataFrame:
    """One RecBole atomic file as strings, with the typed header (`user_id:token`) reduced to names."""
    raw = wheel.read(MEMBER.format(kind))
    df = pd.read_csv(
        io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8"
    )
    return df.rename(columns=lambda c: c.split(":", 1)[0])


def write_table(df: pd.DataFrame, path: Path, sep: str) -> None:
    """Header-less, unquoted GroupLens-style file, latin-1 like the original."""
    df.to_csv(
        path, sep=sep, header=False, index=False, quoting=csv.QUOTE_NONE, encoding="latin-1",
        errors="replace", lineterminator="\n",
    )


def convert(wheel_path: Path, out: Path) -> dict[str, int]:
    """Write u.data, u.user and u.item into `out`; return their row counts."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        inter = read_atomic(wheel, "inter")
        users = read_atomic(wheel, "user")
        items = read_atomic(wheel, "item")

    data = inter[["user_id", "item_id", "rating", "timestamp"]].copy()
    data["timestamp"] = pd.to_numeric(data["timestamp"]).astype("int64").astype(str)
    write_table(data, out / "u.data", "\t")

    write_table(users[["user_id", "age", "gender", "occupation", "zip_code"]], out / "u.user", "|")

    year = items["release_year"].str.strip()
    name = items["movie_title"].replace("unkonwn", "unknown")  # RecBole's placeholder for item 267
    title = name.where(~year.str.fullmatch(r"\d{4}"), name + " (" + year + ")")
    flags = items["class"].str.get_dummies(sep=" ").reindex(columns=list(GENRES), fill_value=0)
    blank = pd.Series("", index=items.index)
    item_table = pd.concat(
        [items["item_id"], title, blank, blank, blank, flags], axis=1, ignore_index=True
    )
    write_table(item_table, out / "u.item", "|")
    return {"u.data": len(data), "u.user": len(users), "u.item": len(items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ml-100k"))
    parser.add_argument("--wheel-dir", type=Path, default=Path("/tmp/w"))
    args = parser.parse_args()
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    counts = convert(find_wheel(args.wheel_dir), args.out)
    for name, n in counts.items():
        print(f"{args.out / name}: {n:,} rows")


if __name__ == "__main__":
    main()
