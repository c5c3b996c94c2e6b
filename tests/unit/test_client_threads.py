"""A ClientApp message trains and evaluates with the run config's `num-threads`: a SuperNode starts a
fresh ClientApp process per message, and several at once on one machine each taking every core made
them wait on one another's OpenMP threads."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from common.config import RunConfig
from common.training.step import model_for

BASE = {
    "data": "synthetic",
    "synthetic-users": 20,
    "synthetic-items": 30,
    "partition": "iid",
    "num-partitions": 2,
    "model": "sasrec",
    "emb-dim": 8,
    "num-layers": 1,
    "max-len": 10,
    "dropout": 0.0,
}


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _ask(kind: str, flat: dict, **round_config) -> tuple[Message, Context]:
    """A `kind` message to client 0 of `flat`'s partition, as the server sends it (config `round_config`)."""
    config = RunConfig.from_flat(flat)
    arrays = model_for(config.model, config.data, 30, seed=0).arrays()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": 1, **round_config})})
    context = Context(
        run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config=config.to_flat()
    )
    return Message(content=content, message_type=kind, dst_node_id=7), context


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_message_runs_on_the_configured_threads(two_threads, kind):
    from client import handlers

    msg, context = _ask(kind, {**BASE, "num-threads": 1})
    answer = getattr(handlers, kind)(msg, context)
    assert not answer.has_error()
    assert torch.get_num_threads() == 1


def test_num_threads_zero_leaves_torchs_own(two_threads):
    from client import handlers

    msg, context = _ask("train", {**BASE, "num-threads": 0})
    assert not handlers.train(msg, context).has_error()
    assert torch.get_num_threads() == 2
