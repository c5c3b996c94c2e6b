"""A shorter wait between a round's messages and the simulation engine picking them up.

Flower 1.42's simulation engine moves the ServerApp's messages from its LinkState to the workers in a
thread that looks every 0.1 s (`vce_api.add_messages_to_queue`): ~0.05 s of waiting at the start of
every round, a sixth of a main-job round (0.3 s). The ServerApp runs in the engine's process, so it
puts in that thread's place the same loop with a shorter look: every 5 ms, or twice the time a look
takes, whichever is longer (a look at 6,040 one-user nodes takes milliseconds, and the loop must not
spin a core). Only the wait changes: the same messages, in the same order, to the same queue.

It takes effect only in a process where Flower's simulation engine is already imported (the
`flwr-simulation` process, or a launcher that runs the engine itself) and before the engine starts its
loop: the ServerApp module loads while Ray starts, seconds before. Elsewhere (a deployment's
ServerApp) it does nothing. A Flower whose engine lacks the loop is left as it is.
"""

from __future__ import annotations

import sys
import threading
import time
from queue import Queue

VCE_API = "flwr.server.superlink.fleet.vce.vce_api"
LOOK_SECONDS = 0.005


def add_messages_to_queue(state, queue: Queue, nodes_mapping, f_stop: threading.Event) -> None:
    """`vce_api.add_messages_to_queue` with a look every LOOK_SECONDS (at least twice a look's time)."""
    while not f_stop.is_set():
        started = time.monotonic()
        for node_id in nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(max(LOOK_SECONDS, 2 * (time.monotonic() - started)))


def shorten_message_pickup() -> bool:
    """Put the shorter loop in the engine's place; True when it did (the engine is loaded and has one)."""
    engine = sys.modules.get(VCE_API)
    if engine is None or not callable(getattr(engine, "add_messages_to_queue", None)):
        return False
    engine.add_messages_to_queue = add_messages_to_queue
    return True
