"""`flower-supernode` with a set idle poll and heartbeat: Flower's own SuperNode, two timings changed.

Flower 1.42's SuperNode looks for a message every 3 s while idle, and declares a 30 s heartbeat:
the SuperLink takes a dead node for online until two beats are missed (60 s), and refuses a
restarted node with the same key until then. Neither is a command-line option. On a loopback
deployment, where every message waits for that look and a crash drill for that minute, this entry
point takes `--poll-interval S` and `--heartbeat-interval S` (the SuperLink accepts 10 s to 30 min),
removes them, sets both and runs Flower's SuperNode with the other arguments, unchanged.

    python -m fedseqrec.launch.supernode --poll-interval 0.2 --heartbeat-interval 10 --superlink ...

`tests/unit/test_supernode_timing.py` fails if Flower moves what this sets.
"""

from __future__ import annotations

import sys
import time
import types

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


def _take(argv: list[str], flag: str) -> float | None:
    if flag not in argv:
        return None
    at = argv.index(flag)
    try:
        value = float(argv[at + 1])
    except (IndexError, ValueError):
        raise SystemExit(f"fedseqrec.launch.supernode: {flag} needs a number of seconds") from None
    del argv[at : at + 2]
    return value


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    poll, beat = _take(argv, "--poll-interval"), _take(argv, "--heartbeat-interval")
    try:
        set_timings(poll, beat)
    except ValueError as exc:
        raise SystemExit(f"fedseqrec.launch.supernode: {exc}") from None
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
