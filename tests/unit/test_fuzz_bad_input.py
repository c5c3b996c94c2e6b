"""A fuzzer for bad input (Hypothesis): what a list of cases does not think of.

Two drivers run `fedseqrec.cli.main` in this process (fast; no subprocess per example):
- `test_bad_arguments`: every command with one number or path argument replaced by a generated value
  outside its domain (huge, negative, nan/inf, text, empty, NUL bytes, very long, a file where a
  folder is meant);
- `test_mutated_files`: a good file the project reads (a run folder's JSON, an export's items.json,
  a catalogue, a history CSV, a run-config TOML) cut short, re-encoded, replaced by another JSON type,
  given a duplicated key, a field set to an extreme value, or nested deeply; then the command that
  reads it.
Each example must end with: no exception out of main, no traceback and no internal-error line, at
most a few short stderr lines, a non-zero exit for a refused argument, and no output folder left
behind by a failed command. The CI budget is fixed and derandomized (same examples every run); set
FEDSEQREC_FUZZ_EXAMPLES=500 (say) for a longer hunt. Every failure found becomes a named case of
tests/bad_input_corpus.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedseqrec.cli import main
from fedseqrec.crash import CRASH_EXIT
from tests.bad_input_corpus import build_assets

EXAMPLES = int(os.environ.get("FEDSEQREC_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_LINES, MAX_WIDTH = 3, 600


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    os.environ.setdefault("FEDSEQREC_CACHE", str(tmp_path_factory.getbasetemp() / "fuzz-cache"))
    return build_assets(tmp_path_factory.mktemp("fuzz-assets"))


def run(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def check_contract(code: int, lines: list[str], argv: list[str], out: Path | None, must_fail: bool) -> None:
    shown = f"{[a[:60] for a in argv]} -> {code}: {lines}"
    assert code != CRASH_EXIT and not any("Traceback" in line for line in lines), shown
    assert len(lines) <= MAX_LINES and all(len(line) <= MAX_WIDTH for line in lines), shown
    if must_fail:
        assert code != 0, shown
    if code != 0 and out is not None:
        assert not os.path.exists(out), f"{shown}: a failed command left {out}"


# --- bad arguments ------------------------------------------------------------------------------------

NUMBER_FLAGS = {  # command -> its number flags (each declared with a domain in fedseqrec/cli.py)
    "personalize": ["--steps", "--lr", "--seed", "--noise-multiplier", "--max-epsilon", "--user"],
    "recommend": ["-k", "--user", "--explain", "--rerank-lambda", "--rerank-candidates", "--threads"],
    "ensemble": ["--top-k"],
    "audit": ["--users", "--canary-guesses", "--leakage-users"],
    "tune": ["--trials", "--prune-after", "--timeout"],
    "partition": ["--nodes"],
    "federate": ["--cpus-per-client"],
    "train": ["--lr", "--seed", "--epochs", "--dropout", "--batch-size", "--max-len", "--emb-dim"],
    "plan-privacy": ["--population", "--cohort", "--rounds", "--epsilon", "--delta"],
}
PATH_FLAGS = {  # command -> (flag, "in" for a path read, "out" for a folder written)
    "personalize": [("RUN_DIR", "in"), ("--history", "in"), ("--out", "out"), ("--state-dir", "out")],
    "recommend": [("--model", "in"), ("--history", "in"), ("--items-file", "in")],
    "ensemble": [("RUN_DIR", "in"), ("--out", "out")],
    "audit": [("RUN_DIR", "in")],
    "export": [("RUN_DIR", "in"), ("--out", "out")],
    "report": [("RUN_DIR", "in")],
    "tune": [("--out", "out")],
    "partition": [("--out", "out")],
    "train": [("--out", "out")],
    "check-device": [("--run-config", "in")],
}

huge_int = st.integers(min_value=10**13, max_value=10**40).map(str)
negative = st.integers(max_value=-(10**7)).map(str)
not_finite = st.sampled_from(["nan", "inf", "-inf", "NaN", "1e400", "-1e400", "Infinity"])
junk = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=0, max_size=30).filter(
    lambda t: not _parses_as_number(t)
)
very_long = st.integers(min_value=200, max_value=20_000).map(lambda n: "9" * n)
BAD_NUMBER = st.one_of(huge_int, negative, not_finite, junk, very_long)


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def base_argv(command: str, tmp: Path, assets) -> tuple[list[str], Path | None]:
    """A good command line (the one replaced value makes it bad), and its output folder."""
    history = tmp / "history.csv"
    history.write_text("user_id,item_id,timestamp\n1,100,1\n1,101,2\n1,102,3\n1,103,4\n")
    toml = tmp / "tune.toml"
    toml.write_text('data = "synthetic"\nepochs = 1\n[search]\nlr = { low = 1e-3, high = 3e-2 }\n')
    out = tmp / "out"
    trained, csv = str(assets.trained), str(assets.csv)
    argv = {
        "personalize": ["personalize", trained, "--history", str(history), "--out", str(out), "--steps", "1"],
        "recommend": ["recommend", "--model", str(assets.export), "--history", str(history)],
        "ensemble": ["ensemble", trained, trained, "--out", str(out)],
        "audit": ["audit", trained, "--users", "5", "--leakage-users", "0"],
        "export": ["export", trained, "--out", str(out)],
        "report": ["report", trained, "--out", str(tmp / "report.html")],
        "tune": ["tune", "--config", str(toml), "--out", str(out), "--trials", "1"],
        "partition": ["partition", "--data", csv, "--nodes", "2", "--out", str(out)],
        "federate": ["federate", "--out-dir", str(out)],
        "train": ["train", "--quiet", "--data", csv, "--epochs", "1", "--out", str(out)],
        "check-device": ["check-device", "--node-config", "client-id=1"],
        "plan-privacy": ["plan-privacy", "--population", "1000", "--cohort", "10", "--rounds", "5", "--epsilon", "2"],
    }[command]
    return argv, (None if command in ("recommend", "audit", "check-device", "plan-privacy") else out)


def with_value(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with `flag`'s value set (added when absent); RUN_DIR: the first positional after the command."""
    argv = list(argv)
    if flag == "RUN_DIR":
        argv[1] = value
    elif flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def bad_path(kind: str, tmp: Path) -> st.SearchStrategy[str]:
    a_file = tmp / "a-file.txt"
    a_file.write_text("not what was asked for\n")
    common = [
        st.just(""),
        st.just(str(tmp / "with\0nul")),
        st.integers(min_value=256, max_value=5000).map(lambda n: str(tmp / ("p" * n))),
        st.just(str(a_file / "below-a-file")),
    ]
    if kind == "in":
        return st.one_of(*common, st.just(str(tmp / "does-not-exist")), st.just(str(tmp / "empty-dir")))
    return st.one_of(*common, st.just(str(a_file)))


