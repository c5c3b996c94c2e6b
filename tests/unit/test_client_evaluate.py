"""Federated evaluation on a client: one message may ask for several splits (the release asks for
test and validation at once, so that a device starts one ClientApp process for them, not two), and
it answers each as a message of its own would."""

from __future__ import annotations

import pytest

from tests.unit.test_client_threads import BASE, _ask


def _evaluate(split: str) -> dict:
    from client import handlers

    msg, context = _ask("evaluate", {**BASE, "num-threads": 1}, split=split)
    return dict(handlers.evaluate(msg, context).content["metrics"])


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
