"""A full disk or a kill at checkpoint time: the previous checkpoint stays loadable, the run stops
saying why, and a resume continues from the previous checkpoint to the same model as a run without
the fault."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

import common.atomic_files as atomic_files
import common.model.checkpoint as checkpoint
from common.config import RunConfig
from common.errors import CheckpointError, DataError
from server.loop import run_rounds
from server.run_state import CHECKPOINT, RunState
from server.strategies import build_strategy

START = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}


def _state(round_: int, value: float) -> RunState:
    return RunState(fingerprint="f", round=round_, arrays={k: torch.full_like(v, value) for k, v in START.items()})


def _full_disk_part_way(monkeypatch):
    """torch.save writes some bytes of the temporary file, then the disk is full."""

    def save(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", save)


def _replace_fails(monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_files.os, "replace", replace)


def _fsync_fails(monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic_files.os, "fsync", fsync)


@pytest.mark.parametrize("fault", [_full_disk_part_way, _replace_fails, _fsync_fails])
def test_a_failed_write_keeps_the_previous_checkpoint_and_says_so(fault, tmp_path, monkeypatch):
    _state(1, 1.0).save(tmp_path)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with monkeypatch.context() as patch:
        fault(patch)
        with pytest.raises(CheckpointError) as info:
            _state(2, 2.0).save(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / CHECKPOINT) in message
    assert "cannot save round 2" in message and "previous checkpoint is kept" in message
    assert (tmp_path / CHECKPOINT).read_bytes() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]  # no temporary file left
    loaded = RunState.load(tmp_path, "f")
    assert loaded.round == 1 and all(torch.equal(v, torch.ones_like(v)) for v in loaded.arrays.values())


def test_a_temporary_file_left_by_a_kill_mid_write_is_ignored_and_removed(tmp_path):
    _state(1, 1.0).save(tmp_path)
    whole = (tmp_path / CHECKPOINT).read_bytes()
    leftover = tmp_path / f".{CHECKPOINT}.tmp4242"  # what a SIGKILL during torch.save leaves
    leftover.write_bytes(whole[: len(whole) // 3])
    loaded = RunState.load(tmp_path, "f")
    assert loaded.round == 1 and torch.equal(loaded.arrays["w"], torch.ones(4, 3))
    assert not leftover.exists()  # a full disk should not keep dead halves of checkpoints


def test_a_truncated_checkpoint_is_a_one_line_error_not_a_fresh_start(tmp_path):
    """Only a copy or a broken disk truncates checkpoint.pt itself (writes are atomic); starting over
    silently would throw the run away, so loading refuses and says what to do."""
    _state(1, 1.0).save(tmp_path)
    whole = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as info:
        RunState.load(tmp_path, "f")
    assert "\n" not in str(info.value) and "truncated or corrupt" in str(info.value)
    assert "choose a new out-dir" in str(info.value)


def test_the_write_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    """Without the fsync, a power cut after the rename can leave an empty checkpoint.pt."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic_files.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic_files.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    _state(1, 1.0).save(tmp_path)
    assert calls[:2] == ["fsync", "replace"] and calls[2:] == ["fsync"]  # the file, then the folder


# --- the round loop: a full disk in round 2 of 3, then a resume --------------------------------------


class PlusOneGrid:
    """Two nodes; each replies with the global weights + its node id, so every round moves the model."""

    def get_node_ids(self):
        return [1, 2]

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            arrays = {k: v + m.metadata.dst_node_id for k, v in m.content["arrays"].to_torch_state_dict().items()}
            content = RecordDict(
                {
                    "arrays": ArrayRecord(arrays),
                    "metrics": MetricRecord({"num-examples": 1, "unit-weight": 1, "train-loss": 0.5}),
                }
            )
            reply = Message(content=content, reply_to=m)
            replies.append(reply)
        return replies


class CrashingNodeGrid(PlusOneGrid):
    """Node 2 is down for its first `down` messages of round 2 (its reply never comes)."""

    def __init__(self, down: int):
        self.down = down

    def send_and_receive(self, messages, timeout=None):
        replies = super().send_and_receive(messages, timeout)
        if self.down and messages and messages[0].content["config"]["server-round"] == 2:
            self.down -= 1
            return [r for r in replies if r.metadata.src_node_id != 2]
        return replies


def test_a_round_a_crashed_node_missed_is_repeated_and_ends_with_the_uninterrupted_model(tmp_path, caplog):
    reference = _run(tmp_path / "reference", _state(0, 0.0))
    retried = _run(tmp_path / "retried", _state(0, 0.0), CrashingNodeGrid(down=2), **{"round-retries": 2})
    for key in START:
        np.testing.assert_array_equal(retried.arrays[key].numpy(), reference.arrays[key].numpy())
    assert [row["attempts"] for row in retried.history] == [1, 3, 1]
    assert "round 2 repeated (attempt 2 of 3" in caplog.text and "round 2 repeated (attempt 3 of 3" in caplog.text

    caplog.clear()  # without retries (or when they run out) the round is skipped, and the log says so
    skipped = _run(tmp_path / "skipped", _state(0, 0.0), CrashingNodeGrid(down=2), **{"round-retries": 1})
    assert "skipped" in skipped.history[1] and skipped.history[1]["attempts"] == 2
    assert "round 2 skipped after 2 attempts: 1 valid replies < min-replies 2" in caplog.text
    assert torch.allclose(skipped.arrays["w"], torch.full((4, 3), 3.0))  # two rounds moved the model


