"""The in-process simulation backend (fedseqrec/launch/in_process.py): the ClientApp sees a copy of
each message and context, as a Ray actor would, and a handler's exception is reported as Flower's
Ray backend reports it. Whole runs on it: tests/e2e (conftest._start)."""

from __future__ import annotations

import sys

import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedseqrec.launch.in_process import RAY_BACKEND_MODULE, InProcessBackend, in_process_backend
from fedseqrec.launch.simulate import simulate

app = ClientApp()


@pytest.fixture(autouse=True)
def _server_identity():
    """Messages are stamped with their sender's task identity (as flwr-simulation sets it)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_torch_state_dict()
    arrays["w"] += 1.0  # changes this copy only
    context.state["seen"] = MetricRecord({"count": 1})
    if msg.content["config"]["fail"]:
        raise RuntimeError("a client failed")
    return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)


def _message(fail: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": torch.zeros(3)}), "config": MetricRecord({"fail": fail})})
    return Message(content, dst_node_id=7, message_type="train")


def _backend(threads: float = 1) -> InProcessBackend:
    backend = InProcessBackend({"client_resources": {"num_cpus": threads}})
    backend.build(lambda: app)
    return backend


def test_the_client_app_gets_copies_and_its_context_comes_back(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    message, context = _message(fail=0), Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    reply, updated = _backend().process_message(message, context)
    assert torch.equal(reply.content["arrays"].to_torch_state_dict()["w"], torch.ones(3))
    assert torch.equal(message.content["arrays"].to_torch_state_dict()["w"], torch.zeros(3))  # the engine's copy
    assert "seen" in updated.state and "seen" not in context.state


def test_a_failing_handler_is_a_client_app_exception(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ClientAppException, match="a client failed"):
        _backend().process_message(_message(fail=1), context)


def test_the_client_threads_are_the_cpus_a_client_gets(monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    _backend(threads=2)
    assert threads == [2]


def test_the_stand_in_is_there_only_while_the_context_is_open():
    before = sys.modules.get(RAY_BACKEND_MODULE)
    with in_process_backend():
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

        assert RayBackend is InProcessBackend
    assert sys.modules.get(RAY_BACKEND_MODULE) is before


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [({"backend": "threads"}, "not one of"), ({"backend": "in-process", "ray_address": "127.0.0.1:6379"}, "no Ray")],
)
def test_simulate_names_a_bad_backend_before_anything_starts(kwargs, says):
    with pytest.raises(ValueError, match=says):
        simulate({"data": "synthetic"}, 2, **kwargs)
