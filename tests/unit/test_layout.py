"""The line between the quick loop and the end-to-end tests holds (tests/conftest.py): every test file
is in tests/unit/ or tests/e2e/, tests/e2e/ is slow by its folder, and a fast test that starts Flower
fails where it starts it."""

import subprocess
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_file_is_in_unit_or_e2e():
    loose = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not loose, f"move {loose} to tests/unit/ (fast) or tests/e2e/ (starts Flower or a simulation)"


def test_end_to_end_tests_are_slow_and_no_fast_test_is(request):
    for item in request.session.items:
        in_e2e = (TESTS / "e2e") in Path(item.path).resolve().parents
        assert (item.get_closest_marker("slow") is not None) == in_e2e, item.nodeid


@pytest.mark.parametrize("program", ["flower-superlink", "flwr", "sim_runner.py", "raylet"])
def test_a_fast_test_that_starts_flower_fails_at_once(tmp_path, program):
    missing = tmp_path / program  # never runs, even if the check were gone: the file does not exist
    with pytest.raises(RuntimeError, match=f"starts {program}: .* belongs in tests/e2e/"):
        subprocess.Popen([str(missing), "--help"])


def test_a_fast_test_that_starts_a_simulated_run_fails_at_once(tmp_path):
    from tests.conftest import _start

    # a run forked from the tests' fork server passes no `subprocess` audit event: `_start` checks
    with pytest.raises(RuntimeError, match="starts sim_runner.py: .* belongs in tests/e2e/"):
        _start({}, tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before anything started


def test_a_fast_test_may_start_other_processes(tmp_path):
    done = subprocess.run(["python3", "-c", "print('ok')"], capture_output=True, text=True, check=True)
    assert done.stdout == "ok\n"


def test_no_folder_holds_more_than_fifteen_modules_side_by_side():
    """The layout shows the architecture: a folder that grows past ~15 modules wants a subfolder by stage."""
    root = TESTS.parent
    crowded = {
        str(folder.relative_to(root)): count
        for top in ("common", "server", "client", "fedseqrec", "simulations")
        for folder in [root / top, *(p for p in (root / top).rglob("*") if p.is_dir())]
        if (count := len([m for m in folder.glob("*.py") if m.name != "__init__.py"])) > 15
    }
    assert not crowded, f"group these folders' modules by stage into subfolders: {crowded}"
