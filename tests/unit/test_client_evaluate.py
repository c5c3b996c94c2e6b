"""Federated evaluation on a client: one message may ask for several splits (the release asks for
test and validation at once, so that a device starts one ClientApp process for them, not two), and
it answers each as a message of its own would."""

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
    "synthetic-users": 24,
    "synthetic-items": 30,
    "partition": "iid",
    "num-partitions": 2,
    "model": "sasrec",
    "emb-dim": 8,
    "num-layers": 1,
    "max-len": 10,
    "dropout": 0.0,
    "num-threads": 1,
}


def _evaluate(split: str) -> dict:
    from client import handlers

    config = RunConfig.from_flat(BASE)
    torch.manual_seed(0)
    arrays = model_for(config.model, config.data, 30, seed=5).arrays()
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"split": split, "server-round": 0})})
    context = Context(
        run_id=1, node_id=7, node_config={"partition-id": 1}, state=RecordDict(), run_config=config.to_flat()
    )
    answer = handlers.evaluate(Message(content=content, message_type="evaluate", dst_node_id=7), context)
    return dict(answer.content["metrics"])


def test_one_message_for_two_splits_answers_each_as_its_own_message_would():
    both = _evaluate("test,validation")
    test, validation = _evaluate("test"), _evaluate("validation")
    assert both["num-examples"] == test["num-examples"] == validation["num-examples"] > 0
    assert {f"test/{k}" for k in test if k != "num-examples"} | {
        f"validation/{k}" for k in validation if k != "num-examples"
    } == set(both) - {"num-examples"}
    for key in ("ndcg@10", "hr@10", "mrr@10"):
        assert both[f"test/{key}"] == test[key]
        assert both[f"validation/{key}"] == validation[key]
    assert test["ndcg@10"] != validation["ndcg@10"]  # two different held-out items: the keys are not mixed up


def test_an_unknown_split_is_refused_by_name():
    with pytest.raises(ValueError, match="'train' is not one of validation, test"):
        _evaluate("test,train")
