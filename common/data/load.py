"""One entry point from data settings to preprocessed sequences, with an on-disk cache.

The cache (keyed by the file's identity and the preprocessing settings) lets every simulated
client process load ML-1M in milliseconds instead of re-reading and re-filtering the CSV.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.config import DataSettings
from common.data.files import MOVIELENS, cache_dir, resolve_interactions, search_dirs
from common.data.interactions import Columns, load_interactions
from common.data.item_features import ItemFeatures, item_features, parse_feature_names, read_item_labels
from common.data.sequences import SequenceData, build_sequences
from common.data.synthetic import synthetic_interactions


def interactions_path(settings: DataSettings) -> Path | None:
    """The interactions file behind the settings (None for synthetic data)."""
    if settings.data == "synthetic":
        return None
    if settings.data in MOVIELENS:
        return resolve_interactions(settings.data, settings.data_dir)
    return Path(settings.data)


def _cache_key(path: Path | None, settings: DataSettings) -> str:
    identity = {
        "min_item_count": settings.min_item_count,
        "min_user_count": settings.min_user_count,
        "columns": [settings.user_col, settings.item_col, settings.time_col],
        "version": 1,
    }
    if path is None:
        identity["synthetic"] = [settings.synthetic_users, settings.synthetic_items]
    else:
        stat = path.stat()
        identity["file"] = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def load_sequence_data(settings: DataSettings, use_cache: bool = True) -> SequenceData:
    path = interactions_path(settings)
    if path is not None and path.exists() is False:
        load_interactions(path)  # raises the file-not-found DataError with guidance
    key = _cache_key(path, settings)
    cached = cache_dir() / "preprocessed" / f"{key}.npz"
    if use_cache and cached.exists():
        try:
            data = SequenceData.load(cached)
            data.report = json.loads(cached.with_suffix(".json").read_text())
            return data
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry (a full disk, a copy cut short) is built again below
    if path is None:
        frame = synthetic_interactions(settings.synthetic_users, settings.synthetic_items, seed=0)
        source = f"synthetic({settings.synthetic_users} users, {settings.synthetic_items} items)"
    else:
        frame = load_interactions(path, Columns(settings.user_col, settings.item_col, settings.time_col))
        source = str(path)
    data = build_sequences(
        frame, min_item_count=settings.min_item_count, min_user_count=settings.min_user_count, source=source
    )
    if use_cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # A name of this process's own: runs started together must not rename each other's file.
        unique = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = cached.with_name(f"{cached.stem}.{unique}.tmp.npz")
        report_tmp = cached.with_name(f"{cached.stem}.{unique}.tmp.json")
        data.save(tmp)
        report_tmp.write_text(json.dumps(data.report))
        report_tmp.replace(cached.with_suffix(".json"))  # the report first: a reader that sees the npz finds it
        tmp.replace(cached)
    return data


@lru_cache(maxsize=4)
def cached_sequence_data(settings: DataSettings) -> SequenceData:
    """Per-process memo: simulated clients in one worker share a single copy."""
    return load_sequence_data(settings)


def append_users(data: SequenceData, sequences: np.ndarray, user_ids: np.ndarray) -> SequenceData:
    """The same catalogue with extra users (audit canaries) after the real ones; indices unchanged."""
    if len(sequences) == 0:
        return data
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    offsets = np.concatenate([data.offsets, data.offsets[-1] + np.cumsum(lengths)])
    items = np.concatenate([data.items, np.concatenate(list(sequences)).astype(data.items.dtype)])
    return SequenceData(items, offsets, np.concatenate([data.user_ids, user_ids]), data.item_ids, dict(data.report))


def item_metadata_path(settings: DataSettings) -> Path:
    """Where the item metadata lives: item-metadata, else the dataset's own catalogue file, else the
    interactions file itself (its categorical columns)."""
    if settings.item_metadata:
        return Path(settings.item_metadata)
    if settings.data in MOVIELENS:
        name, items_file = settings.data, MOVIELENS[settings.data].items_file
        for base in search_dirs(settings.data_dir):  # a server with a catalogue only has no ratings file
            if (base / name / items_file).is_file():
                return base / name / items_file
        return resolve_interactions(name, settings.data_dir).parent / items_file  # downloads the archive
    return Path(settings.data)


def check_item_features(settings: DataSettings) -> None:
    """Read the item-features names from their metadata file, so that a wrong name or file stops a
    command before it starts processes (the catalogue's table is built later, where it is used)."""
    names = parse_feature_names(settings.item_features)
    if names:
        read_item_labels(item_metadata_path(settings), names, settings.item_col)


def load_item_features(settings: DataSettings, item_ids: np.ndarray) -> ItemFeatures | None:
    """The catalogue's side-feature table, or None when item-features is empty."""
    names = parse_feature_names(settings.item_features)
    if not names:
        return None
    path = item_metadata_path(settings)
    labels = read_item_labels(path, names, settings.item_col)
    return item_features(item_ids, labels, source=str(path))
