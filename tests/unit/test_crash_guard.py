"""The last guard: an unexpected exception in any command is one line naming the traceback file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fedseqrec.cli as cli
from fedseqrec.crash import CRASH_EXIT


def _boom(args):
    raise ZeroDivisionError("injected fault " + "x" * 5000)


@pytest.mark.parametrize("command", ["config", "train"])
def test_an_unexpected_exception_is_one_line_and_a_traceback_file(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, f"_cmd_{command}", _boom)
    argv = [command] + (["--out", str(tmp_path / "out")] if command == "train" else [])

    code = cli.main(argv)

    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == CRASH_EXIT and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"fedseqrec: internal error: `fedseqrec {command}` failed with ZeroDivisionError")
    assert len(lines[0]) <= 600  # the 5,000-character message is cut
    path = Path(re.search(r"the full traceback is in (\S+);", lines[0]).group(1))
    assert path.parent == tmp_path / "cache" / "errors"
    text = path.read_text()
    assert "Traceback" in text and "injected fault" in text and "_boom" in text and command in text.splitlines()[0]
    assert not (tmp_path / "out").exists()  # nothing written where the command would have written


def test_the_traceback_goes_elsewhere_when_the_cache_cannot_be_written(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("FEDSEQREC_CACHE", str(blocker))
    monkeypatch.setattr(cli, "_cmd_config", _boom)

    assert cli.main(["config"]) == CRASH_EXIT

    line = capsys.readouterr().err.strip()
    path = Path(re.search(r"the full traceback is in (\S+);", line).group(1))
    assert path.is_file() and "fedseqrec-errors" in str(path)
    path.unlink()


def test_bad_input_is_still_exit_2_not_the_guard(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    assert cli.main(["recommend", "--model", str(tmp_path / "none"), "--history", "x"]) == 2
    assert not (tmp_path / "cache" / "errors").exists()
