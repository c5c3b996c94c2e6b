"""The bad-input corpus: files, flags and folders a user can get wrong, and the one line each must give.

Each case writes its bad input into an empty folder and returns the `fedseqrec` command line that
reads it. `tests/unit/test_bad_input.py` runs every case through `fedseqrec.cli.main` and checks the
contract: exit code 2, exactly one stderr line `fedseqrec: error: ...` containing `expect`, no
traceback, and the folder (with any output path in it) exactly as the case left it.
`docs/bad-input.md` lists the corpus; regenerate its table with `python -m tests.bad_input_corpus`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEADER = "user_id,item_id,timestamp\n"
DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


@dataclass(frozen=True)
class Assets:
    """Good inputs, made once, that cases copy and break."""

    csv: Path  # interactions of 30 users (user_id,item_id,timestamp)
    export: Path  # a folder written by `fedseqrec export`: model.onnx, items.json, metadata.json
    item_ids: list[int]  # the exported model's original item IDs (index 0 = padding)
    trained: Path  # a finished `fedseqrec train` run folder (model.pt, config.json, metrics.json, inputs.json)


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # the kind of input, as the docs group them
    wrong: str  # what is wrong with it
    todo: str  # what the user should do
    build: Callable[[Path, Assets], list[str]]  # writes the bad input under the folder, returns argv
    expect: str  # the error line contains this (`<dir>`: the case's folder)
    out: str | None = None  # the output path the command would write (absolute, or relative to the folder)


def build_assets(root: Path) -> Assets:
    """A tiny interactions file and a tiny exported GRU (a few seconds: ONNX export and check)."""
    import numpy as np
    import torch

    from common.data.synthetic import synthetic_interactions
    from common.model.checkpoint import save_model
    from common.model.export import export_run
    from common.model.models import ModelConfig, build_model

    root.mkdir(parents=True, exist_ok=True)
    csv = root / "interactions.csv"
    synthetic_interactions(30, 15, mean_length=8, seed=2).to_csv(csv, index=False)
    torch.manual_seed(0)
    item_ids = [-1] + [100 + i for i in range(12)]
    model = build_model(ModelConfig(arch="gru", num_items=12, max_len=6, emb_dim=8, hidden_dim=8, num_layers=1))
    save_model(root / "run" / "model.pt", model.eval(), np.asarray(item_ids))
    export_run(root / "run", root / "export", item_counts=np.arange(13))
    from common.config import RunConfig
    from fedseqrec.centralized import train_centralized

    flat = {"data": str(csv), "model": "gru", "emb-dim": 8, "hidden-dim": 8, "num-layers": 1, "max-len": 8}
    train_centralized(RunConfig.from_flat({**flat, "epochs": 1}), root / "trained", show_progress=False)
    return Assets(csv, root / "export", item_ids, root / "trained")


# --- builders ---------------------------------------------------------------------------------------

TRAIN = ["train", "--quiet", "--epochs", "1", "--emb-dim", "8", "--max-len", "8", "--num-layers", "1"]


def _write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def train_on(name: str, content: str | bytes) -> Callable[[Path, Assets], list[str]]:
    def build(tmp: Path, assets: Assets) -> list[str]:
        return [*TRAIN, "--data", str(_write(tmp, name, content)), "--out", str(tmp / "out")]

    return build


def partition_of(name: str, content: str | bytes | Callable[[Path], None]) -> Callable[[Path, Assets], list[str]]:
    def build(tmp: Path, assets: Assets) -> list[str]:
        if callable(content):
            content(tmp / name)
            path = tmp / name
        else:
            path = _write(tmp, name, content)
        return ["partition", "--nodes", "2", "--data", str(path), "--out", str(tmp / "out")]

    return build


def _parquet(columns: dict) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import pandas as pd

        pd.DataFrame(columns).to_parquet(path)

    return write


def train_config(content: str | bytes) -> Callable[[Path, Assets], list[str]]:
    def build(tmp: Path, assets: Assets) -> list[str]:
        toml = _write(tmp, "run.toml", content)
        return [*TRAIN, "--data", str(assets.csv), "--config", str(toml), "--out", str(tmp / "out")]

    return build


def train_flags(*flags: str) -> Callable[[Path, Assets], list[str]]:
    return lambda tmp, assets: [*TRAIN, "--data", str(assets.csv), "--out", str(tmp / "out"), *flags]


def _history(user_rows: str = "1,100,1\n1,101,2\n") -> str:
    return HEADER + user_rows


def recommend(
    history: str | bytes | None = None, *flags: str, model: Callable[[Path, Assets], Path] | None = None
) -> Callable[[Path, Assets], list[str]]:
    """`fedseqrec recommend` with a history file (None: a path that does not exist) and a model folder
    (default: the good export)."""

    def build(tmp: Path, assets: Assets) -> list[str]:
        path = tmp / "history.csv" if history is None else _write(tmp, "history.csv", history)
        model_path = model(tmp, assets) if model else assets.export / "model.onnx"
        return ["recommend", "--model", str(model_path), "--history", str(path), *flags]

    return build


def broken_export(change: Callable[[Path, Assets], None], point_at: str = "model.onnx"):
    """A copy of the good export folder, changed; `point_at` is what --model names inside it."""

    def build(tmp: Path, assets: Assets) -> Path:
        folder = tmp / "export"
        shutil.copytree(assets.export, folder)
        change(folder, assets)
        return folder / point_at if point_at else folder

    return build


def _remove(name: str):
    return lambda folder, assets: (folder / name).unlink()


def _truncate(name: str):
    def change(folder: Path, assets: Assets) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return change


def _replace(name: str, content: str):
    return lambda folder, assets: (folder / name).write_text(content)


def _metadata(**changes):
    """Rewrite the model's embedded metadata, as an export by another version would have it."""

    def change(folder: Path, assets: Assets) -> None:
        import onnx

        from common.model.export import METADATA_KEY, _set_metadata

        path = folder / "model.onnx"
        metadata = json.loads({p.key: p.value for p in onnx.load(path).metadata_props}[METADATA_KEY])
        metadata.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del metadata[key]
        _set_metadata(path, metadata)

    return change


def device(node_config: str, *files: tuple[str, str | bytes]) -> Callable[[Path, Assets], list[str]]:
    """`fedseqrec check-device` with a node-config string; {tmp} and {csv} and {catalogue} are filled
    in (a good catalogue for the export's items, and a device file of items in it)."""

    def build(tmp: Path, assets: Assets) -> list[str]:
        catalogue = _write(tmp, "catalogue.json", json.dumps(assets.item_ids))
        csv = _write(tmp, "device.csv", _history("7,100,1\n7,101,2\n7,102,3\n7,103,4\n"))
        for name, content in files:
            _write(tmp, name, content)
        text = node_config.format(tmp=tmp, csv=csv, catalogue=catalogue)
        return ["check-device", "--node-config", text]

    return build


