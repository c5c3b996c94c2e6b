"""Runs remember their inputs (common/data/run_inputs.py): inputs.json with each file's location, size and
sha256; export, audit, ensemble, personalize and a resume use it without the environment, and say
in one line when a file moved or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.data.run_inputs import INPUTS_FILE, fingerprint, record_inputs, recorded_config
from common.data.synthetic import synthetic_interactions
from common.errors import DataError
from fedseqrec.cli import main
from server.run_state import config_fingerprint

FAST = ["--quiet", "--max-len", "8", "--emb-dim", "8", "--num-layers", "1", "--epochs", "1", "--eval-batch-size", "64"]


def _movielens_1m(base: Path, users: int = 40, seed: int = 1) -> Path:
    """A small stand-in for ML-1M in its own formats: ratings.dat, users.dat, movies.dat under base/ml-1m."""
    folder = base / "ml-1m"
    folder.mkdir(parents=True)
    frame = synthetic_interactions(users, 20, mean_length=9, seed=seed)
    lines = [f"{u}::{i}::4::{t}" for u, i, t in frame[["user_id", "item_id", "timestamp"]].itertuples(index=False)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    ids = sorted(set(frame["user_id"]))
    (folder / "users.dat").write_text("".join(f"{u}::{'FM'[u % 2]}::25::{u % 21}::00000\n" for u in ids))
    movies = sorted(set(frame["item_id"]))
    (folder / "movies.dat").write_text("".join(f"{m}::Film {m} (1990)::{'Comedy|Drama'[m % 2 :]}\n" for m in movies))
    return folder


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDSEQREC_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


@pytest.fixture
def trained(env, monkeypatch, capsys):
    """A centralized run on the stand-in ML-1M (item features, user groups), then no $FEDSEQREC_DATA_DIR."""
    folder = _movielens_1m(env / "data")
    run = env / "run"
    assert main(["train", "--data", "ml-1m", "--out", str(run), "--item-features", "genre", *FAST]) == 0
    monkeypatch.delenv("FEDSEQREC_DATA_DIR")
    capsys.readouterr()
    return run, folder


def _export_popularity(run: Path, out: Path, capsys) -> tuple[str, str]:
    assert main(["export", str(run), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    return json.loads((out / "metadata.json").read_text())["popularity"], err


def test_a_run_records_every_input_it_read(trained):
    run, folder = trained
    record = json.loads((run / INPUTS_FILE).read_text())["inputs"]
    assert set(record) == {"interactions", "users_file", "item_metadata"}
    for name, file in (("interactions", "ratings.dat"), ("users_file", "users.dat"), ("item_metadata", "movies.dat")):
        path = folder / file
        assert record[name]["path"] == str(path.resolve()) and record[name]["size"] == path.stat().st_size
        assert record[name]["sha256"] == fingerprint(path)["sha256"]
    assert record["interactions"]["setting"] == "data"


def test_fingerprints_are_cached_by_path_size_and_mtime(env):
    path = env / "file.csv"
    path.write_text("a,b\n")
    first = fingerprint(path)
    assert len(list((env / "cache" / "fingerprints").glob("*.json"))) == 1
    assert fingerprint(path) == first
    path.write_text("a,b,c\n")  # new size and mtime: hashed again
    assert fingerprint(path)["sha256"] != first["sha256"]
    assert len(list((env / "cache" / "fingerprints").glob("*.json"))) == 2


def test_export_finds_the_data_without_the_environment_and_says_when_it_moved_or_changed(trained, capsys):
    run, folder = trained
    popularity, _ = _export_popularity(run, run.parent / "e1", capsys)
    assert popularity.startswith("training item counts")  # no $FEDSEQREC_DATA_DIR needed
    moved = run.parent / "moved"
    shutil.move(folder.parent, moved)
    popularity, _ = _export_popularity(run, run.parent / "e2", capsys)
    assert "the interactions file that" in popularity and "is gone" in popularity
    # the environment points at the moved copy: used, with a note that names both places
    import os

    os.environ["FEDSEQREC_DATA_DIR"] = str(moved)
    try:
        popularity, err = _export_popularity(run, run.parent / "e3", capsys)
        assert popularity.startswith("training item counts")
        assert err.count("note:") == 1 and str(moved / "ml-1m" / "ratings.dat") in err
        with open(moved / "ml-1m" / "ratings.dat", "a") as handle:
            handle.write("1::1::4::1\n")  # the copy changed: a different file now
        popularity, _ = _export_popularity(run, run.parent / "e4", capsys)
        assert "is not the same file" in popularity and "sha256" in popularity
    finally:
        del os.environ["FEDSEQREC_DATA_DIR"]


def test_audit_uses_the_recorded_data_and_stops_in_one_line_when_it_changed(trained, capsys):
    run, folder = trained
    assert main(["audit", str(run), "--users", "10", "--leakage-users", "1"]) == 0
    with open(folder / "ratings.dat", "a") as handle:
        handle.write("1::1::4::1\n")
    capsys.readouterr()
    assert main(["audit", str(run), "--users", "10", "--leakage-users", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the interactions file changed since" in err[0] and str(folder / "ratings.dat") in err[0]


def test_ensemble_uses_the_recorded_data_and_members_must_have_read_the_same(trained, monkeypatch, capsys):
    run, folder = trained
    monkeypatch.setenv("FEDSEQREC_DATA_DIR", str(folder.parent))
    second = run.parent / "second"
    assert main(["train", "--data", "ml-1m", "--out", str(second), "--model", "gru", *FAST]) == 0
    monkeypatch.delenv("FEDSEQREC_DATA_DIR")
    assert main(["ensemble", str(run), str(second), "--out", str(run.parent / "ens")]) == 0
    # a member whose record names other data (same catalogue settings, different content)
    record = json.loads((second / INPUTS_FILE).read_text())
    record["inputs"]["interactions"]["sha256"] = "0" * 64
    (second / INPUTS_FILE).write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["ensemble", str(run), str(second), "--out", str(run.parent / "ens2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "members must share their data" in err[0]


def test_personalize_records_its_inputs_so_that_its_model_exports_like_the_run(trained, capsys):
    run, folder = trained
    history = run.parent / "history.csv"
    synthetic_interactions(40, 20, mean_length=9, seed=1).query("user_id == 3").to_csv(history, index=False)
    out = run.parent / "mine"
    assert main(["personalize", str(run), "--history", str(history), "--out", str(out), "--steps", "2"]) == 0
    record = json.loads((out / INPUTS_FILE).read_text())["inputs"]
    assert record["global_model"]["sha256"] == fingerprint(run / "model.pt")["sha256"]
    assert record["history"]["path"] == str(history.resolve())
    assert record["interactions"] == json.loads((run / INPUTS_FILE).read_text())["inputs"]["interactions"]
    popularity, _ = _export_popularity(out, run.parent / "e-mine", capsys)
    assert popularity.startswith("training item counts")


def test_a_resume_reads_its_inputs_where_the_run_found_them(env, monkeypatch, capsys):
    from fedseqrec.launch.federate import resumed_inputs

    folder = _movielens_1m(env / "data")
    run = env / "run"
    run.mkdir()
    config = RunConfig.from_flat({"data": "ml-1m", "init-model": ""})
    record_inputs(run, config)
    monkeypatch.delenv("FEDSEQREC_DATA_DIR")
    overrides = {}
    pinned = resumed_inputs(run, config, overrides)
    assert overrides == {"data-dir": str(env / "data"), "users-file": str(folder / "users.dat")}
    assert pinned.data.data_dir == str(env / "data")
    # where the data lives does not decide the results: the checkpoint's fingerprint allows the resume
    assert config_fingerprint(pinned.to_flat()) == config_fingerprint(config.to_flat())
    record_inputs(run, pinned)  # what the resumed ServerApp does: the same content, accepted
    (folder / "users.dat").rename(env / "users.dat")
    with pytest.raises(DataError, match="the users file that .* read before is not there now"):
        record_inputs(run, pinned)
    (env / "users.dat").rename(folder / "users.dat")
    with open(folder / "ratings.dat", "a") as handle:
        handle.write("1::1::4::1\n")
    with pytest.raises(DataError, match="the interactions file changed since"):
        record_inputs(run, pinned)
    with pytest.raises(DataError, match="the interactions file changed since"):
        resumed_inputs(run, config, {})


def test_init_model_and_catalogue_are_recorded_and_runs_without_a_record_are_read_as_before(env, tmp_path):
    model = tmp_path / "old" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps([0, 1, 2]))
    config = RunConfig.from_flat(
        {"catalogue-path": str(catalogue), "federated-evaluation": True, "init-model": str(model)}
    )
    run = tmp_path / "run"
    run.mkdir()
    assert recorded_config(run, config) is config  # no inputs.json: an older run, its config as it is
    record = record_inputs(run, config)["inputs"]
    assert set(record) == {"catalogue", "init_model"}  # a server with a catalogue reads no interactions
    assert record["init_model"]["sha256"] == fingerprint(model)["sha256"]
    moved = tmp_path / "elsewhere.pt"
    shutil.move(model, moved)
    with pytest.raises(DataError, match="the init model that .* is gone"):
        recorded_config(run, config)
    config = RunConfig.from_flat({**config.to_flat(), "init-model": str(moved)})
    assert recorded_config(run, config).federation.init_model == str(moved.resolve())
    assert np.array_equal(json.loads(catalogue.read_text()), [0, 1, 2])