def _run(run_dir, state, grid=None, **keys):
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    config = RunConfig.from_flat(
        {
            "strategy": "fedavg",
            "clients-per-round": 2,
            "num-server-rounds": 3,
            **({"min-replies": 2, "retry-wait": 0.0} | keys if keys else {}),
        }
    )
    return run_rounds(
        grid or PlusOneGrid(),
        config,
        build_strategy(config),
        state,
        run_dir,
        lambda arrays, split: {"ndcg@10": 0.1},
        {1: 1, 2: 2},
        {},
    )


def test_a_full_disk_stops_the_run_and_a_resume_ends_with_the_uninterrupted_model(tmp_path, monkeypatch):
    reference = _run(tmp_path / "reference", _state(0, 0.0))
    assert reference.round == 3 and torch.allclose(reference.arrays["w"], torch.full((4, 3), 4.5))  # 3 x mean(1, 2)

    run_dir = tmp_path / "run"
    real_save = checkpoint.atomic_torch_save
    saves = []

    def disk_full_at_round_2(obj, path):
        saves.append(obj["round"])
        if obj["round"] == 2:
            with open(path.with_name(f".{path.name}.tmp{os.getpid()}"), "wb") as handle:
                handle.write(b"half")  # the write got this far
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, path)

    with monkeypatch.context() as patch:
        patch.setattr("server.run_state.atomic_torch_save", disk_full_at_round_2)
        with pytest.raises(CheckpointError, match="cannot save round 2 .*No space left on device"):
            _run(run_dir, _state(0, 0.0))
    assert saves == [1, 2]  # it stopped at once: no round 3 was trained without a checkpoint
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # the log still matches round 1

    resumed = RunState.load(run_dir, "f")
    assert resumed.round == 1 and torch.allclose(resumed.arrays["w"], torch.full((4, 3), 1.5))
    final = _run(run_dir, resumed)
    assert final.round == 3
    for key in START:
        np.testing.assert_array_equal(final.arrays[key].numpy(), reference.arrays[key].numpy())
    assert [row["round"] for row in final.history] == [1, 2, 3]


# --- a device's privacy ledger under SIGKILL ------------------------------------------------------------

LEDGER_WRITER = """
import sys
from common.privacy.ledger import PrivacyLedger
path = sys.argv[1]
ledger = PrivacyLedger.load(path, "rdp")
saves = 0
while True:  # a device spending one step after another, saving after each spend
    ledger.record(noise_multiplier=1.0, sample_rate=0.01, steps=1)
    ledger.save(path)
    saves += 1
    if saves == 1:  # this run's first spend is on disk: the kill may come from now on
        print("saved", flush=True)
"""


def test_a_ledger_killed_mid_save_is_whole_and_never_loses_a_recorded_spend(tmp_path):
    import random
    import subprocess
    import sys
    import time

    from common.privacy.ledger import PrivacyLedger

    path, steps, rng = tmp_path / "privacy_ledger.json", 0, random.Random(0)
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", LEDGER_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "saved"  # at least one spend of this run is saved
        time.sleep(rng.uniform(0.02, 0.2))
        writer.kill()  # SIGKILL: no clean-up, possibly mid-write
        writer.wait()
        ledger = PrivacyLedger.load(path, "rdp")  # whole JSON every time
        now = sum(s for _, _, s in ledger.history)
        assert now > steps  # the previous run's spends are all still there, and this run's add to them
        steps = now
    # A kill mid-write can leave a temporary file behind; it is never what a load reads.
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".privacy_ledger.json.tmp")} == {path.name}
    assert PrivacyLedger.load(path, "rdp").epsilon(1e-5) > 0


# --- a ServerApp that starts before its SuperNodes ---------------------------------------------------


class LateNodesGrid(PlusOneGrid):
    """No node for the first `late` asks (Flower's in-process simulation registers them a moment
    after the ServerApp starts); then two, each answering the identity query with its key."""

    def __init__(self, late: int):
        self.late, self.asked = late, 0

    def get_node_ids(self):
        self.asked += 1
        return [] if self.asked <= self.late else [1, 2]

    def send_and_receive(self, messages, timeout=None):
        return [
            Message(
                content=RecordDict({"metrics": MetricRecord({"client-key": 10 + m.metadata.dst_node_id})}), reply_to=m
            )
            for m in messages
        ]


def test_client_discovery_waits_for_nodes_that_register_after_the_serverapp_starts():
    from server.loop import discover_clients

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    keys, hosts = discover_clients(LateNodesGrid(late=3), timeout=5.0, wait=30.0)
    assert keys == {11: 1, 12: 2} and hosts == []
    keys, _ = discover_clients(LateNodesGrid(late=3), timeout=5.0)  # no wait (mid-run): nobody yet
    assert keys == {}
