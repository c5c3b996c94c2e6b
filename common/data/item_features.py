"""Item side features from public catalogue metadata, aligned with the model's item indices.

Sources: ML-1M `movies.dat` (genres, release year from the title), ML-100K `u.item` (genre flags,
release year from the date), or any CSV/TSV/Parquet file with an item column and categorical
columns (e.g. a `category` column of the interactions file itself; a cell may hold several values
separated by `|`). Each (feature, value) pair gets one id in a joint vocabulary 1..V; release years
are bucketed into YEAR_BUCKET-year spans so that a rare year still shares its embedding.

The result is metadata about the catalogue, not about any user: every client and the server build
the same table from the same file, and it never travels in a federation's messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError

YEAR_BUCKET = 5  # years per release-year bucket: ML-1M spans 1919-2000, about 17 buckets
MOVIELENS_FEATURES = ("genre", "year")
ML100K_GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir "
    "Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class ItemFeatures:
    index: np.ndarray  # (N + 1, S) int64 feature ids per item index; 0 = none; row 0 = padding
    vocabulary: tuple[str, ...]  # name of feature id j + 1, e.g. "genre=Comedy", "year=1995-1999"
    missing_items: int  # catalogue items the metadata file does not describe (they get no features)

    @property
    def num_features(self) -> int:
        return len(self.vocabulary)

    @property
    def slots(self) -> int:
        return self.index.shape[1]


def parse_feature_names(value: str) -> tuple[str, ...]:
    """`item-features` ("genre,year") -> ("genre", "year"); "" -> ()."""
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _year_label(year: int) -> str:
    start = year - year % YEAR_BUCKET
    return f"year={start}-{start + YEAR_BUCKET - 1}"


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="latin-1").splitlines()  # the MovieLens files are Latin-1
    except OSError as exc:
        raise DataError(f"{path}: cannot read the item metadata file ({exc})") from exc


def _movies_dat(path: Path, features: tuple[str, ...]) -> dict[int, list[str]]:
    labels = {}
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            raise DataError(f"{path}: line {number}: expected MovieID::Title::Genres, got {line[:60]!r}")
        item, title, genres = int(fields[0]), fields[1], fields[2]
        found = []
        if "genre" in features:
            found += [f"genre={g}" for g in genres.split("|") if g]
        if "year" in features:
            year = _TITLE_YEAR.search(title)
            if year:
                found.append(_year_label(int(year.group(1))))
        labels[item] = found
    return labels


def _u_item(path: Path, features: tuple[str, ...]) -> dict[int, list[str]]:
    labels = {}
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        flags = fields[5:]
        if len(fields) != 5 + len(ML100K_GENRES) or not fields[0].isdigit() or any(f not in ("0", "1") for f in flags):
            raise DataError(
                f"{path}: line {number}: expected id|title|date|video date|url and {len(ML100K_GENRES)} 0/1 genre "
                f"flags, got {line[:60]!r}"
            )
        found = []
        if "genre" in features:
            found += [f"genre={g}" for g, flag in zip(ML100K_GENRES, flags) if flag == "1"]
        if "year" in features and fields[2].strip():
            year = fields[2].strip()[-4:]
            if not year.isdigit():
                raise DataError(f"{path}: line {number}: release date {fields[2]!r} does not end in a year")
            found.append(_year_label(int(year)))
        labels[int(fields[0])] = found
    return labels


def _table(path: Path, features: tuple[str, ...], item_col: str) -> dict[int, list[str]]:
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path).astype(str)
        else:
            sep = "\t" if path.name.removesuffix(".gz").endswith((".tsv", ".tab")) else ","
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read the item metadata table ({' '.join(str(exc).split())})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in (item_col, *features) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: no column(s) {', '.join(missing)} for item features; found {', '.join(frame.columns[:10])}. "
            "Set item-features to categorical columns of this file (or item-col to its item column)"
        )
    items = pd.to_numeric(frame[item_col], errors="coerce")
    if items.isna().any() or (items % 1 != 0).any():
        row = int(np.argmax((items.isna() | (items % 1 != 0)).to_numpy()))
        raise DataError(f"{path}: row {row + 1}: item {frame[item_col].iloc[row]!r} is not an integer ID")
    labels: dict[int, set[str]] = {}
    columns = {feature: frame[feature].to_numpy() for feature in features}
    for row, item in enumerate(items.astype(np.int64).to_numpy()):
        found = labels.setdefault(int(item), set())
        for feature, values in columns.items():
            found.update(f"{feature}={v.strip()}" for v in str(values[row]).split("|") if v.strip())
    return {item: sorted(found) for item, found in labels.items()}


@lru_cache(maxsize=8)
def read_item_labels(path: Path, features: tuple[str, ...], item_col: str = "item_id") -> dict[int, tuple[str, ...]]:
    """Original item ID -> its feature labels ("genre=Comedy", ...), from one metadata file."""
    if not features:
        raise DataError("item-features is empty; name the features to read (e.g. genre,year)")
    if not path.is_file():
        raise DataError(f"{path}: item metadata file not found; set item-metadata to the catalogue's metadata file")
    if path.name in ("movies.dat", "u.item"):
        unknown = [f for f in features if f not in MOVIELENS_FEATURES]
        if unknown:
            raise DataError(
                f"{path}: MovieLens metadata has no feature(s) {', '.join(unknown)}; "
                f"item-features takes {', '.join(MOVIELENS_FEATURES)} here"
            )
        labels = _movies_dat(path, features) if path.name == "movies.dat" else _u_item(path, features)
    else:
        labels = _table(path, features, item_col)
    if not labels:
        raise DataError(f"{path}: no items in the item metadata file")
    return {item: tuple(found) for item, found in labels.items()}


def item_features(item_ids: np.ndarray, labels: dict[int, tuple[str, ...]], source: str = "metadata") -> ItemFeatures:
    """The (N + 1, S) feature-id table of a catalogue `item_ids` (index -> original ID, [0] = padding)."""
    catalogue = [int(i) for i in item_ids[1:]]
    found = [labels.get(item) for item in catalogue]
    missing = sum(f is None for f in found)
    if missing == len(catalogue):
        raise DataError(
            f"{source}: describes none of the {len(catalogue)} catalogue items; "
            "check that item-metadata belongs to this dataset"
        )
    vocabulary = tuple(sorted({label for f in found if f for label in f}))
    if not vocabulary:
        raise DataError(f"{source}: the catalogue's items have no values for the requested item features")
    ids = {label: j + 1 for j, label in enumerate(vocabulary)}
    slots = max(len(f) for f in found if f is not None)
    index = np.zeros((len(item_ids), max(slots, 1)), dtype=np.int64)
    for row, f in enumerate(found, 1):
        for slot, label in enumerate(f or ()):
            index[row, slot] = ids[label]
    return ItemFeatures(index, vocabulary, missing)
