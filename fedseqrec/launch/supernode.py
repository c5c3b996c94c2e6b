"""`flower-supernode` with a set idle poll and heartbeat (and turns): Flower's own SuperNode, its timing changed.

Flower 1.42's SuperNode looks for a message every 3 s while idle, and declares a 30 s heartbeat:
the SuperLink takes a dead node for online until two beats are missed (60 s), and refuses a
restarted node with the same key until then. Neither is a command-line option. On a loopback
deployment, where every message waits for that look and a crash drill for that minute, this entry
point takes `--poll-interval S` and `--heartbeat-interval S` (the SuperLink accepts 10 s to 30 min),
removes them, sets both and runs Flower's SuperNode with the other arguments, unchanged.

    python -m fedseqrec.launch.supernode --poll-interval 0.2 --heartbeat-interval 10 --superlink ...

`--turns N --turns-dir DIR`: one machine standing in for many devices (`take_turns`): at most N
ClientApps of all the SuperNodes given DIR run at once.

`tests/unit/test_supernode_timing.py` fails if Flower moves what this sets.
"""

from __future__ import annotations

import fcntl
import sys
import time
import types
from pathlib import Path

FLOWER_IDLE_POLL = 3.0  # s, `start_client_internal`'s sleep after an empty pull (Flower 1.42)


def _capped_time(cap: float) -> types.ModuleType:
    """`time`, but every sleep lasts at most `cap` seconds (the SuperNode's loop only polls with it)."""
    capped = types.ModuleType("time")
    capped.__dict__.update(time.__dict__)
    capped.sleep = lambda seconds: time.sleep(min(float(seconds), cap))
    return capped


def set_timings(poll_interval: float | None, heartbeat_interval: float | None) -> None:
    """Set the SuperNode's idle poll (seconds between empty pulls; also its wait for a reply to
    push) and the heartbeat it declares (and sends at Flower's 0.8 x (interval - 5 s) rhythm)."""
    from flwr.common import constant
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection, start_client_internal

    if poll_interval is not None:
        if not 0 < poll_interval <= 60:
            raise ValueError(f"--poll-interval {poll_interval}: give seconds in (0, 60]")
        start_client_internal.time = _capped_time(poll_interval)
    if heartbeat_interval is not None:
        low, high = constant.HEARTBEAT_MIN_INTERVAL, constant.HEARTBEAT_MAX_INTERVAL
        if not low <= heartbeat_interval <= high:
            raise ValueError(f"--heartbeat-interval {heartbeat_interval}: the SuperLink accepts {low} to {high} s")
        fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_interval
        heartbeat.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_interval


def take_turns(turns: int, folder: Path, node=None) -> None:
    """The SuperNode pulls a message only while it holds one of `turns` machine-wide turns, and keeps
    it until its reply is pushed: at most `turns` ClientApps of all the SuperNodes on this machine
    run at once.

    One machine standing in for many devices has a few cores for all their ClientApps; started
    together (32 SuperNodes: 32 processes importing torch on 2 cores), each takes so long that its
    task token expires before its first heartbeat, its SuperNode starts another, and they pile up.
    A turn is an exclusive `flock` on one of `turns` files in `folder`, shared by every SuperNode
    given the same folder; the kernel drops it when its holder dies, so a killed SuperNode never
    keeps one."""
    if node is None:
        from flwr.supernode import start_client_internal as node
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pull, push = node._pull_and_store_message, node._push_messages
    held: list = []

    def wait_for_a_turn():
        while True:
            for index in range(turns):
                handle = open(folder / f"turn-{index}", "a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return handle
                except BlockingIOError:
                    handle.close()
            time.sleep(0.02)

    def pull_in_turn(*args, **kwargs):
        turn = wait_for_a_turn()
        try:
            run_id = pull(*args, **kwargs)
        except BaseException:
            turn.close()
            raise
        if run_id is None:
            turn.close()  # nothing to do: the turn goes to the next SuperNode
        else:
            held.append(turn)  # until the reply is pushed
        return run_id

    def push_in_turn(*args, **kwargs):
        try:
            return push(*args, **kwargs)
        finally:
            while held:
                held.pop().close()

    node._pull_and_store_message, node._push_messages = pull_in_turn, push_in_turn


def _take(argv: list[str], flag: str, convert=float, what: str = "a number of seconds"):
    """Remove `flag VALUE` from argv and return VALUE converted; None where the flag is absent."""
    if flag not in argv:
        return None
    at = argv.index(flag)
    try:
        value = convert(argv[at + 1])
    except (IndexError, ValueError):
        raise SystemExit(f"fedseqrec.launch.supernode: {flag} needs {what}") from None
    del argv[at : at + 2]
    return value


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    poll, beat = _take(argv, "--poll-interval"), _take(argv, "--heartbeat-interval")
    turns, turns_dir = _take(argv, "--turns", what="a number"), _take(argv, "--turns-dir", str, "a folder")
    if (turns is None) != (turns_dir is None) or (turns is not None and (turns < 1 or turns != int(turns))):
        raise SystemExit("fedseqrec.launch.supernode: --turns N (a whole number >= 1) and --turns-dir DIR go together")
    try:
        set_timings(poll, beat)
    except ValueError as exc:
        raise SystemExit(f"fedseqrec.launch.supernode: {exc}") from None
    if turns is not None:
        take_turns(int(turns), Path(turns_dir))
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
