"""Every numeric run-config key and every command's number and path argument has a declared domain,
checked before any work: a value outside it is one line quoting a short prefix of it."""

from __future__ import annotations

import math

import pytest

from common.config import RunConfig
from common.config_domains import DOMAINS
from common.errors import ConfigError, FedSeqRecError
from fedseqrec.cli import build_parser


def numeric_keys():
    return [key for key, (_, f) in RunConfig.keys().items() if str(f.type) in ("int", "float")]


def test_every_numeric_key_has_a_domain_holding_its_default():
    known = RunConfig.keys()
    assert set(numeric_keys()) == set(DOMAINS)  # none left unbounded, none stale
    for key, (low, high) in DOMAINS.items():
        assert low <= known[key][1].default <= high, key


@pytest.mark.parametrize("key", numeric_keys())
def test_values_beyond_the_domain_are_refused_with_a_short_line(key):
    low, high = DOMAINS[key]
    kind = str(RunConfig.keys()[key][1].type)
    for value in (low - 1, high * 10 + 1) + ((math.inf, math.nan) if kind == "float" else (2**80,)):
        with pytest.raises(ConfigError) as refused:
            RunConfig.from_flat({key: value})
        message = str(refused.value)
        assert f"'{key}'" in message and len(message) < 200, message


def test_one_column_for_two_roles_is_refused():
    with pytest.raises(ConfigError, match="user-col and item-col both name column 'item_id'"):
        RunConfig.from_flat({"user-col": "item_id"})
    RunConfig.from_flat({"user-col": "uid", "item-col": "user_id"})  # a swap of names is fine


def test_a_huge_refused_value_is_quoted_by_a_prefix():
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_flat({"lr": "x" * 10_000})
    assert len(str(refused.value)) < 120


def _number_actions():
    parser = build_parser()
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            yield command, action


def test_every_number_and_path_argument_of_every_command_is_typed():
    """A plain int/float (no range) or an untyped path would accept what the command then chokes on."""
    untyped = []
    for command, action in _number_actions():
        if action.type in (int, float):
            untyped.append(f"{command} {action.dest}")
        is_path = action.dest in ("out", "run_dir", "run_dirs", "history", "model", "items_file", "state_dir")
        if is_path and action.type is None and command not in ("report",):
            untyped.append(f"{command} {action.dest}")
    assert untyped == []


@pytest.mark.parametrize(
    "argv, expect",
    [
        (
            ["recommend", "--model", "tests", "--history", "pyproject.toml", "-k", "nan"],
            "expected an integer in [1, 1000000]",
        ),
        (["personalize", "tests", "--history", "pyproject.toml", "--out", "{tmp}/o", "--lr", "inf"], "--lr"),
        (["tune", "--out", "o", "--timeout", "-1"], "--timeout"),
        (
            ["tune", "--out", "o", "--study-name", "x" * 500],
            "--study-name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'",
        ),
        (["export", "r\0x", "--out", "o"], "a path cannot hold a NUL byte"),
        (["export", "a" * 300, "--out", "o"], "path too long"),
    ],
)
def test_arguments_are_refused_while_parsing(argv, expect, capsys, tmp_path):
    from fedseqrec.cli import main

    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expect in err and len(err) < 300, err


def test_path_types_name_the_flag(tmp_path):
    from fedseqrec.arg_types import existing_file, output_dir, run_dir

    (tmp_path / "f").write_text("x")
    with pytest.raises(FedSeqRecError, match="--out .*: is a file, not a folder"):
        output_dir("--out")(str(tmp_path / "f"))
    with pytest.raises(FedSeqRecError, match="RUN_DIR .*: is a file, not a folder"):
        run_dir()(str(tmp_path / "f"))
    with pytest.raises(FedSeqRecError, match="--history .*: is a folder"):
        existing_file("--history")(str(tmp_path))
    assert output_dir("--out")(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # checking creates nothing
