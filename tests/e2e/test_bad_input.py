"""Every case of the bad-input corpus (tests/bad_input_corpus.py) gives one line naming the input and
what to do, exit code 2, no traceback, and leaves its folder and output path as they were."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.bad_input_corpus import CASES, build_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_assets(tmp_path_factory.mktemp("assets"))


@pytest.mark.parametrize("case_id", ["cli-negative-k", "cli-out-is-a-file"])
def test_a_real_process_exits_2_with_one_line(case_id, assets, tmp_path):
    """The console script as a user runs it: the exit status and stderr of a real process."""
    case = next(c for c in CASES if c.id == case_id)
    argv = case.build(tmp_path, assets)
    done = subprocess.run([sys.executable, "-m", "fedseqrec.cli", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedseqrec: error: ") and case.expect in lines[0], done.stderr
