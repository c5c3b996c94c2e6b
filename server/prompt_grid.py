"""The grid the ServerApp talks through: Flower's, with replies collected as soon as they are in.

Flower's grids look for replies on a fixed beat: every 0.1 s in a simulation (`InMemoryGrid`) and
every 3 s in a deployment (`HttpGrid`). A main-job round computes for ~0.25 s, so the beat cost ~0.05 s a
round (a sixth); a deployment round of SecAgg+ has five exchanges, each waiting ~1.5 s for nothing.
`PromptGrid.send_and_receive` looks again after 5 ms, then ever less often, up to a cap: 5 ms on an
in-memory grid (a look is a dictionary lookup) and 0.2 s on a deployment's (a look is one request
to the SuperLink, a few a second). Everything else, Flower's workflows (SecAgg+) included, goes
through unchanged, and they wait through this method too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

FIRST_LOOK_SECONDS = 0.005
IN_MEMORY_CAP_SECONDS = 0.005
REMOTE_CAP_SECONDS = 0.2


class PromptGrid(Grid):
    """`grid` with a prompter `send_and_receive`; every other call is the grid's own."""

    def __init__(self, grid: Grid):
        self._grid = grid
        # Flower's in-memory grid is the one with a local LinkState and its own pull interval
        self.cap = IN_MEMORY_CAP_SECONDS if hasattr(grid, "pull_interval") else REMOTE_CAP_SECONDS

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl=None):
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull until every reply is in or `timeout` seconds have passed (None: no limit),
        as Flower's grids do, on a shorter beat."""
        waiting = set(self._grid.push_messages(messages))
        end = time.monotonic() + timeout if timeout is not None else None
        replies: list[Message] = []
        pause = FIRST_LOOK_SECONDS
        while waiting:
            arrived = list(self._grid.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            time.sleep(pause if end is None else max(0.0, min(pause, end - time.monotonic())))
            pause = min(pause * 1.5, self.cap)
        return replies

    def __getattr__(self, name):  # anything else a particular grid offers (close, ...)
        return getattr(self._grid, name)
