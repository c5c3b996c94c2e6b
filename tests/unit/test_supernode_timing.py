"""fedseqrec/launch/supernode.py: Flower's SuperNode with its idle poll and heartbeat set; fails if
Flower moves what it sets (the poll would silently stay 3 s, the heartbeat 30 s)."""

from __future__ import annotations

import inspect
import re
import time

import pytest
from flwr.supercore import heartbeat
from flwr.supernode import fleet_http_connection, start_client_internal

from fedseqrec.launch import supernode


@pytest.fixture
def restored(monkeypatch):
    """Whatever set_timings changes in Flower's modules is put back after the test."""
    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)
    monkeypatch.setattr(fleet_http_connection, "HEARTBEAT_DEFAULT_INTERVAL", 30)
    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", 30)


def test_flower_still_polls_and_beats_through_what_is_set():
    loop = inspect.getsource(start_client_internal.start_client_internal)
    assert f"time.sleep({supernode.FLOWER_IDLE_POLL:g})" in loop  # the idle look, through the module's `time`
    assert start_client_internal.time is time
    # take_turns wraps the loop's pull and push, which it calls by their module names
    assert "run_id = _pull_and_store_message(" in loop and "_push_messages(" in loop
    assert "heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL" in inspect.getsource(fleet_http_connection)
    assert "HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT" in inspect.getsource(heartbeat.HeartbeatSender._run)


def test_the_idle_poll_is_capped_and_the_heartbeat_declared(restored):
    supernode.set_timings(0.05, 10.0)
    started = time.monotonic()
    start_client_internal.time.sleep(3)  # what the SuperNode does after an empty pull
    assert time.monotonic() - started < 1.0
    assert start_client_internal.time.monotonic is time.monotonic  # the rest of `time` unchanged
    assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == heartbeat.HEARTBEAT_DEFAULT_INTERVAL == 10.0
    assert time.sleep is not start_client_internal.time.sleep  # nothing else in the process is capped


def test_none_leaves_flowers_timings(restored):
    supernode.set_timings(None, None)
    assert start_client_internal.time is time and fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == 30


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--heartbeat-interval", "5"], "the SuperLink accepts 10"),
        (["--poll-interval", "0"], "give seconds in (0, 60]"),
        (["--poll-interval", "soon"], "--poll-interval needs a number of seconds"),
        (["--poll-interval"], "--poll-interval needs a number of seconds"),
        (["--turns", "2"], "--turns N (a whole number >= 1) and --turns-dir DIR go together"),
        (["--turns", "0", "--turns-dir", "x"], "--turns N (a whole number >= 1)"),
        (["--turns", "1.5", "--turns-dir", "x"], "--turns N (a whole number >= 1)"),
    ],
)
def test_bad_timings_are_refused_naming_the_flag(restored, argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        supernode.main([*argv, "--superlink", "127.0.0.1:1"])


def test_the_flags_are_taken_out_before_flower_parses_the_rest():
    argv = ["--poll-interval", "0.2", "--superlink", "127.0.0.1:9092", "--heartbeat-interval", "12", "--insecure"]
    assert supernode._take(argv, "--poll-interval") == 0.2
    assert supernode._take(argv, "--heartbeat-interval") == 12.0
    assert argv == ["--superlink", "127.0.0.1:9092", "--insecure"]


def test_turns_let_at_most_that_many_supernodes_hold_a_message(tmp_path):
    """Six SuperNodes' loops (threads with a pull and a push like Flower's) on two turns: never more
    than two between a pulled message and its pushed reply; a pull that finds nothing gives its turn
    back at once; every message is answered."""
    import threading
    import types

    busy, most, lock = [0], [0], threading.Lock()

    def pull(**kwargs):
        if kwargs["empty"]:
            return None
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        return 7  # a run id: a message was pulled

    def push(**kwargs):
        time.sleep(0.05)  # the ClientApp at work
        with lock:
            busy[0] -= 1

    answered = []

    def loop(index):
        node = types.SimpleNamespace(_pull_and_store_message=pull, _push_messages=push)  # one SuperNode's loop
        supernode.take_turns(2, tmp_path / "turns", node)
        for message in range(3):
            assert node._pull_and_store_message(empty=True) is None  # an idle look returns its turn
            if node._pull_and_store_message(empty=False) is not None:
                node._push_messages()
                answered.append((index, message))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answered) == 18 and 1 <= most[0] <= 2
    assert sorted(p.name for p in (tmp_path / "turns").iterdir()) == ["turn-0", "turn-1"]