def unwritable_folder() -> Path:
    """A folder no one may create: chmod works for a normal user; root needs a read-only file system."""
    return Path("/sys/fedseqrec-bad-input") if os.geteuid() == 0 else Path("/proc/fedseqrec-bad-input")


def export_to_unwritable(tmp: Path, assets: Assets) -> list[str]:
    return ["export", str(assets.export.parent / "run"), "--out", str(unwritable_folder())]


def report_of_a_folder_that_is_no_run(tmp: Path, assets: Assets) -> list[str]:
    _write(tmp, "notes/readme.txt", "not a run")
    return ["report", str(tmp / "notes"), "--out", str(tmp / "report.html")]


def report_of_an_older_run(tmp: Path, assets: Assets) -> list[str]:
    _write(tmp, "run/config.json", json.dumps({"data": "synthetic"}))  # no summary.json nor metrics.json
    _write(tmp, "run/metrics.jsonl", json.dumps({"round": 1}) + "\n")
    return ["report", str(tmp / "run"), "--out", str(tmp / "report.html")]


def report_to_unwritable(tmp: Path, assets: Assets) -> list[str]:
    return ["report", str(assets.export.parent / "run"), "--out", str(unwritable_folder().parent / "report.html")]


def truncated_model_pt(tmp: Path, assets: Assets) -> list[str]:
    data = (assets.export.parent / "run" / "model.pt").read_bytes()
    _write(tmp, "run/model.pt", data[: len(data) // 2])
    return ["export", str(tmp / "run"), "--out", str(tmp / "out")]


def out_is_a_file(tmp: Path, assets: Assets) -> list[str]:
    _write(tmp, "out", "results of another run\n")
    return [*TRAIN, "--data", str(assets.csv), "--out", str(tmp / "out")]


def out_under_a_file(tmp: Path, assets: Assets) -> list[str]:
    _write(tmp, "notes.txt", "a file, not a folder\n")
    return ["partition", "--nodes", "2", "--data", str(assets.csv), "--out", str(tmp / "notes.txt" / "out")]


def federate_into_a_file(tmp: Path, assets: Assets) -> list[str]:
    _write(tmp, "out", "not a run folder\n")
    return ["federate", "--out-dir", str(tmp / "out")]


def export_into_existing(tmp: Path, assets: Assets) -> list[str]:
    """An export folder that already holds a model: a failed export must leave it as it was."""
    shutil.copytree(assets.export, tmp / "out")
    (tmp / "no-run").mkdir()  # a folder, but no run in it: found after the arguments are parsed
    return ["export", str(tmp / "no-run"), "--out", str(tmp / "out")]


# --- the corpus --------------------------------------------------------------------------------------

FILE = "interactions file"
TOML = "run-config TOML"
CLI = "command-line argument"
NODE = "node config (device)"
HISTORY = "device history file"
MODEL = "exported model folder"

LATIN1_ROWS = (HEADER.strip() + ",title\n1,10,100,Amelie\n1,11,101,Am\xe9lie\n").encode("latin-1")
UTF16_ROWS = (HEADER + "1,10,100\n1,11,101\n").encode("utf-16")

CASES = [
    # interaction files
    Case(
        "data-empty",
        FILE,
        "empty file",
        "export the interactions again",
        partition_of("empty.csv", ""),
        "file is empty",
        "out",
    ),
    Case(
        "data-header-only",
        FILE,
        "a header and no rows",
        "add the interaction rows",
        train_on("header.csv", HEADER),
        "no interaction rows",
        "out",
    ),
    Case(
        "data-truncated-line",
        FILE,
        "last line cut short (`2,1`)",
        "re-export the file whole",
        train_on("cut.csv", HEADER + "1,10,100\n1,11,101\n2,1"),
        "line 4: missing timestamp",
        "out",
    ),
    Case(
        "data-extra-field",
        FILE,
        "a row with more fields than the header",
        "fix that row",
        partition_of("extra.csv", HEADER + "1,10,100\n1,11,101,7\n"),
        "malformed rows",
        "out",
    ),
    Case(
        "data-latin1",
        FILE,
        "Latin-1 bytes (`Am\\xe9lie`) in a UTF-8 file",
        "convert it to UTF-8 (`iconv`)",
        train_on("latin1.csv", LATIN1_ROWS),
        "not UTF-8 text (byte 0xe9 on line 3)",
        "out",
    ),
    Case(
        "data-utf16",
        FILE,
        'UTF-16 text (Excel\'s "Unicode text")',
        "save it as UTF-8 CSV",
        partition_of("utf16.csv", UTF16_ROWS),
        "UTF-16 text, not UTF-8",
        "out",
    ),
    Case(
        "data-non-numeric-user",
        FILE,
        "user ID `alice`",
        "map string IDs to integers",
        train_on("names.csv", HEADER + "1,10,100\nalice,11,101\n"),
        "line 3: user_id 'alice' is not an integer ID",
        "out",
    ),
    Case(
        "data-non-numeric-timestamp",
        FILE,
        "timestamp `yesterday`",
        "use Unix seconds, positions or ISO dates",
        train_on("when.csv", HEADER + "1,10,100\n1,11,yesterday\n"),
        "timestamp 'yesterday' is neither",
        "out",
    ),
    Case(
        "data-huge-id",
        FILE,
        "an item ID beyond 64 bits",
        "map long IDs to small integers",
        partition_of("huge.csv", HEADER + "1,99999999999999999999,100\n"),
        "is too large",
        "out",
    ),
    Case(
        "data-missing-column",
        FILE,
        "no timestamp column",
        "add it, or set time-col",
        train_on("two.csv", "user_id,item_id\n1,10\n"),
        "missing column(s) timestamp",
        "out",
    ),
    Case(
        "data-duplicated-column",
        FILE,
        "`item_id` twice in the header",
        "keep one column of each name",
        train_on("dup.csv", "user_id,item_id,item_id,timestamp\n1,10,11,100\n"),
        "names column(s) item_id more than once",
        "out",
    ),
    Case(
        "data-wrong-delimiter",
        FILE,
        "a .csv separated by semicolons",
        "convert it, or name it for its delimiter",
        partition_of("semi.csv", "user_id;item_id;timestamp\n1;10;100\n"),
        "separated by semicolons",
        "out",
    ),
    Case(
        "data-corrupt-gzip",
        FILE,
        "a .csv.gz that is not gzip",
        "compress it again",
        train_on("bad.csv.gz", b"not gzip at all"),
        "cannot read the file",
        "out",
    ),
    Case(
        "data-corrupt-parquet",
        FILE,
        "a .parquet that is not Parquet",
        "write it again",
        partition_of("bad.parquet", b"PAR1 garbage"),
        "not a readable Parquet file",
        "out",
    ),
    Case(
        "data-parquet-missing-column",
        FILE,
        "Parquet without a timestamp column",
        "add it, or set time-col",
        partition_of("two.parquet", _parquet({"user_id": [1], "item_id": [2]})),
        "missing column(s) timestamp",
        "out",
    ),
    Case(
        "data-ratings-dat-non-numeric",
        FILE,
        "ratings.dat with item `abc`",
        "fix that line",
        train_on("ml/ratings.dat", "1::abc::5::978300760\n"),
        "line 1: item_id 'abc'",
        "out",
    ),
    Case(
        "data-ratings-dat-truncated",
        FILE,
        "ratings.dat whose last line lost its timestamp",
        "download it again",
        partition_of("ml/ratings.dat", "1::1193::5::978300760\n1::661::3\n"),
        "line 2: missing timestamp",
        "out",
    ),
    Case(
        "data-directory",
        FILE,
        "--data names a folder",
        "name the file inside it",
        lambda tmp, a: [*TRAIN, "--data", str(tmp), "--out", str(tmp / "out")],
        "is a directory",
        "out",
    ),
    Case(
        "data-not-found",
        FILE,
        "--data names no file",
        "fix the path",
        lambda tmp, a: [*TRAIN, "--data", str(tmp / "nope.csv"), "--out", str(tmp / "out")],
        "file not found",
        "out",
    ),
    # run-config TOML (fedseqrec train --config)
    Case(
        "toml-invalid",
        TOML,
        "`epochs =` with no value",
        "fix the line",
        train_config("epochs =\n"),
        "not valid TOML",
        "out",
    ),
    Case(
        "toml-duplicated-key",
        TOML,
        "`lr` given twice",
        "keep one",
        train_config("lr = 0.1\nlr = 0.2\n"),
        "Cannot overwrite a value",
        "out",
    ),
    Case(
        "toml-unknown-key",
        TOML,
        "`embdim` (a typo)",
        "use the suggested key",
        train_config("embdim = 8\n"),
        "unknown key 'embdim'; did you mean 'emb-dim'?",
        "out",
    ),
    Case(
        "toml-wrong-type",
        TOML,
        '`patience = "many"`',
        "give an integer",
        train_config('patience = "many"\n'),
        "key 'patience' must be int, got 'many'",
        "out",
    ),
    Case(
        "toml-negative",
        TOML,
        "`batch-size = -4`",
        "give a positive size",
        train_config("batch-size = -4\n"),
        "'batch-size': must be in [1, 1,000,000]",
        "out",
    ),
    Case(
        "toml-huge",
        TOML,
        "`hidden-dim = 9223372036854775807`",
        "give a sane size (128 is the default)",
        train_config("hidden-dim = 9223372036854775807\n"),
        "'hidden-dim': must be in [1, 16,384]",
        "out",
    ),
    Case(
        "toml-infinite",
        TOML,
        "`lr = inf`",
        "give a finite number",
        train_config("lr = inf\n"),
        "config key 'lr': must be a finite number",
        "out",
    ),
    Case(
        "toml-wrong-group",
        TOML,
        "`num-server-rounds` given to `train`",
        "remove it (train reads data, model, train keys)",
        train_config("num-server-rounds = 5\n"),
        "key 'num-server-rounds' is a federation setting",
        "out",
    ),
    Case(
        "toml-table",
        TOML,
        "keys under a `[train]` section",
        "write the keys at the top level",
        train_config("[train]\nepochs = 3\n"),
        "[train] is a table",
        "out",
    ),
    Case(
        "toml-not-utf8",
        TOML,
        "Latin-1 bytes in a comment",
        "save it as UTF-8",
        train_config("# caf\xe9\nepochs = 1\n".encode("latin-1")),
        "not UTF-8 text",
        "out",
    ),
    Case(
        "toml-bad-choice",
        TOML,
        '`model = "bert"`',
        "pick one of the listed models",
        train_config('model = "bert"\n'),
        "must be one of sasrec, gru, lstm",
        "out",
    ),
    Case(
        "toml-bool-as-string",
        TOML,
        '`mask-seen = "yes"`',
        "write true or false",
        train_config('mask-seen = "yes"\n'),
        "key 'mask-seen' must be bool",
        "out",
    ),
    Case(
        "toml-not-found",
        TOML,
        "--config names no file",
        "fix the path",
        lambda tmp, a: [*TRAIN, "--data", str(a.csv), "--config", str(tmp / "no.toml"), "--out", str(tmp / "out")],
        "config file not found",
        "out",
    ),
    # command-line arguments
    Case(
        "cli-out-is-a-file",
        CLI,
        "--out names an existing file",
        "pass a folder path",
        out_is_a_file,
        "is a file, not a folder",
        "out",
    ),
    Case(
        "cli-out-under-a-file",
        CLI,
        "--out inside a file (`notes.txt/out`)",
        "pass another path",
        out_under_a_file,
        "notes.txt is a file, so the folder cannot be created",
        "notes.txt/out",
    ),
    Case(
        "cli-out-not-writable",
        CLI,
        "--out where nothing may be created",
        "pass a folder you can write to",
        export_to_unwritable,
        "pass a folder you can write to",
        str(unwritable_folder()),
    ),
    Case(
        "cli-export-failed-keeps-folder",
        CLI,
        "export of a folder with no run into an existing export",
        "pass a finished run's folder",
        export_into_existing,
        "no model file",
        "out",
    ),
    Case(
        "cli-report-not-a-run",
        CLI,
        "`report` of a folder that holds no run",
        "pass the out-dir of a finished run",
        report_of_a_folder_that_is_no_run,
        "no config.json, so not a fedseqrec run folder",
        "report.html",
    ),
    Case(
        "cli-report-older-run",
        CLI,
        "`report` of an unfinished run, or one an older version wrote (no summary.json)",
        "finish the run, or run it again with this version",
        report_of_an_older_run,
        "no summary.json (a federation) or metrics.json (a training)",
        "report.html",
    ),
    Case(
        "cli-report-unwritable-out",
        CLI,
        "`report --out` in a folder that cannot be written",
        "choose another file",
        report_to_unwritable,
        "cannot write the report",
    ),
    Case(
        "cli-federate-out-dir-is-a-file",
        CLI,
        "`federate --out-dir` names an existing file",
        "pass a folder path",
        federate_into_a_file,
        "out-dir <dir>/out: is a file, not a folder",
        "out",
    ),
    Case(
        "cli-federate-no-cpus",
        CLI,
        "`federate --cpus-per-client 0`",
        "give each simulated client at least one CPU",
        lambda tmp, a: ["federate", "--cpus-per-client", "0", "--out-dir", str(tmp / "out")],
        "argument --cpus-per-client: expected an integer in [1, 4096], got '0'",
        "out",
    ),
    Case(
        "cli-federate-set-no-equals",
        CLI,
        "`federate --set augment` (no value)",
        "write KEY=VALUE",
        lambda tmp, a: ["federate", "--set", "augment", "--out-dir", str(tmp / "out")],
        "--set 'augment': expected KEY=VALUE",
        "out",
    ),
    Case(
        "cli-federate-set-unknown-key",
        CLI,
        "`federate --set num-rounds=3` (a key that does not exist)",
        "use a key `fedseqrec config` lists",
        lambda tmp, a: ["federate", "--set", "num-rounds=3", "--out-dir", str(tmp / "out")],
        "num-rounds",
        "out",
    ),
    Case(
        "cli-federate-unknown-feature",
        CLI,
        "`federate --set item-features=colour` on a file with no such column",
        "name columns of the item file (or genre, year for MovieLens)",
        lambda tmp, a: [
            "federate",
            "--set",
            f"data={json.dumps(str(a.csv))}",
            'item-features="colour"',
            "--out-dir",
            str(tmp / "out"),
        ],
        "colour",
        "out",
    ),
    Case(
        "cli-nodes-zero",
        CLI,
        "`partition --nodes 0`",
        "pass --nodes >= 1",
        lambda tmp, a: ["partition", "--nodes", "0", "--data", str(a.csv), "--out", str(tmp / "out")],
        "argument --nodes: expected an integer in [1, 1000000], got '0'",
        "out",
    ),
    Case(
        "cli-nodes-too-many",
        CLI,
        "more nodes than users",
        "pass at most one node per user",
        lambda tmp, a: ["partition", "--nodes", "100000", "--data", str(a.csv), "--out", str(tmp / "out")],
        "pass --nodes between 1 and",
        "out",
    ),
    Case(
        "cli-negative-k",
        CLI,
        "`recommend -k -1`",
        "pass -k >= 1",
        recommend(_history(), "-k", "-1"),
        "argument -k: expected an integer in [1, 1000000], got '-1'",
    ),
    Case(
        "cli-k-not-a-number",
        CLI,
        "`recommend -k ten`",
        "pass an integer",
        recommend(_history(), "-k", "ten"),
        "argument -k: expected an integer in [1, 1000000], got 'ten'",
    ),
    Case(
        "cli-threads-negative",
        CLI,
        "`recommend --threads -1`",
        "pass 0 or more",
        recommend(_history(), "--threads", "-1"),
        "argument --threads: expected an integer in [0, 4096], got '-1'",
    ),
    Case(
        "cli-unknown-flag",
        CLI,
        "a flag that does not exist",
        "see --help",
        train_flags("--bogus", "1"),
        "unrecognized arguments: --bogus 1",
        "out",
    ),
    Case(
        "cli-flag-out-of-range",
        CLI,
        "`--dropout 1.5`",
        "give a value in [0, 1)",
        train_flags("--dropout", "1.5"),
        "'dropout': must be in [0, 1)",
        "out",
    ),
    Case(
        "cli-export-truncated-model",
        CLI,
        "a run whose model.pt was cut short",
        "point at a finished run's model.pt",
        truncated_model_pt,
        "not a readable model file, truncated or corrupt",
        "out",
    ),
    Case(
        "cli-audit-no-run",
        CLI,
        "`audit` of a folder that does not exist",
        "pass a finished run's folder",
        lambda tmp, a: ["audit", str(tmp / "no-run")],
        "no such run folder",
    ),
    Case(
        "cli-items-file-missing",
        CLI,
        "`--items-file` names no file",
        "point at movies.dat or u.item",
        recommend(_history(), "--items-file", "/nonexistent/movies.dat"),
        "item metadata file not found",
    ),
    # device history files (fedseqrec recommend --history)
    Case("history-not-found", HISTORY, "--history names no file", "fix the path", recommend(None), "--history", None),
    Case("history-empty", HISTORY, "empty file", "write the user's interactions", recommend(""), "file is empty"),
    Case(
        "history-several-users",
        HISTORY,
        "two users and no --user",
        "pick one with --user",
        recommend(_history("1,100,1\n2,101,2\n")),
        "holds 2 users; pick one with --user",
    ),
    Case(
        "history-unknown-user",
        HISTORY,
        "--user not in the file",
        "pass one of its users",
        recommend(_history(), "--user", "9"),
        "no rows for user 9",
    ),
    Case(
        "history-non-numeric-item",
        HISTORY,
        "item ID `abc`",
        "use the catalogue's integer IDs",
        recommend(_history("1,abc,1\n")),
        "item_id 'abc' is not an integer ID",
    ),
    Case(
        "history-wrong-columns",
        HISTORY,
        "columns named user,movie,time",
        "name them user_id, item_id, timestamp",
        recommend("user,movie,time\n1,100,1\n"),
        "Rename the columns or name them user_id, item_id, timestamp",
    ),
    Case(
        "history-utf16",
        HISTORY,
        "UTF-16 text",
        "save it as UTF-8",
        recommend(_history().encode("utf-16")),
        "UTF-16 text, not UTF-8",
    ),
    # exported model folders (fedseqrec recommend --model)
    Case(
        "model-no-items-json",
        MODEL,
        "items.json missing beside model.onnx",
        "copy the whole export folder",
        recommend(_history(), model=broken_export(_remove("items.json"))),
        "item mapping missing",
    ),
    Case(
        "model-other-format-version",
        MODEL,
        "metadata of format fedseqrec-ondevice/0",
        "export the run again with this version",
        recommend(_history(), model=broken_export(_metadata(format="fedseqrec-ondevice/0"))),
        "model format 'fedseqrec-ondevice/0', but this runner reads",
    ),
    Case(
        "model-metadata-incomplete",
        MODEL,
        "metadata without items_file",
        "export the run again",
        recommend(_history(), model=broken_export(_metadata(items_file=None))),
        "its metadata lacks items_file",
    ),
    Case(
        "model-truncated-onnx",
        MODEL,
        "model.onnx cut in half",
        "copy it again or re-export",
        recommend(_history(), model=broken_export(_truncate("model.onnx"))),
        "not a loadable ONNX model, truncated or corrupt",
    ),
    Case(
        "model-folder-without-model",
        MODEL,
        "--model names a folder with no model.onnx",
        "pass the export folder",
        recommend(_history(), model=broken_export(_remove("model.onnx"), point_at="")),
        "folder holds no model.onnx",
    ),
    Case(
        "model-no-model-file",
        MODEL,
        "--model names a file that does not exist",
        "fix the path",
        recommend(_history(), model=lambda tmp, a: tmp / "model.onnx"),
        "model.onnx: no such file or folder; pass the folder written by `fedseqrec export",
    ),
    Case(
        "model-items-json-corrupt",
        MODEL,
        "items.json cut short",
        "copy it again",
        recommend(_history(), model=broken_export(_truncate("items.json"))),
        "unreadable item mapping",
    ),
    Case(
        "model-items-json-other-model",
        MODEL,
        "items.json of a model with other items",
        "copy the items.json of the same export",
        recommend(_history(), model=broken_export(_replace("items.json", '{"item_ids": [-1, 5, 6]}'))),
        "3 item IDs for a model of 12 items",
    ),
    Case(
        "model-items-json-no-ids",
        MODEL,
        "items.json without item_ids",
        "copy the items.json of the same export",
        recommend(_history(), model=broken_export(_replace("items.json", '{"ids": []}'))),
        "no 'item_ids' list",
    ),
    # node configs (the deployment ClientApp's --node-config, checked by fedseqrec check-device)
    Case(
        "node-no-catalogue",
        NODE,
        "data-path without catalogue-path",
        "add the federation's catalogue.json",
        device('data-path="{csv}" client-id=1'),
        "has data-path but no catalogue-path",
    ),
    Case(
        "node-no-client-id",
        NODE,
        "no client-id",
        "add the device's integer identity",
        device('data-path="{csv}" catalogue-path="{catalogue}"'),
        "neither partition-id (simulation) nor client-id",
    ),
    Case(
        "node-catalogue-missing",
        NODE,
        "catalogue-path names no file",
        "fix the path",
        device('data-path="{csv}" catalogue-path="{tmp}/none.json" client-id=1'),
        "cannot read the item catalogue (No such file or directory)",
    ),
    Case(
        "node-catalogue-not-a-list",
        NODE,
        "catalogue.json holds an object",
        "use the list `fedseqrec partition` wrote",
        device('data-path="{csv}" catalogue-path="{tmp}/cat.json" client-id=1', ("cat.json", '{"a": 1}')),
        "not a list of at least two integer item IDs",
    ),
    Case(
        "node-data-missing",
        NODE,
        "data-path names no file",
        "point it at the device's interactions",
        device('data-path="{tmp}/none.csv" catalogue-path="{catalogue}" client-id=1'),
        "node config data-path",
    ),
    Case(
        "node-data-outside-catalogue",
        NODE,
        "a device file whose items are all unknown",
        "use the federation's catalogue",
        device(
            'data-path="{tmp}/other.csv" catalogue-path="{catalogue}" client-id=1',
            ("other.csv", HEADER + "7,5,1\n7,6,2\n7,8,3\n"),
        ),
        "none of its items are in the federation's catalogue",
    ),
    Case(
        "node-client-id-not-int",
        NODE,
        'client-id="abc"',
        "give an integer",
        device('data-path="{csv}" catalogue-path="{catalogue}" client-id="abc"'),
        "'client-id' (the device's integer identity) must be int",
    ),
    Case(
        "node-max-epsilon-not-number",
        NODE,
        'max-epsilon="lots"',
        "give a number",
        device('data-path="{csv}" catalogue-path="{catalogue}" client-id=1 max-epsilon="lots"'),
        "'max-epsilon' (the owner's privacy budget) must be float",
    ),
    Case(
        "node-train-not-bool",
        NODE,
        'train="no"',
        "write true or false",
        device('data-path="{csv}" catalogue-path="{catalogue}" client-id=1 train="no"'),
        "'train' (whether the device trains) must be bool",
    ),
    Case(
        "node-negative-limit",
        NODE,
        "max-train-seconds=-5",
        "give 0 (no limit) or more",
        device('data-path="{csv}" catalogue-path="{catalogue}" client-id=1 max-train-seconds=-5'),
        "'max-train-seconds' (the owner's time limit per round) must be >= 0",
    ),
    Case(
        "node-unknown-key",
        NODE,
        "`data-pth` (a typo)",
        "use the suggested key",
        device('data-pth="{csv}" catalogue-path="{catalogue}" client-id=1'),
        "unknown key 'data-pth'; did you mean 'data-path'?",
    ),
    Case(
        "node-state-dir-is-file",
        NODE,
        "state-dir names a file",
        "point it at a folder",
        device('data-path="{csv}" catalogue-path="{catalogue}" client-id=1 state-dir="{tmp}/state"', ("state", "x")),
        "node config state-dir",
    ),
    Case(
        "node-not-key-value",
        NODE,
        "an unquoted path (`data-path=/x.csv`)",
        "quote strings",
        device("data-path=/x.csv client-id=1"),
        "not space-separated key=value pairs",
    ),
]


# --- grown by issue 34: the classes a list had missed (numbers outside their domain, arguments that
# collide, damaged files the project wrote itself, extreme contents), for every command -----------------

RUN = "run folder (read back)"
STUDY = "tuning study folder"


def damaged_run(name: str, content: str | bytes, command: str) -> Callable[[Path, Assets], list[str]]:
    """A copy of the finished run with one file replaced, read back by `command`."""

    def build(tmp: Path, assets: Assets) -> list[str]:
        run = tmp / "run"
        shutil.copytree(assets.trained, run)
        _write(run, name, content)
        history = _write(tmp, "history.csv", _history("1,100,1\n1,101,2\n1,102,3\n1,103,4\n"))
        return {
            "report": ["report", str(run), "--out", str(tmp / "report.html")],
            "export": ["export", str(run), "--out", str(tmp / "out")],
            "audit": ["audit", str(run), "--users", "5", "--leakage-users", "0"],
            "ensemble": ["ensemble", str(run), str(assets.trained), "--out", str(tmp / "out")],
            "personalize": ["personalize", str(run), "--history", str(history), "--out", str(tmp / "out")],
        }[command]

    return build


def with_run(command: str, *flags: str) -> Callable[[Path, Assets], list[str]]:
    """`command` on the good finished run, with flags ({tmp}: the case's folder; {csv}: good data)."""

    def build(tmp: Path, assets: Assets) -> list[str]:
        history = _write(tmp, "history.csv", _history("1,100,1\n1,101,2\n1,102,3\n1,103,4\n"))
        fill = {"tmp": tmp, "csv": assets.csv, "history": history, "run": assets.trained}
        base = {
            "personalize": ["personalize", str(assets.trained), "--history", str(history)],
            "ensemble": ["ensemble", str(assets.trained), str(assets.trained)],
            "audit": ["audit", str(assets.trained)],
            "recommend": ["recommend", "--model", str(assets.export), "--history", str(history)],
            "export": ["export", str(assets.trained)],
            "report": ["report", str(assets.trained)],
            "partition": ["partition", "--data", str(assets.csv)],
            "train": [*TRAIN, "--data", str(assets.csv)],
            "federate": ["federate"],
            "tune": ["tune", "--data", str(assets.csv)],
            "check-device": ["check-device"],
        }[command]
        return base + [flag.format(**fill) for flag in flags]

    return build


TUNE_TOML = 'data = "synthetic"\nepochs = 1\n[search]\nlr = { low = 1e-3, high = 3e-2, log = true }\n'


def damaged_study(content: bytes) -> Callable[[Path, Assets], list[str]]:
    """A tuning folder whose study.db is not what optuna wrote (cut short, emptied, overwritten)."""

    def build(tmp: Path, assets: Assets) -> list[str]:
        _write(tmp, "study/study.db", content)
        config = _write(tmp, "tune.toml", TUNE_TOML)
        return ["tune", "--config", str(config), "--out", str(tmp / "study"), "--trials", "1"]

    return build


NESTED = "[" * 5000 + "]" * 5000
PRIVACY = {"dp_mode": "server", "unit_of_privacy": "user", "delta": 1e-5, "epsilon": 1.0}
LONG = "x" * 5000

CASES += [
    # numbers outside their domain
    Case(
        "cli-seed-negative",
        CLI,
        "`personalize --seed -1`",
        "give a seed in [0, 2^32 - 1]",
        with_run("personalize", "--out", "{tmp}/out", "--seed", "-1"),
        "argument --seed: expected an integer in [0, 4294967295], got '-1'",
        "out",
    ),
    Case(
        "cli-lr-infinite",
        CLI,
        "`personalize --lr inf`",
        "give a finite learning rate in (0, 10]",
        with_run("personalize", "--out", "{tmp}/out", "--lr", "inf"),
        "argument --lr: expected a finite number in (0, 10], got 'inf'",
        "out",
    ),
    Case(
        "cli-steps-zero",
        CLI,
        "`personalize --steps 0`",
        "give at least one step",
        with_run("personalize", "--out", "{tmp}/out", "--steps", "0"),
        "argument --steps: expected an integer in [1, 100000], got '0'",
        "out",
    ),
    Case(
        "cli-noise-nan",
        CLI,
        "`personalize --noise-multiplier nan`",
        "give a finite number",
        with_run("personalize", "--out", "{tmp}/out", "--noise-multiplier", "nan"),
        "argument --noise-multiplier: expected a finite number in [0, 1e+06], got 'nan'",
        "out",
    ),
    Case(
        "cli-user-beyond-64-bit",
        CLI,
        "`recommend --user` of 30 digits",
        "pass the user ID the file holds",
        with_run("recommend", "--user", "9" * 30),
        "argument --user: expected an integer in [-9223372036854775808, 9223372036854775807], got '9999",
    ),
    Case(
        "cli-k-huge",
        CLI,
        "`recommend -k 1000000000000`",
        "ask for fewer items",
        with_run("recommend", "-k", "1000000000000"),
        "argument -k: expected an integer in [1, 1000000]",
    ),
    Case(
        "cli-rerank-lambda-nan",
        CLI,
        "`recommend --rerank-lambda nan`",
        "give a weight in [0, 1]",
        with_run("recommend", "--rerank", "mmr", "--rerank-lambda", "nan"),
        "argument --rerank-lambda: expected a finite number in [0, 1], got 'nan'",
    ),
    Case(
        "cli-explain-huge",
        CLI,
        "`recommend --explain 100000000`",
        "explain with at most 1000 items",
        with_run("recommend", "--explain", "100000000"),
        "argument --explain: expected an integer in [0, 1000]",
    ),
    Case(
        "cli-top-k-zero",
        CLI,
        "`ensemble --top-k 0`",
        "give K >= 1",
        with_run("ensemble", "--out", "{tmp}/out", "--top-k", "0"),
        "argument --top-k: expected an integer in [1, 1000000], got '0'",
        "out",
    ),
    Case(
        "cli-audit-users-zero",
        CLI,
        "`audit --users 0`",
        "give at least one user",
        with_run("audit", "--users", "0"),
        "argument --users: expected an integer in [1, 10000000], got '0'",
    ),
    Case(
        "cli-tune-trials-zero",
        CLI,
        "`tune --trials 0`",
        "ask for at least one trial",
        with_run("tune", "--out", "{tmp}/out", "--trials", "0"),
        "argument --trials: expected an integer in [1, 100000], got '0'",
        "out",
    ),
    Case(
        "cli-tune-timeout-infinite",
        CLI,
        "`tune --timeout inf`",
        "give seconds, or 0 for no limit",
        with_run("tune", "--out", "{tmp}/out", "--timeout", "inf"),
        "argument --timeout: expected a finite number in [0, 1e+08], got 'inf'",
        "out",
    ),
    Case(
        "cli-nodes-huge",
        CLI,
        "`partition --nodes` of 31 digits",
        "pass at most one node per user",
        with_run("partition", "--out", "{tmp}/out", "--nodes", "1" + "0" * 30),
        "argument --nodes: expected an integer in [1, 1000000]",
        "out",
    ),
    Case(
        "cli-seed-beyond-numpy",
        CLI,
        "`train --seed 2^70`",
        "give a seed in [0, 2^32 - 1]",
        with_run("train", "--out", "{tmp}/out", "--seed", str(2**70)),
        "config key 'seed': must be in [0, 4,294,967,295], got 1180591620717411...",
        "out",
    ),
    Case(
        "toml-lr-huge",
        TOML,
        "`lr = 1e300`",
        "give a learning rate in [0, 10]",
        train_config("lr = 1e300\n"),
        "config key 'lr': must be in [0, 10], got 1e+300",
        "out",
    ),
    Case(
        "toml-seed-negative",
        TOML,
        "`seed = -1`",
        "give a seed in [0, 2^32 - 1]",
        train_config("seed = -1\n"),
        "config key 'seed': must be in [0, 4,294,967,295], got -1",
        "out",
    ),
    # arguments that conflict or collide
    Case(
        "cli-one-column-two-roles",
        CLI,
        "`--user-col item_id` (the item column named for users)",
        "name a different column for each role",
        with_run("train", "--out", "{tmp}/out", "--user-col", "item_id"),
        "user-col and item-col both name column 'item_id'; each role needs its own column",
        "out",
    ),
    Case(
        "toml-one-column-two-roles",
        TOML,
        '`time-col = "user_id"`',
        "name a different column for each role",
        train_config('time-col = "user_id"\n'),
        "user-col and time-col both name column 'user_id'",
        "out",
    ),
    Case(
        "tune-choices-refused-together",
        STUDY,
        "a [search] space whose choices are valid alone but collide (user-col and item-col both `uid`)",
        "narrow the space so every combination is valid",
        lambda tmp, a: [
            "tune",
            "--config",
            str(
                _write(
                    tmp,
                    "tune.toml",
                    'data = "synthetic"\nepochs = 1\n[search]\nuser-col = { choices = ["user_id", "uid"] }\n'
                    'item-col = { choices = ["item_id", "uid"] }\n',
                )
            ),
            "--out",
            str(tmp / "study"),
        ],
        "[search] values valid alone are refused together (user-col = 'uid', item-col = 'uid'): user-col and "
        "item-col both name column 'uid'",
        "study",
    ),
    Case(
        "cli-ensemble-out-is-a-file",
        CLI,
        "`ensemble --out` names an existing file",
        "pass a folder path",
        lambda tmp, a: [*with_run("ensemble")(tmp, a), "--out", str(_write(tmp, "out", "x"))],
        "--out <dir>/out: is a file, not a folder",
    ),
    Case(
        "cli-personalize-out-is-a-file",
        CLI,
        "`personalize --out` names an existing file",
        "pass a folder path",
        lambda tmp, a: [*with_run("personalize")(tmp, a), "--out", str(_write(tmp, "out", "x"))],
        "--out <dir>/out: is a file, not a folder",
    ),
    Case(
        "cli-tune-out-is-a-file",
        CLI,
        "`tune --out` names an existing file",
        "pass a folder path",
        lambda tmp, a: [*with_run("tune")(tmp, a), "--out", str(_write(tmp, "out", "x"))],
        "--out <dir>/out: is a file, not a folder",
    ),
    Case(
        "cli-run-dir-is-a-file",
        CLI,
        "`personalize RUN_DIR` names a file",
        "pass the run's folder",
        lambda tmp, a: [
            "personalize",
            str(_write(tmp, "model.pt", "x")),
            "--history",
            str(a.csv),
            "--out",
            str(tmp / "out"),
        ],
        "RUN_DIR <dir>/model.pt: is a file, not a folder",
        "out",
    ),
    Case(
        "cli-history-is-a-folder",
        CLI,
        "`recommend --history` names a folder",
        "name the file inside it",
        lambda tmp, a: ["recommend", "--model", str(a.export), "--history", str(tmp)],
        "--history <dir>: is a folder; pass the file inside it",
    ),
    Case(
        "cli-run-config-missing",
        CLI,
        "`check-device --run-config` names no file",
        "fix the path",
        with_run("check-device", "--node-config", "client-id=1", "--run-config", "{tmp}/none.toml"),
        "--run-config <dir>/none.toml: run-config TOML not found; pass an existing file",
    ),
    # extreme contents
    Case(
        "cli-path-with-nul",
        CLI,
        "a path holding a NUL byte",
        "pass a plain path",
        lambda tmp, a: ["export", str(tmp / "run\0x"), "--out", str(tmp / "out")],
        "a path cannot hold a NUL byte",
        "out",
    ),
    Case(
        "cli-path-too-long",
        CLI,
        "a path component of 300 characters",
        "pass a shorter path",
        lambda tmp, a: ["export", str(tmp / ("r" * 300)), "--out", str(tmp / "out")],
        "path too long for the file system",
        "out",
    ),
    Case(
        "cli-study-name-huge",
        CLI,
        "`tune --study-name` of 5,000 characters",
        "pass a short name",
        with_run("tune", "--out", "{tmp}/out", "--study-name", LONG),
        "--study-name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...': expected a printable name",
        "out",
    ),
    Case(
        "toml-huge-value-quoted-short",
        TOML,
        "`lr` = a 5,000-character string",
        "give a number",
        train_config(f'lr = "{LONG}"\n'),
        "key 'lr' must be float, got '" + "x" * 36 + "...",
        "out",
    ),
    Case(
        "node-catalogue-duplicate-ids",
        NODE,
        "catalogue.json lists an item twice",
        "use the list `fedseqrec partition` wrote",
        device('data-path="{csv}" catalogue-path="{tmp}/cat.json" client-id=1', ("cat.json", "[-1, 100, 101, 100]")),
        "item ID 100 is listed twice",
    ),
    Case(
        "node-config-huge-quoted-short",
        NODE,
        "a 5,000-character --node-config that is not key=value",
        "quote strings",
        device("client-id=" + "9" * 5000),
        "--node-config 'client-id=" + "9" * 30 + "...'",
    ),
    # damaged files the project wrote itself
    Case(
        "run-config-json-truncated",
        RUN,
        "config.json cut short",
        "copy the run folder again, or run it again",
        damaged_run("config.json", '{"data": ', "report"),
        "config.json: run file is not valid JSON (Expecting value at line 1, column 10)",
    ),
    Case(
        "run-config-json-list",
        RUN,
        "config.json holds a list",
        "copy the run folder again",
        damaged_run("config.json", "[1, 2]", "report"),
        "config.json: run file holds a list, not a JSON object",
    ),
    Case(
        "run-config-json-deep",
        RUN,
        "config.json nested 5,000 levels deep",
        "copy the run folder again",
        damaged_run("config.json", NESTED, "report"),
        "config.json: run file is nested too deeply",
    ),
    Case(
        "run-metrics-json-latin1",
        RUN,
        "metrics.json with Latin-1 bytes",
        "copy the run folder again",
        damaged_run("metrics.json", b'{"test": "\xe9"}', "report"),
        "metrics.json: run file is not UTF-8 text",
    ),
    Case(
        "run-metrics-json-wrong-type",
        RUN,
        "metrics.json with a test figure that is a string",
        "copy the run folder again",
        damaged_run("metrics.json", '{"test": {"ndcg@10": "high"}}', "report"),
        "metrics.json: run file: field 'test.ndcg@10': input should be a valid number",
    ),
    Case(
        "run-metrics-jsonl-not-objects",
        RUN,
        "metrics.jsonl lines that are lists",
        "copy the run folder again",
        damaged_run("metrics.jsonl", "[1]\n", "report"),
        "metrics.jsonl:1: not a JSON object",
    ),
    Case(
        "run-privacy-json-list",
        RUN,
        "privacy.json holds a list",
        "copy the run folder again",
        damaged_run("privacy.json", "[]", "export"),
        "privacy.json: privacy report holds a list, not a JSON object",
        "out",
    ),
    Case(
        "run-privacy-json-empty",
        RUN,
        "privacy.json emptied",
        "copy the run folder again",
        damaged_run("privacy.json", "", "audit"),
        "privacy.json: privacy report is empty",
    ),
    Case(
        "run-privacy-delta-out-of-range",
        RUN,
        "privacy.json with delta 2",
        "copy the run folder again",
        damaged_run("privacy.json", json.dumps({**PRIVACY, "delta": 2}), "audit"),
        "privacy.json: privacy report: field 'delta': input should be less than or equal to 1, got 2",
    ),
    Case(
        "run-privacy-duplicate-key",
        RUN,
        "privacy.json giving epsilon twice",
        "copy the run folder again",
        damaged_run("privacy.json", '{"epsilon": 1, "epsilon": 9}', "export"),
        "privacy.json: privacy report is not valid: key 'epsilon' given twice",
        "out",
    ),
    Case(
        "run-privacy-missing-field",
        RUN,
        "privacy.json without delta",
        "copy the run folder again",
        damaged_run("privacy.json", json.dumps({k: v for k, v in PRIVACY.items() if k != "delta"}), "export"),
        "privacy.json: privacy report: field 'delta': field required",
        "out",
    ),
    Case(
        "run-inputs-json-empty",
        RUN,
        "inputs.json emptied",
        "remove it to use the run's config alone",
        damaged_run("inputs.json", "", "ensemble"),
        "inputs.json: record of the run's inputs is empty",
        "out",
    ),
    Case(
        "run-inputs-json-bad-digest",
        RUN,
        "inputs.json with a sha256 that is not one",
        "remove it",
        damaged_run("inputs.json", json.dumps({"inputs": {"interactions": {"path": "x", "sha256": "zz"}}}), "ensemble"),
        "field 'inputs.interactions.sha256': string should match pattern",
        "out",
    ),
    Case(
        "run-model-pt-empty",
        RUN,
        "model.pt emptied",
        "copy the run folder again, or train it again",
        damaged_run("model.pt", b"", "personalize"),
        "model.pt: not a readable model file, truncated or corrupt (EOFError)",
        "out",
    ),
    Case(
        "run-model-pt-json",
        RUN,
        "model.pt holding JSON text",
        "copy the run folder again, or train it again",
        damaged_run("model.pt", "{}", "export"),
        "model.pt: not a readable model file",
        "out",
    ),
    Case(
        "study-db-not-sqlite",
        STUDY,
        "study.db overwritten with text",
        "move it away, or pick another --out",
        damaged_study(b"not a database\n"),
        "study.db: the study database is not a SQLite database",
    ),
    Case(
        "study-db-empty",
        STUDY,
        "study.db emptied",
        "move it away, or pick another --out",
        damaged_study(b""),
        "study.db: the study database is empty",
    ),
    Case(
        "study-db-truncated",
        STUDY,
        "study.db cut after its header",
        "move it away, or pick another --out",
        damaged_study(b"SQLite format 3\x00" + b"\x10\x00" + b"\x00" * 200),
        "study.db: the study database is damaged",
    ),
]


def _items_json(content: str | bytes):
    def change(folder: Path, assets: Assets) -> None:
        data = content.encode() if isinstance(content, str) else content
        (folder / "items.json").write_bytes(data)

    return change


def _items_vectors_empty():
    return lambda folder, assets: (folder / "item_vectors.npy").write_bytes(b"")


# Found by the fuzzer (tests/unit/test_fuzz_bad_input.py): each was an internal error before its fix.
FOUND_BY_FUZZER = [
    Case(
        "model-items-json-utf16",
        MODEL,
        "items.json saved as UTF-16",
        "copy the items.json of the same export again",
        recommend(_history(), model=broken_export(_items_json('{"item_ids": [-1]}'.encode("utf-16")))),
        "items.json: unreadable item mapping ('utf-8' codec can't decode byte 0xff",
    ),
    Case(
        "model-items-json-repeated-ids",
        MODEL,
        "items.json listing one item ID for every index",
        "copy the items.json of the same export",
        recommend(_history(), model=broken_export(_items_json(json.dumps({"item_ids": [0] * 13})))),
        "items.json: an item ID is listed twice",
    ),
    Case(
        "model-items-json-popularity-not-a-list",
        MODEL,
        "items.json whose popularity is one number",
        "copy the items.json of the same export",
        recommend(
            _history(),
            model=broken_export(_items_json(json.dumps({"item_ids": [-1] + list(range(100, 112)), "popularity": 0}))),
        ),
        "items.json: popularity has shape (), expected (13,)",
    ),
    Case(
        "node-catalogue-nested",
        NODE,
        "catalogue.json nested 2,000 lists deep",
        "use the list `fedseqrec partition` wrote",
        device('data-path="{csv}" catalogue-path="{tmp}/cat.json" client-id=1', ("cat.json", "[" * 2000 + "]" * 2000)),
        "cannot read the item catalogue (nested too deeply)",
    ),
    Case(
        "run-metrics-json-groups-wrong-type",
        RUN,
        "metrics.json whose metrics_by_group is a number",
        "copy the run folder again",
        damaged_run("metrics.json", json.dumps({"test": {"ndcg@10": 0.1}, "metrics_by_group": 10**30}), "report"),
        "metrics.json: run file: field 'metrics_by_group': input should be a valid dictionary",
    ),
    Case(
        "run-metrics-jsonl-deep",
        RUN,
        "metrics.jsonl with a line nested 5,000 lists deep",
        "copy the run folder again",
        damaged_run("metrics.jsonl", NESTED + "\n", "report"),
        "metrics.jsonl:1: not a JSON line (nested too deeply)",
    ),
    Case(
        "run-metrics-jsonl-wrong-type",
        RUN,
        "metrics.jsonl with a validation figure that is text",
        "copy the run folder again",
        damaged_run("metrics.jsonl", json.dumps({"epoch": 1, "validation": {"ndcg@10": "good"}}) + "\n", "report"),
        "metrics.jsonl:1: round row: field 'validation.ndcg@10': input should be a valid number",
    ),
    Case(
        "model-item-vectors-empty",
        MODEL,
        "item_vectors.npy emptied (mmr re-ranking reads it)",
        "copy the file of the same export",
        recommend(_history(), "--rerank", "mmr", model=broken_export(_items_vectors_empty())),
        "item_vectors.npy: unreadable item vectors (",
    ),
    Case(
        "run-metrics-json-baseline-null",
        RUN,
        "metrics.json whose popularity_baseline is null",
        "copy the run folder again",
        damaged_run("metrics.json", json.dumps({"test": {"ndcg@10": 0.1}, "popularity_baseline": None}), "report"),
        "metrics.json: run file: field 'popularity_baseline': input should be a valid dictionary",
    ),
]
CASES += FOUND_BY_FUZZER


def run_case(case: Case, tmp: Path, assets: Assets) -> tuple[int, str]:
    """Build the case in `tmp` and run it in this process; (exit code, stderr)."""
    import contextlib
    import io

    from fedseqrec.cli import main

    argv = case.build(tmp, assets)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def doc_table(rows: list[tuple[Case, str]]) -> str:
    """The markdown table of docs/bad-input.md from each case and the line it printed."""
    lines = ["| id | input | what is wrong | the message the user sees | what to do |", "|---|---|---|---|---|"]
    for case, message in rows:
        cells = [f"`{case.id}`", case.input, case.wrong, f"`{message}`", case.todo]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_doc(path: Path = DOC) -> None:
    """Run every case and rewrite the table between the markers of docs/bad-input.md."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.environ["FEDSEQREC_CACHE"] = str(scratch / "cache")
        assets = build_assets(scratch / "assets")
        rows = []
        for case in CASES:
            folder = scratch / "cases" / case.id
            folder.mkdir(parents=True)
            code, err = run_case(case, folder, assets)
            message = err.strip().replace(str(folder), "<dir>").replace(str(assets.export.parent), "<assets>")
            rows.append((case, message))
            if code != 2:
                print(f"{case.id}: exit {code}: {message}", file=sys.stderr)
    text = path.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    path.write_text(text[:start] + "\n" + doc_table(rows) + text[end:])


BEGIN, END = "<!-- corpus table: begin -->", "<!-- corpus table: end -->"

if __name__ == "__main__":
    write_doc(Path(sys.argv[1]) if len(sys.argv) > 1 else DOC)
