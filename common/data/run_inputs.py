"""A run remembers its inputs: where each file it read was, and a fingerprint of it (size + sha256).

A run writes `inputs.json` into its folder when it starts: the resolved, absolute location of
every input file it reads (interactions, item metadata, users file, the init model, a server's item
catalogue) with its size and sha256. Commands that come back to the run later (`export`, `audit`,
`ensemble`, `personalize`, and a resume) take the locations from there (`recorded_config`), so they
need neither `$FEDSEQREC_DATA_DIR` nor the directory the run was started from. Each file is checked
against its fingerprint: one that moved is looked for where the configuration and environment
point now (a note says which copy is used), and one whose content differs is an error that says
so, in one line.

Hashing is done once per file version: fingerprints are cached under the download cache, keyed on
the path, size and modification time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sys
from pathlib import Path

from common.config import RunConfig
from common.data.files import MOVIELENS, cache_dir, resolve_interactions, search_dirs
from common.data.item_features import parse_feature_names
from common.data.load import interactions_path, item_metadata_path
from common.errors import DataError
from common.evaluation.user_groups import users_file_for
from common.run_files import InputsFile, read_json

INPUTS_FILE = "inputs.json"
VERSION = 1
# Each input: (what it is, the run-config key that names it).
INPUTS = {
    "interactions": ("interactions file", "data"),
    "item_metadata": ("item metadata file", "item-metadata"),
    "users_file": ("users file", "users-file"),
    "init_model": ("init model", "init-model"),
    "catalogue": ("item catalogue", "catalogue-path"),
}


# --- fingerprints


def fingerprint(path: Path) -> dict:
    """{"path", "size", "sha256"} of a file; the sha256 from the cache when path, size and mtime match."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    cached = cache_dir() / "fingerprints" / f"{key}.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    found = {"path": str(path), "size": stat.st_size, "sha256": digest.hexdigest()}
    try:  # a cache that cannot be written only costs the hash next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(found))
        tmp.replace(cached)
    except OSError:
        pass
    return found


def same_file(entry: dict, found: dict) -> bool:
    return entry["size"] == found["size"] and entry["sha256"] == found["sha256"]


# --- what a run reads


def input_paths(config: RunConfig) -> dict[str, Path]:
    """The files a run of `config` reads, by input name (see INPUTS); a server with an item catalogue
    reads no interactions."""
    data, fed = config.data, config.federation
    paths: dict[str, Path | None] = {}
    if data.catalogue_path:
        paths["catalogue"] = Path(data.catalogue_path)
    else:
        paths["interactions"] = interactions_path(data)
        if config.train.user_groups == "auto":
            paths["users_file"] = users_file_for(data)
    if parse_feature_names(data.item_features):
        paths["item_metadata"] = item_metadata_path(data)
    if fed.init_model:
        paths["init_model"] = Path(fed.init_model)
    return {name: path for name, path in paths.items() if path is not None and Path(path).is_file()}


def record_inputs(run_dir: Path, config: RunConfig) -> dict:
    """Write RUN_DIR/inputs.json for a run starting now. A resumed run (the file is there) must read
    the same content: a file that changed is a DataError; one that moved is recorded at its new place."""
    run_dir = Path(run_dir)
    current = {name: fingerprint(path) for name, path in input_paths(config).items()}
    previous = read_inputs(run_dir)
    if previous is not None:
        for name, entry in previous["inputs"].items():
            if name in current and not same_file(entry, current[name]):
                raise DataError(_changed(name, entry, current[name], run_dir, config))
            if name in INPUTS and name not in current:  # e.g. a users file that was there is gone
                raise DataError(
                    f"{entry['path']}: the {INPUTS[name][0]} that {run_dir} read before is not there now; put it "
                    f"back, or point {_where(name, config)} at a copy, to resume the run"
                )
    first = previous.get("first_recorded", previous.get("recorded")) if previous is not None else None
    entries = {name: {"setting": INPUTS[name][1], **found} for name, found in current.items()}
    return write_inputs(run_dir, entries, first)


