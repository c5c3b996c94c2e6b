"""Find a named dataset locally, or download the official MovieLens archive (checksum-verified).

Lookup order for a name such as `ml-1m`: the configured data dir, `$FEDSEQREC_DATA_DIR`, then the
download cache (`$FEDSEQREC_CACHE`, default `~/.cache/fedseqrec`). Only when none holds the files
is the official GroupLens zip downloaded, verified against GroupLens' published MD5, and unpacked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common.errors import DataError

DATA_DIR_ENV = "FEDSEQREC_DATA_DIR"
CACHE_ENV = "FEDSEQREC_CACHE"


@dataclass(frozen=True)
class MovieLens:
    url: str
    md5: str  # GroupLens publishes <zip>.md5 beside each archive
    candidates: tuple[str, ...]  # interaction files, preferred first, relative to the dataset folder
    items_file: str  # item metadata (titles, genres)


MOVIELENS = {
    "ml-1m": MovieLens(
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "c4d9eecfca2ab87c1945afe126590906",
        ("interactions.csv.gz", "ratings.dat"),
        "movies.dat",
    ),
    "ml-100k": MovieLens(
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "0e33842e24a9c977be4e0107933c0723",
        ("u.data",),
        "u.item",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "fedseqrec"))


def search_dirs(data_dir: str = "") -> list[Path]:
    dirs = [Path(d) for d in (data_dir, os.environ.get(DATA_DIR_ENV, "")) if d]
    return dirs + [cache_dir()]


def resolve_interactions(name: str, data_dir: str = "", download: bool = True) -> Path:
    """Path of the interactions file for a dataset name; download it if nothing local exists."""
    spec = MOVIELENS[name]
    for base in search_dirs(data_dir):
        for candidate in spec.candidates:
            path = base / name / candidate
            if path.exists():
                return path
    if not download:
        raise DataError(
            f"dataset {name} not found under {', '.join(map(str, search_dirs(data_dir)))}; "
            f"set data-dir or ${DATA_DIR_ENV} to a folder containing {name}/"
        )
    return download_movielens(name, cache_dir()) / spec.candidates[-1]


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_movielens(name: str, target: Path) -> Path:
    """Download, verify and unpack an official MovieLens zip into `target/name`; returns that folder."""
    spec = MOVIELENS[name]
    target.mkdir(parents=True, exist_ok=True)
    archive = target / f"{name}.zip"
    if not archive.exists() or md5sum(archive) != spec.md5:
        partial = archive.with_suffix(".zip.part")
        print(f"downloading {spec.url} -> {archive}")
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise DataError(
                f"could not download {spec.url} ({exc}); download it by hand and unpack it "
                f"into a folder given by data-dir or ${DATA_DIR_ENV}"
            ) from exc
        got = md5sum(partial)
        if got != spec.md5:
            partial.unlink()
            raise DataError(
                f"{spec.url}: checksum mismatch (md5 {got}, expected {spec.md5}); "
                "the download is corrupt or the archive changed; retry or fetch it by hand"
            )
        partial.replace(archive)
    verify_and_unpack(archive, spec.md5, target)
    return target / name


def verify_and_unpack(archive: Path, md5: str, target: Path) -> None:
    if md5sum(archive) != md5:
        raise DataError(f"{archive}: checksum mismatch; delete it and download again")
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(target)
