"""Output folders that are checked before any work and never left half-written.

`check_output_dir` fails fast (before data is loaded or a model trained) when a folder cannot be
created: a file in the way, a parent that is not a folder, no write permission. `staged_output`
writes a command's files into a hidden sibling folder and moves them into place only when all of
them are written, so a command that fails part-way (bad input found late, a full disk) leaves the
output folder as it was, or not there at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common.errors import OutputError


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_output_dir(path: Path, flag: str) -> None:
    """Raise OutputError if `path` (given as `flag`) cannot become an output folder; creates nothing."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{flag} {path}: is a file, not a folder; pass a folder path or move the file away")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {path}: folder is not writable; pass a folder you can write to")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(
            f"{flag} {path}: {parent} is a file, so the folder cannot be created; pass another path or move the file"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: cannot create it, {parent} is not writable; pass a folder you can write to")


def make_output_dir(path: Path, flag: str) -> Path:
    """mkdir -p with an OutputError (naming the flag) instead of an OSError."""
    check_output_dir(path, flag)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{flag} {path}: cannot create the folder ({_reason(exc)}); pass a folder you can write to"
        ) from exc
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextlib.contextmanager
def staged_output(path: Path, flag: str) -> Iterator[Path]:
    """Yield a private folder to write into; on success move its files into `path`, on any error
    delete it and leave `path` as it was (absent, with no new parent folders, if it was absent)."""
    path = Path(path)
    check_output_dir(path, flag)
    existed = path.exists()
    try:  # staged on the same file system as `path`, so that the final moves are renames
        stage = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path if existed else _existing_ancestor(path))
        )
    except OSError as exc:
        raise OutputError(
            f"{flag} {path}: cannot write there ({_reason(exc)}); pass a folder you can write to"
        ) from exc
    try:
        yield stage
        if existed:
            for item in sorted(stage.iterdir()):
                os.replace(item, path / item.name)  # each file replaced whole
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            stage.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the folder private
            os.replace(stage, path)  # one rename: the folder appears complete or not at all
    except OSError as exc:
        raise OutputError(f"{flag} {path}: writing failed ({_reason(exc)}); nothing was changed there") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
