"""The app's own files, staged in a folder for `flwr run`: the same FAB, without walking the checkout.

`flwr run <dir>` lists every file under <dir> before it filters them (Flower 1.42's
`collect_files`): in a checkout with its virtual environment inside, ~49,000 files and ~3 s of
every run, for the ~180 files the FAB holds. `stage_app` lists the project the way Flower filters
it, but never enters a folder that those rules exclude whole (`.venv/`, `__pycache__/`, `runs/`),
and copies what Flower would pack into a folder of its own; `flwr run` on that folder builds the
same FAB, byte for byte (tests/unit/test_app_files.py compares the two).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

# Files of every kind Flower packs, to ask of a folder whether the rules exclude all of it.
_PROBES = ("probe.py", "probe.toml", "probe.json", "probe.md")


def _excluded_folders(project: Path):
    """A test `folder_path -> bool`: True where Flower's rules exclude every file below the folder."""
    from flwr.cli.utils import build_pathspec, load_gitignore_patterns
    from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS

    gitignore = project / ".gitignore"
    patterns = tuple(load_gitignore_patterns(gitignore.read_bytes() if gitignore.exists() else b""))
    if any(p.lstrip().startswith("!") for p in patterns):  # a negation may take a file back: enter everything
        return lambda folder: False
    spec = build_pathspec((*patterns, *APP_PUBLISH_EXCLUDE_PATTERNS))
    return lambda folder: spec.match_file(f"{folder}/") and all(spec.match_file(f"{folder}/{p}") for p in _PROBES)


def app_files(project: Path) -> dict[str, Path]:
    """What `flwr run project` packs: relative POSIX path -> file, filtered by Flower's own rules."""
    project = Path(project).resolve()
    with warnings.catch_warnings():  # Flower's pathspec calls use a pattern name pathspec deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        return _app_files(project)


def _app_files(project: Path) -> dict[str, Path]:
    from flwr.cli.utils import filter_paths_for_publish

    excluded = _excluded_folders(project)
    files: dict[str, Path] = {}
    for folder, subfolders, names in os.walk(project, followlinks=False):
        relative = Path(folder).relative_to(project)
        subfolders[:] = [s for s in subfolders if not excluded((relative / s).as_posix())]
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():  # Flower skips symbolic links
                files[(relative / name).as_posix()] = path
    return {key: value for key, value in filter_paths_for_publish(files).items() if isinstance(value, Path)}


def stage_app(project: Path, into: Path) -> Path:
    """Copy the app's files into `into/<project's name>` (emptied first) and return that folder."""
    project = Path(project).resolve()
    staged = Path(into) / project.name
    if staged.exists():
        shutil.rmtree(staged)
    for relative, source in app_files(project).items():
        target = staged / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return staged
