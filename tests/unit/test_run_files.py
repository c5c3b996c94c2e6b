"""The schemas of the JSON files fedseqrec reads back (common/run_files.py): each way a file can be
damaged is one DataError naming the file, the field and what to do; a good file passes unchanged."""

from __future__ import annotations

import json

import pytest

from common.errors import DataError
from common.run_files import CONFIG_FILE, AuditedPrivacyFile, InputsFile, PrivacyFile, check_sqlite, read_json

GOOD_PRIVACY = {"dp_mode": "server", "unit_of_privacy": "user", "delta": 1e-5, "epsilon": 2.5, "extra": [1]}


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "privacy report is empty"),
        (b'{"delta": ', "not valid JSON (Expecting value at line 1, column 11)"),
        (b'{"a": "\xe9"}', "not UTF-8 text (byte 0xe9 at 7)"),
        (b"[1, 2]", "holds a list, not a JSON object"),
        (b'"text"', "holds a string, not a JSON object"),
        (b'{"delta": 1, "delta": 2}', "key 'delta' given twice"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (json.dumps({**GOOD_PRIVACY, "delta": "small"}).encode(), "field 'delta': input should be a valid number"),
        (json.dumps({**GOOD_PRIVACY, "delta": float("nan")}).encode(), "field 'delta'"),
        (json.dumps({**GOOD_PRIVACY, "epsilon": -1}).encode(), "field 'epsilon': input should be greater than or"),
        (json.dumps({k: v for k, v in GOOD_PRIVACY.items() if k != "unit_of_privacy"}).encode(), "'unit_of_privacy'"),
    ],
)
def test_a_damaged_privacy_report_is_one_line(content, expect, tmp_path):
    path = tmp_path / "privacy.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as refused:
        read_json(path, AuditedPrivacyFile, what="privacy report")
    message = str(refused.value)
    assert message.startswith(f"{path}: privacy report") and expect in message and "\n" not in message
    assert len(message) < 400 and message.endswith("or run the command again")


def test_good_files_pass_with_their_extra_fields(tmp_path):
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps({**GOOD_PRIVACY, "epsilon": float("inf")}))  # no noise: json writes Infinity
    assert read_json(path, PrivacyFile)["extra"] == [1]
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1, "model": "gru", "augment": ""}))
    assert read_json(tmp_path / "config.json", CONFIG_FILE)["model"] == "gru"


def test_a_client_dp_report_passes_the_audits_schema(tmp_path):
    """Under client DP with a target epsilon each client calibrates its own noise, and privacy.json
    says so in words: `fedseqrec audit` on such a run once stopped on its own schema."""
    from server.privacy_report import PER_CLIENT_NOISE

    path = tmp_path / "privacy.json"
    path.write_text(json.dumps({**GOOD_PRIVACY, "dp_mode": "client", "noise_multiplier": PER_CLIENT_NOISE}))
    assert read_json(path, AuditedPrivacyFile, what="privacy report")["noise_multiplier"] == PER_CLIENT_NOISE
    path.write_text(json.dumps({**GOOD_PRIVACY, "noise_multiplier": -1.0}))
    with pytest.raises(DataError, match="noise_multiplier"):
        read_json(path, AuditedPrivacyFile, what="privacy report")


def test_a_saved_privacy_ledger_passes_the_audits_schema(tmp_path):
    """The audit reads each client's ledger as the ledger saves it; a schema that expected another
    shape stopped `fedseqrec audit` on every client DP-SGD run."""
    from common.privacy.ledger import PrivacyLedger
    from common.run_files import LedgerFile

    ledger = PrivacyLedger("rdp")
    ledger.record(noise_multiplier=1.25, sample_rate=0.25, steps=48)
    ledger.record(noise_multiplier=1.5, sample_rate=0.25, steps=12)
    path = tmp_path / "privacy_ledger.json"
    ledger.save(path)
    history = read_json(path, LedgerFile, what="privacy ledger")["history"]
    assert PrivacyLedger("rdp", [tuple(entry) for entry in history]).epsilon(1e-5) == ledger.epsilon(1e-5)
    path.write_text(json.dumps({"accountant": "rdp", "history": [[1.25, 2.0, 48]]}))  # a rate above 1
    with pytest.raises(DataError, match="history"):
        read_json(path, LedgerFile, what="privacy ledger")


def test_inputs_and_config_fields_are_typed(tmp_path):
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps({"inputs": {"interactions": {"path": "x.csv", "sha256": "0" * 64, "size": -3}}}))
    with pytest.raises(DataError, match=r"field 'inputs.interactions.size': input should be greater than or equal"):
        read_json(path, InputsFile)
    (tmp_path / "config.json").write_text(json.dumps({"lr": {"nested": 1}}))
    with pytest.raises(DataError, match="field 'lr"):
        read_json(tmp_path / "config.json", CONFIG_FILE)


def test_missing_and_folder_paths(tmp_path):
    with pytest.raises(DataError, match="summary not found"):
        read_json(tmp_path / "none.json", what="summary")
    with pytest.raises(DataError, match="is a folder, not the summary"):
        read_json(tmp_path, what="summary")


def test_a_study_database_is_checked_before_optuna_opens_it(tmp_path):
    import sqlite3

    good = tmp_path / "good.db"
    sqlite3.connect(good).execute("create table t (x)").connection.close()
    check_sqlite(good, "study database", "move it")
    check_sqlite(tmp_path / "absent.db", "study database", "move it")  # a new study: nothing to check
    (tmp_path / "text.db").write_text("hello")
    with pytest.raises(DataError, match="is not a SQLite database; move it"):
        check_sqlite(tmp_path / "text.db", "study database", "move it")
    cut = tmp_path / "cut.db"
    cut.write_bytes(good.read_bytes()[:120])
    with pytest.raises(DataError, match="damaged"):
        check_sqlite(cut, "study database", "move it")


def test_a_damaged_preprocessing_cache_is_built_again(tmp_path, monkeypatch):
    """A cache is ours to rebuild: a cut-short entry must neither crash nor be trusted."""
    from common.config import RunConfig
    from common.data.load import load_sequence_data

    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    settings = RunConfig.from_flat({"data": "synthetic", "synthetic-users": 40, "synthetic-items": 20}).data
    first = load_sequence_data(settings)
    entries = list((tmp_path / "cache" / "preprocessed").glob("*.npz"))
    assert len(entries) == 1
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    entries[0].with_suffix(".json").write_text("{")
    again = load_sequence_data(settings)
    assert again.num_items == first.num_items and again.report == first.report


def test_a_damaged_federation_checkpoint_is_one_line(tmp_path):
    from fedseqrec.launch.federate import checkpoint_round

    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match="checkpoint.pt: not a readable checkpoint, truncated or corrupt"):
        checkpoint_round(tmp_path)
    assert checkpoint_round(tmp_path / "none") == 0
