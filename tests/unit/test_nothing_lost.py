"""Nothing lost: a command that fails part-way through writing leaves its inputs untouched and its
output folder complete or absent (partition, export, ensemble, personalize write into a hidden
staging folder and rename it at the end; report writes a temporary file and renames it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import client.personalize
import fedseqrec.ensemble
from common.model import export as export_module
from fedseqrec.cli import main
from fedseqrec.crash import CRASH_EXIT
from tests.bad_input_corpus import build_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("nothing-lost"))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def history(tmp_path: Path, assets) -> Path:
    """One user's rows of the run's own training data: items the model knows."""
    header, *rows = assets.csv.read_text().splitlines()
    first = rows[0].split(",")[0]
    path = tmp_path.parent / f"{tmp_path.name}-history.csv"  # beside tmp_path: the tests list tmp_path
    path.write_text("\n".join([header, *[r for r in rows if r.split(",")[0] == first]]) + "\n")
    return path


def _fail_after_writing(original, error: Exception):
    """Wrap a writer: it writes its file, then the next step fails (a full disk, a bug)."""

    def wrapped(*args, **kwargs):
        original(*args, **kwargs)
        raise error

    return wrapped


@pytest.mark.parametrize("existed", [False, True])
def test_personalize_failing_mid_write_leaves_out_as_it_was(assets, tmp_path, monkeypatch, capsys, existed):
    out = tmp_path / "out"
    if existed:
        out.mkdir()
        (out / "model.pt").write_text("the previous personalised model")
    before_out, before_run = (snapshot(out) if existed else None), snapshot(assets.trained)
    monkeypatch.setattr(
        client.personalize, "_record_inputs", _fail_after_writing(lambda *a: None, OSError(28, "No space left"))
    )

    code = main(
        [
            "personalize",
            str(assets.trained),
            "--history",
            str(history(tmp_path, assets)),
            "--out",
            str(out),
            "--steps",
            "1",
        ]
    )

    err = capsys.readouterr().err.strip()
    assert code == 2 and "writing failed (No space left); nothing was changed there" in err, err
    assert (snapshot(out) == before_out) if existed else not out.exists()
    assert snapshot(assets.trained) == before_run  # the input run is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_ensemble_with_a_bug_mid_export_leaves_no_folder(assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(
        fedseqrec.ensemble, "export_ensemble", _fail_after_writing(lambda *a: None, RuntimeError("injected"))
    )
    code = main(["ensemble", str(assets.trained), str(assets.trained), "--out", str(out), "--export"])
    err = capsys.readouterr().err.strip()
    assert code == CRASH_EXIT and "internal error" in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_ensemble_written_whole_points_at_its_final_folder(assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ensemble", str(assets.trained), str(assets.trained), "--out", str(out)]) == 0
    report = json.loads((out / "ensemble.json").read_text())
    assert report["members"] and ".staging-" not in json.dumps(report)


def test_export_failing_mid_write_keeps_the_previous_export(assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["export", str(assets.trained), "--out", str(out)]) == 0
    before = snapshot(out)
    monkeypatch.setattr(export_module, "verify_export", _fail_after_writing(lambda *a: None, OSError(5, "I/O error")))
    code = main(["export", str(assets.trained), "--out", str(out)])
    assert code == 2 and "nothing was changed there" in capsys.readouterr().err
    assert snapshot(out) == before


def test_report_failing_mid_write_leaves_no_file(assets, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report.html"
    original = Path.write_text

    def failing(self, *args, **kwargs):
        if self.parent == tmp_path:
            original(self, "<html>half", encoding="utf-8")
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing)
    code = main(["report", str(assets.trained), "--out", str(out)])
    assert code == 2 and "cannot write the report (No space left on device)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