@settings(FUZZ, max_examples=EXAMPLES or 150)
@given(data=st.data())
def test_bad_arguments(assets, data):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-args-"))
    try:
        (tmp / "empty-dir").mkdir()
        if data.draw(st.booleans(), label="number or path"):
            command = data.draw(st.sampled_from(sorted(NUMBER_FLAGS)), label="command")
            flag = data.draw(st.sampled_from(NUMBER_FLAGS[command]), label="flag")
            value = data.draw(BAD_NUMBER, label="value")
            must_fail = not (flag == "--user" and value.lstrip("-").isdigit() and len(value) < 19)
        else:
            command = data.draw(st.sampled_from(sorted(PATH_FLAGS)), label="command")
            flag, kind = data.draw(st.sampled_from(PATH_FLAGS[command]), label="flag")
            value = data.draw(bad_path(kind, tmp), label="value")
            must_fail = not (flag == "--state-dir" and value == "")  # no DP: the state dir is not read
        argv, out = base_argv(command, tmp, assets)
        argv = with_value(argv, flag, value)
        if flag == "--out" and value and "\0" not in value:
            out = None if os.path.exists(value) else Path(value)  # os.path: False for a name too long
        code, lines = run(argv)
        check_contract(code, lines, argv, out, must_fail)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- mutated files ------------------------------------------------------------------------------------

TARGETS = {  # a file the project reads -> the command that reads it first
    "trained/config.json": "report",
    "trained/metrics.json": "report",
    "trained/metrics.jsonl": "report",
    "trained/inputs.json": "ensemble",
    "trained/privacy.json": "export",
    "export/items.json": "recommend",
    "export/item_vectors.npy": "recommend",  # read by mmr re-ranking
    "catalogue.json": "check-device",
    "history.csv": "recommend",
    "run.toml": "train",
}
EXTREMES = [10**30, -(10**30), 1e308, -1, 0, "", "x" * 5000, None, [], {}, [[[[[[]]]]]], True, "NaN"]


