"""Every case of the bad-input corpus (tests/bad_input_corpus.py) gives one line naming the input and
what to do, exit code 2, no traceback, and leaves its folder and output path as they were."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedseqrec.cli import main
from tests.bad_input_corpus import CASES, DOC, build_assets, run_case


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path_factory.getbasetemp() / "bad-input-cache"))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under the folder with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_the_corpus_covers_every_kind_of_input():
    kinds = {case.input for case in CASES}
    assert len(CASES) >= 30 and len(kinds) == 8
    assert len({case.id for case in CASES}) == len(CASES)  # ids are unique: the docs name cases by id


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line_and_writes_nothing(case, assets, tmp_path, capsys):
    folder = tmp_path / "case"
    folder.mkdir()
    argv = case.build(folder, assets)  # built once here to snapshot what the case left
    before = snapshot(folder)
    out = None if case.out is None else (folder / case.out if not Path(case.out).is_absolute() else Path(case.out))
    out_existed = out is not None and out.exists()

    code = main(argv)
    err = capsys.readouterr().err

    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fedseqrec: error: ")
    assert case.expect.replace("<dir>", str(folder)) in lines[0], lines[0]
    assert snapshot(folder) == before  # nothing written, nothing half-written, nothing removed
    if out is not None and not out_existed:
        assert not out.exists()


def test_run_case_helper_agrees(assets, tmp_path):
    """The docs are generated through run_case: it runs a case exactly as the test above does."""
    case = next(c for c in CASES if c.id == "toml-unknown-key")
    code, err = run_case(case, tmp_path, assets)
    assert code == 2 and case.expect in err


def test_the_docs_list_every_case_with_its_message():
    doc = DOC.read_text()
    for case in CASES:
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{case.id}` |")), None)
        assert row is not None, f"{case.id} missing from {DOC}; run python -m tests.bad_input_corpus"
        assert case.expect.replace("|", "\\|") in row, f"{case.id}: the docs show an older message"
