"""An external public corpus: another service's users, mapped onto this catalogue by title and year.

The corpus is public data from outside the protected population (e.g. ML-100K's 943 users, whose
ratings GroupLens published in 1998), so training on it costs no privacy: it is named in every
report of a run that uses it and left out of epsilon. Items are matched on their MovieLens title,
which carries the release year ("Toy Story (1995)"); a corpus film with no match, or a match that
is not in this run's catalogue, is dropped, as is a user left with fewer than two items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.files import MOVIELENS, resolve_interactions
from common.errors import DataError

CORPORA = ("ml-100k",)  # corpora with a reader; a folder path of the same layout works too


@dataclass(frozen=True)
class PublicCorpus:
    sequences: list[np.ndarray]  # per corpus user, this catalogue's item indices in time order
    report: dict  # source, users, interactions and films kept (named in every report of the run)


def _normalise(title: str) -> str:
    return " ".join(title.strip().lower().split())


def _titles(path: Path, sep: str, fields: int) -> dict[int, str]:
    """Item ID -> normalised title from a MovieLens catalogue file (movies.dat or u.item)."""
    try:
        lines = path.read_text(encoding="latin-1").splitlines()  # MovieLens files are Latin-1
    except OSError as exc:
        raise DataError(f"{path}: cannot read the film titles ({exc})") from exc
    titles = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) < fields or not parts[0].strip().isdigit():
            raise DataError(f"{path}: line {number}: expected an item ID and a title, got {line[:60]!r}")
        titles[int(parts[0])] = _normalise(parts[1])
    return titles


def corpus_folder(name: str, data_dir: str = "") -> Path:
    """The folder holding the corpus' u.data and u.item: a named MovieLens set, or a folder path."""
    if name in CORPORA:
        return resolve_interactions(name, data_dir).parent
    folder = Path(name).expanduser()
    if not (folder / "u.data").is_file() or not (folder / "u.item").is_file():
        raise DataError(
            f"public-corpus = {name[:80]!r}: neither a known corpus ({', '.join(CORPORA)}) nor a folder holding "
            "u.data and u.item (the ML-100K layout)"
        )
    return folder


def load_public_corpus(name: str, catalogue_titles: Path, item_ids: np.ndarray, data_dir: str = "") -> PublicCorpus:
    """The corpus' histories on this catalogue. `catalogue_titles` is this run's movies.dat;
    `item_ids[i]` the original ID of model index i (index 0 = padding)."""
    folder = corpus_folder(name, data_dir)
    target = _titles(catalogue_titles, "::", 3)
    by_title = {title: item for item, title in target.items()}
    source = _titles(folder / MOVIELENS["ml-100k"].items_file, "|", 2)
    index_of = {int(item): index for index, item in enumerate(item_ids) if index > 0}
    mapping = {}
    for item, title in source.items():
        original = by_title.get(title)
        if original is not None and original in index_of:
            mapping[item] = index_of[original]
    try:
        ratings = pd.read_csv(
            folder / "u.data", sep="\t", header=None, names=["user", "item", "rating", "time"], dtype=np.int64
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{folder / 'u.data'}: cannot read the corpus ratings ({' '.join(str(exc).split())})") from exc
    ratings["index"] = ratings["item"].map(mapping)
    kept = ratings.dropna(subset=["index"]).sort_values(["user", "time"], kind="stable")
    sequences = [
        group.to_numpy(dtype=np.int64) for _, group in kept.groupby("user", sort=True)["index"] if len(group) >= 2
    ]
    report = {
        "source": str(folder),
        "matched_by": "title with release year",
        "films": len(source),
        "films_mapped": len(mapping),
        "users": len(sequences),
        "interactions": int(sum(len(s) for s in sequences)),
        "interactions_dropped": int(len(ratings) - len(kept)),
    }
    return PublicCorpus(sequences, report)