def mutations(raw: bytes) -> st.SearchStrategy[bytes]:
    text = raw.decode("utf-8", errors="replace")
    cut = st.integers(min_value=0, max_value=max(0, len(raw) - 1)).map(lambda n: raw[:n])
    encodings = st.sampled_from(["utf-16", "latin-1", "cp1252"]).map(lambda e: (text + "é").encode(e, errors="replace"))
    other_json = st.sampled_from(["[]", "[1, 2]", '"text"', "3", "null", "true", "{}"]).map(str.encode)
    nested = st.integers(min_value=50, max_value=200_000).map(lambda n: b"[" * n + b"]" * n)
    garbage = st.binary(min_size=1, max_size=200)
    strategies = [cut, encodings, other_json, nested, garbage]
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict) and value:
        keys = sorted(value)

        def set_field(pair):
            key, extreme = pair
            return json.dumps({**value, key: extreme}).encode()

        def duplicate(key):
            body = json.dumps(value)
            return (body[:-1] + f", {json.dumps(key)}: 1" + "}").encode()

        strategies.append(st.tuples(st.sampled_from(keys), st.sampled_from(EXTREMES)).map(set_field))
        strategies.append(st.sampled_from(keys).map(duplicate))
    return st.one_of(*strategies)


def target_files(tmp: Path, assets) -> dict[str, Path]:
    """Copies of good inputs under tmp (the run and export folders copied whole)."""
    shutil.copytree(assets.trained, tmp / "trained")
    shutil.copytree(assets.export, tmp / "export")
    (tmp / "trained" / "privacy.json").write_text(
        json.dumps({"dp_mode": "server", "unit_of_privacy": "user", "delta": 1e-5, "epsilon": 1.0})
    )
    (tmp / "catalogue.json").write_text(json.dumps(assets.item_ids))
    (tmp / "history.csv").write_text("user_id,item_id,timestamp\n1,100,1\n1,101,2\n1,102,3\n")
    (tmp / "run.toml").write_text('model = "gru"\nemb-dim = 8\nhidden-dim = 8\nnum-layers = 1\nmax-len = 8\n')
    (tmp / "device.csv").write_text("user_id,item_id,timestamp\n7,100,1\n7,101,2\n7,102,3\n7,103,4\n")
    return {name: tmp / name for name in TARGETS}


def command_for(name: str, tmp: Path, assets) -> tuple[list[str], Path | None]:
    out = tmp / "out"
    command = TARGETS[name]
    if command == "report":
        return ["report", str(tmp / "trained"), "--out", str(tmp / "report.html")], tmp / "report.html"
    if command == "ensemble":
        return ["ensemble", str(tmp / "trained"), str(assets.trained), "--out", str(out)], out
    if command == "export":
        return ["export", str(tmp / "trained"), "--out", str(out)], out
    if command == "recommend":
        rerank = ["--rerank", "mmr"] if name.endswith(".npy") else []
        return ["recommend", "--model", str(tmp / "export"), "--history", str(tmp / "history.csv"), *rerank], None
    if command == "check-device":
        node = f'data-path="{tmp / "device.csv"}" catalogue-path="{tmp / "catalogue.json"}" client-id=1'
        return ["check-device", "--node-config", node], None
    return ["train", "--quiet", "--data", str(assets.csv), "--epochs", "1", "--config", str(tmp / "run.toml"),
            "--out", str(out)], out  # fmt: skip


@settings(FUZZ, max_examples=EXAMPLES or 150)
@given(data=st.data())
def test_mutated_files(assets, data):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-files-"))
    try:
        files = target_files(tmp, assets)
        name = data.draw(st.sampled_from(sorted(TARGETS)), label="file")
        content = data.draw(mutations(files[name].read_bytes()), label="content")
        files[name].write_bytes(content)
        argv, out = command_for(name, tmp, assets)
        before = {p: p.read_bytes() for p in files.values() if p.is_file()}
        code, lines = run(argv)
        check_contract(code, lines, argv, out, must_fail=False)
        assert {p: p.read_bytes() for p in files.values() if p.is_file()} == before  # inputs untouched
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
