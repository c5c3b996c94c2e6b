"""`stage_app`: `flwr run` on the staged folder packs the same FAB as on the project, byte for byte,
and the staging never enters the folders Flower's rules exclude whole."""

from __future__ import annotations

import os
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from fedseqrec.launch import app_files
from fedseqrec.launch.app_files import stage_app

PROJECT_DIR = Path(__file__).resolve().parents[2]

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinyapp"
version = "1.0.0"
dependencies = ["flwr"]

[tool.flwr.app]
publisher = "tester"
fab-exclude = ["docs/**", ".gitignore"]

[tool.flwr.app.components]
serverapp = "tinyapp.server:app"
clientapp = "tinyapp.client:app"

[tool.flwr.app.config]
rounds = 1
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tiny_project(root: Path) -> Path:
    project = root / "tinyapp"
    _write(project / "pyproject.toml", PYPROJECT)
    _write(project / ".gitignore", ".venv/\n__pycache__/\nruns/\n*.pyc\n")
    _write(project / "tinyapp" / "server.py", "app = None\n")
    _write(project / "tinyapp" / "client.py", "app = None\n")
    _write(project / "tinyapp" / "config.json", "{}\n")
    _write(project / "tinyapp" / "__pycache__" / "server.cpython-311.pyc", "bytes")
    _write(project / "docs" / "guide.md", "# excluded by fab-exclude, kept for Flower's pattern check\n")
    _write(project / "notes.txt", "not a kind Flower packs\n")
    _write(project / "runs" / "old" / "result.json", "{}\n")
    for i in range(5):
        _write(project / ".venv" / "lib" / f"pkg{i}" / "__init__.py", "x = 1\n")
    os.symlink(project / "tinyapp" / "server.py", project / "tinyapp" / "linked.py")  # Flower skips links
    return project


def test_the_staged_folder_packs_the_projects_own_fab(tmp_path):
    """The real project, with its .venv/ inside (as in CI): the same bytes as Flower's own build."""
    staged = stage_app(PROJECT_DIR, tmp_path)
    assert staged == tmp_path / PROJECT_DIR.name
    assert not (staged / ".venv").exists() and (staged / "server" / "app.py").exists()
    assert build_fab_from_disk(staged) == build_fab_from_disk(PROJECT_DIR)


def test_excluded_folders_are_never_entered_and_the_fab_is_unchanged(tmp_path, monkeypatch):
    project = _tiny_project(tmp_path)
    entered: list[str] = []
    walk = os.walk

    def recording_walk(top, **kwargs):
        for folder, subfolders, names in walk(top, **kwargs):
            entered.append(Path(folder).relative_to(project).as_posix())
            yield folder, subfolders, names

    monkeypatch.setattr(app_files.os, "walk", recording_walk)
    staged = stage_app(project, tmp_path / "staged")
    monkeypatch.undo()  # Flower's own build below walks too
    assert sorted(entered) == [".", "docs", "tinyapp"]  # not .venv/, runs/ or __pycache__/
    assert build_fab_from_disk(staged) == build_fab_from_disk(project)
    assert (staged / "docs" / "guide.md").exists()  # Flower checks that each fab-exclude pattern matches
    assert not (staged / "tinyapp" / "linked.py").exists() and not (staged / "notes.txt").exists()


def test_a_negation_in_gitignore_enters_every_folder(tmp_path):
    """`!pattern` can take a file back from an excluded folder: nothing is skipped unseen."""
    project = _tiny_project(tmp_path)
    _write(project / ".gitignore", "runs/*\n!runs/keep.json\n.venv/\n")
    _write(project / "runs" / "keep.json", "{}\n")
    staged = stage_app(project, tmp_path / "staged")
    assert build_fab_from_disk(staged) == build_fab_from_disk(project)


def test_staging_again_replaces_the_previous_copy(tmp_path):
    project = _tiny_project(tmp_path)
    staged = stage_app(project, tmp_path / "staged")
    (project / "tinyapp" / "config.json").unlink()
    staged = stage_app(project, tmp_path / "staged")
    assert not (staged / "tinyapp" / "config.json").exists()
    assert build_fab_from_disk(staged) == build_fab_from_disk(project)
