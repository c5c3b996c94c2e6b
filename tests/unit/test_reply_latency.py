"""The ServerApp's shorter waits: replies collected as they arrive (`server.prompt_grid`) and the
simulation engine's shorter look for new messages (`server.engine_pickup`)."""

from __future__ import annotations

import importlib
import threading
import time
from queue import Queue
from types import SimpleNamespace

from server import engine_pickup
from server.prompt_grid import IN_MEMORY_CAP_SECONDS, REMOTE_CAP_SECONDS, PromptGrid


def _reply(to: str):
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to))


class FakeGrid:
    """Replies turn up at given times after the push; records every pull."""

    def __init__(self, arrive_after: dict[str, float]):
        self.arrive_after, self.pulls, self.pushed_at = arrive_after, [], None

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return list(self.arrive_after)

    def pull_messages(self, ids):
        self.pulls.append(time.monotonic())
        now = time.monotonic() - self.pushed_at
        ready = [i for i in ids if self.arrive_after[i] <= now]
        for i in ready:
            self.arrive_after[i] = float("inf")  # a reply is pulled once
        return [_reply(i) for i in ready]

    def get_node_ids(self):
        return [7, 8]

    def close(self):
        return "closed"


def test_replies_are_collected_soon_after_they_arrive():
    grid = FakeGrid({"a": 0.05, "b": 0.12})
    prompt = PromptGrid(grid)
    started = time.monotonic()
    replies = prompt.send_and_receive(["m1", "m2"], timeout=None)
    took = time.monotonic() - started
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert took < 0.12 + 0.25  # Flower's remote grid waits 3 s between looks
    assert prompt.cap == REMOTE_CAP_SECONDS


def test_a_timeout_returns_what_came_and_stops_looking():
    grid = FakeGrid({"a": 0.0, "b": 60.0})
    started = time.monotonic()
    replies = PromptGrid(grid).send_and_receive(["m1", "m2"], timeout=0.3)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.3 <= time.monotonic() - started < 0.6
    assert grid.pulls[-1] - grid.pushed_at < 0.35  # no look after the deadline


def test_an_in_memory_grid_is_looked_at_every_few_milliseconds_and_the_rest_passes_through():
    grid = FakeGrid({"a": 0.2})
    grid.pull_interval = 0.1  # what marks Flower's InMemoryGrid
    prompt = PromptGrid(grid)
    assert prompt.cap == IN_MEMORY_CAP_SECONDS
    prompt.send_and_receive(["m"], timeout=5)
    gaps = [b - a for a, b in zip(grid.pulls, grid.pulls[1:])]
    assert max(gaps) < 0.05
    assert list(prompt.get_node_ids()) == [7, 8]
    assert prompt.close() == "closed"  # a grid's own extras too


class FakeState:
    def __init__(self, waiting: dict[int, list]):
        self.waiting, self.looks = waiting, 0

    def get_message_ins(self, node_id, limit):
        self.looks += 1
        out, self.waiting[node_id] = self.waiting[node_id][:limit], self.waiting[node_id][limit:]
        return out


def test_the_engine_loop_moves_every_message_promptly_and_stops_on_the_event():
    state, queue, stop = FakeState({1: ["x1", "x2"], 2: ["y1"]}), Queue(), threading.Event()
    loop = threading.Thread(target=engine_pickup.add_messages_to_queue, args=(state, queue, {1: 0, 2: 1}, stop))
    loop.start()
    time.sleep(0.05)
    state.waiting[2].append("y2")  # a message pushed while the loop runs
    time.sleep(0.05)
    stop.set()
    loop.join(timeout=2)
    assert not loop.is_alive()
    assert sorted(queue.queue) == ["x1", "x2", "y1", "y2"]
    assert state.looks >= 20  # Flower's own loop: ~2 looks a node in 0.1 s


def test_the_engine_loop_is_replaced_only_where_the_engine_is_loaded(monkeypatch):
    vce_api = importlib.import_module(engine_pickup.VCE_API)
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)  # restored after
    assert engine_pickup.shorten_message_pickup()
    assert vce_api.add_messages_to_queue is engine_pickup.add_messages_to_queue
    monkeypatch.delitem(__import__("sys").modules, engine_pickup.VCE_API)
    assert not engine_pickup.shorten_message_pickup()


def test_flowers_engine_still_has_the_loop_this_replaces():
    """A Flower upgrade that renames the loop would leave the 0.1 s look silently: fail here instead."""
    vce_api = importlib.import_module(engine_pickup.VCE_API)
    assert callable(vce_api.add_messages_to_queue)
    assert "add_messages_to_queue" in vce_api.run_api.__code__.co_names