def write_inputs(run_dir: Path, inputs: dict[str, dict], first_recorded: str | None = None) -> dict:
    """RUN_DIR/inputs.json with these entries (name -> {"setting", "path", "size", "sha256"})."""
    record = {"version": VERSION, "recorded": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    if first_recorded:
        record["first_recorded"] = first_recorded
    record["inputs"] = inputs
    (Path(run_dir) / INPUTS_FILE).write_text(json.dumps(record, indent=2))
    return record


def read_inputs(run_dir: Path) -> dict | None:
    """The run's inputs.json, or None for a run that has none (made by a version before it existed)."""
    path = Path(run_dir) / INPUTS_FILE
    if not path.is_file():
        return None
    return read_json(
        path, InputsFile, what="record of the run's inputs", todo="remove it to use the run's config alone"
    )


# --- coming back to a run


def recorded_config(run_dir: Path, config: RunConfig, *, inputs: tuple[str, ...] = tuple(INPUTS)) -> RunConfig:
    """`config` (the run's own) with the recorded location of each input in `inputs`, each file checked
    against its fingerprint; unchanged for a run without inputs.json. A file found only where the
    config and environment point now is used with a note on stderr; a changed or lost file is a DataError."""
    record = read_inputs(run_dir)
    if record is None:
        return config
    data, fed = config.data, config.federation
    for name, entry in record["inputs"].items():
        if name not in inputs or name not in INPUTS:
            continue
        path = locate(name, entry, config, run_dir)
        if name == "interactions" and data.data in MOVIELENS:
            if path.parent.name == data.data:  # <base>/ml-1m/ratings.dat: look there first
                data = dataclasses.replace(data, data_dir=str(path.parent.parent))
        elif name == "interactions":
            data = dataclasses.replace(data, data=str(path))
        elif name == "item_metadata":
            data = dataclasses.replace(data, item_metadata=str(path))
        elif name == "users_file":
            data = dataclasses.replace(data, users_file=str(path))
        elif name == "catalogue":
            data = dataclasses.replace(data, catalogue_path=str(path))
        elif name == "init_model":
            fed = dataclasses.replace(fed, init_model=str(path))
    return dataclasses.replace(config, data=data, federation=fed)


def locate(name: str, entry: dict, config: RunConfig, run_dir: Path) -> Path:
    """Where the input recorded as `entry` is now: its recorded path if the content is the same, else
    the file the config and environment point to if that one is the same."""
    what, recorded = INPUTS[name][0], Path(entry["path"])
    if recorded.is_file() and same_file(entry, fingerprint(recorded)):
        return recorded
    others = [path.resolve() for path in _configured(name, config) if path.resolve() != recorded]
    for candidate in others:
        if same_file(entry, fingerprint(candidate)):
            why = "changed" if recorded.is_file() else "is gone"
            print(
                f"fedseqrec: note: the {what} {recorded} that {run_dir} read {why}; using {candidate} "
                "(same size and sha256)",
                file=sys.stderr,
                flush=True,
            )
            return candidate
    then = f"{entry['size']:,} bytes, sha256 {entry['sha256'][:12]}... then"
    if recorded.is_file():
        found = fingerprint(recorded)
        raise DataError(
            f"{recorded}: the {what} changed since {run_dir} read it ({then}; {found['size']:,} bytes, sha256 "
            f"{found['sha256'][:12]}... now); restore it, or point {_where(name, config)} at a copy of what it read"
        )
    if others:
        found = fingerprint(others[0])
        raise DataError(
            f"{recorded}: the {what} that {run_dir} read is gone, and {others[0]} is not the same file ({then}; "
            f"{found['size']:,} bytes, sha256 {found['sha256'][:12]}... there); point {_where(name, config)} "
            "at a copy of what the run read"
        )
    raise DataError(
        f"{recorded}: the {what} that {run_dir} read is gone ({then}); put it back, or point "
        f"{_where(name, config)} at a copy"
    )


def _configured(name: str, config: RunConfig) -> list[Path]:
    """Where the config and the environment point for this input today (never a download)."""
    data = config.data
    candidates: list[Path] = []
    if name == "interactions" and data.data in MOVIELENS:
        try:
            candidates.append(resolve_interactions(data.data, data.data_dir, download=False))
        except DataError:
            pass
    elif name == "interactions":
        candidates.append(Path(data.data).expanduser())
    elif name == "item_metadata":
        if data.item_metadata:
            candidates.append(Path(data.item_metadata).expanduser())
        elif data.data in MOVIELENS:
            candidates += [base / data.data / MOVIELENS[data.data].items_file for base in search_dirs(data.data_dir)]
        else:
            candidates.append(Path(data.data).expanduser())
    elif name == "users_file":
        if data.users_file:
            candidates.append(Path(data.users_file).expanduser())
        elif data.data == "ml-1m":
            candidates += [base / "ml-1m" / "users.dat" for base in search_dirs(data.data_dir)]
    elif name == "init_model" and config.federation.init_model:
        candidates.append(Path(config.federation.init_model).expanduser())
    elif name == "catalogue" and data.catalogue_path:
        candidates.append(Path(data.catalogue_path).expanduser())
    return [path for path in candidates if path.is_file()]


def _where(name: str, config: RunConfig) -> str:
    if name == "interactions" and config.data.data in MOVIELENS:
        return "data-dir or $FEDSEQREC_DATA_DIR"
    return f"'{INPUTS[name][1]}'"


def _changed(name: str, entry: dict, found: dict, run_dir: Path, config: RunConfig) -> str:
    return (
        f"{found['path']}: the {INPUTS[name][0]} changed since {run_dir} read it ({entry['size']:,} bytes, sha256 "
        f"{entry['sha256'][:12]}... then; {found['size']:,} bytes, sha256 {found['sha256'][:12]}... now); "
        f"restore it, or point {_where(name, config)} at a copy of what the run read"
    )
