"""Faults and attacks at the server: reply checks, dropped and late replies, min-replies, and the
Byzantine-robust strategies against numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from common.config import RunConfig
from common.errors import ConfigError
from server.loop import NO_UPDATE, train_round
from server.reply_checks import reply_problem
from server.strategies import build_strategy

GLOBAL = {"w": np.zeros((4, 3), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def _message(arrays: dict | None, examples, dst: int = 3, src_reply_to: Message | None = None) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    ask = src_reply_to or Message(
        content=RecordDict({"config": ConfigRecord({})}), message_type="train", dst_node_id=dst
    )
    content = RecordDict({"metrics": MetricRecord({"num-examples": examples, "unit-weight": 1})})
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return Message(content=content, reply_to=ask)


def _global() -> ArrayRecord:
    return ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in GLOBAL.items()})


@pytest.mark.parametrize(
    "arrays, examples, why",
    [
        ({"w": np.ones((4, 3), np.float32)}, 5, "keys differ"),
        ({**GLOBAL, "extra": np.ones(2, np.float32)}, 5, "keys differ"),
        ({"w": np.ones((3, 4), np.float32), "b": GLOBAL["b"]}, 5, "shape"),
        ({"w": np.ones((4, 3), np.float64), "b": GLOBAL["b"]}, 5, "dtype"),
        ({"w": np.full((4, 3), np.nan, np.float32), "b": GLOBAL["b"]}, 5, "NaN or infinite"),
        ({"w": np.full((4, 3), np.inf, np.float32), "b": GLOBAL["b"]}, 5, "NaN or infinite"),
        ({"w": np.full((4, 3), 10, np.float32), "b": GLOBAL["b"]}, 5, "max-update-norm"),
        (GLOBAL, 0, "positive integer"),
        (GLOBAL, -3, "positive integer"),
        (GLOBAL, 2.5, "positive integer"),
        (GLOBAL, 10_000, "more than this client can hold"),
    ],
)
def test_each_kind_of_bad_reply_is_named(arrays, examples, why):
    reply = _message(arrays, examples)
    assert why in reply_problem(reply, _global(), max_update_norm=5.0, max_examples=1000)


def test_a_good_reply_passes():
    good = {"w": np.full((4, 3), 0.5, np.float32), "b": np.ones(3, np.float32)}
    assert reply_problem(_message(good, 7), _global(), max_update_norm=5.0, max_examples=1000) is None
    assert np.sqrt(12 * 0.25 + 3) < 5.0


class ScriptedGrid:
    """A grid whose nodes answer with scripted arrays (None: the node misses the deadline; "error": the
    node's ClientApp failed, e.g. killed by Ray's memory monitor)."""

    def __init__(self, answers: dict[int, dict | None]):
        self.answers = answers

    def get_node_ids(self):
        return list(self.answers)

    def send_and_receive(self, messages, timeout=None):
        return [
            Message(Error(code=0, reason="ray.exceptions.OutOfMemoryError"), reply_to=m)
            if self.answers[m.metadata.dst_node_id] == "error"
            else _message(self.answers[m.metadata.dst_node_id], 4, src_reply_to=m)
            for m in messages
            if self.answers[m.metadata.dst_node_id] is not None
        ]


def _round(answers, min_replies=1, strategy="fedavg"):
    config = RunConfig.from_flat({"strategy": strategy, "clients-per-round": len(answers)})
    grid = ScriptedGrid(answers)
    return train_round(
        grid,
        build_strategy(config),
        1,
        _global(),
        list(answers),
        ConfigRecord({}),
        5.0,
        check=lambda r: reply_problem(r, _global(), max_update_norm=100.0),
        min_replies=min_replies,
    )


def test_bad_replies_never_reach_the_model_and_late_ones_are_counted():
    good = {"w": np.ones((4, 3), np.float32), "b": np.ones(3, np.float32)}
    poisoned = {"w": np.full((4, 3), np.nan, np.float32), "b": np.ones(3, np.float32)}
    huge = {"w": np.full((4, 3), 1e6, np.float32), "b": np.ones(3, np.float32)}
    arrays, stats, _ = _round({1: good, 2: poisoned, 3: huge, 4: None})
    assert stats["replied"] == 1 and stats["invalid"] == 2 and stats["late"] == 1
    assert np.allclose(arrays["w"].numpy(), 1.0)  # only the good reply was averaged


def test_a_round_below_min_replies_is_skipped():
    good = {"w": np.ones((4, 3), np.float32), "b": np.ones(3, np.float32)}
    arrays, stats, _ = _round({1: good, 2: good, 3: None}, min_replies=3)
    assert arrays is None and "min-replies 3" in stats["skipped"]


@pytest.mark.parametrize("answers", [{1: "error", 2: "error"}, {1: None, 2: None}, {1: "error", 2: None}])
def test_a_round_where_no_node_answered_is_skipped_and_says_so(answers):
    """A round that trained nobody (every node failed or was late) is a skipped round: under Poisson DP
    the round log withholds `replied` and `failed` (the cohort size is data), so `skipped`, an
    availability fact, is all that tells it apart from a round that trained."""
    arrays, stats, _ = _round(answers)
    assert arrays is None
    assert stats["skipped"] == NO_UPDATE  # no counts in the reason: on one-user nodes they are the cohort size
    assert stats["replied"] == 0
    assert stats["failed"] == sum(a == "error" for a in answers.values())
    assert stats["late"] == sum(a is None for a in answers.values())


def test_a_round_whose_every_reply_was_dropped_is_skipped():
    poisoned = {"w": np.full((4, 3), np.nan, np.float32), "b": np.ones(3, np.float32)}
    arrays, stats, _ = _round({1: poisoned, 2: poisoned})
    assert arrays is None and stats["skipped"] == NO_UPDATE and stats["invalid"] == 2


def _updates(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)} for _ in range(n)
    ]


def _flat(update: dict) -> np.ndarray:
    return np.concatenate([update["w"].ravel(), update["b"].ravel()])


def _aggregate(strategy: str, updates: list[dict], **keys) -> np.ndarray:
    config = RunConfig.from_flat({"strategy": strategy, "clients-per-round": len(updates), **keys})
    replies = [_message(u, 10 * (i + 1)) for i, u in enumerate(updates)]  # unequal counts must not buy weight
    arrays, _ = build_strategy(config).aggregate_train(1, replies)
    return np.concatenate([arrays["w"].numpy().ravel(), arrays["b"].numpy().ravel()])


def test_median_and_trimmed_mean_against_numpy():
    updates = _updates(7)
    stacked = np.stack([_flat(u) for u in updates])
    assert np.allclose(_aggregate("fedmedian", updates), np.median(stacked, axis=0), atol=1e-6)
    cut = int(0.2 * 7)
    trimmed = np.sort(stacked, axis=0)[cut : 7 - cut].mean(axis=0)
    assert np.allclose(_aggregate("fedtrimmedavg", updates, **{"trim-beta": 0.2}), trimmed, atol=1e-6)


def test_krum_picks_the_update_closest_to_its_neighbours_and_ignores_an_outlier():
    updates = _updates(6, seed=1)
    updates[2] = {k: v * 0 + 50 for k, v in updates[2].items()}  # an attacker far away
    stacked = np.stack([_flat(u) for u in updates])
    f = 1
    closest = len(updates) - f - 2
    distances = ((stacked[:, None] - stacked[None]) ** 2).sum(-1)
    scores = [np.sort(np.delete(distances[i], i))[:closest].sum() for i in range(len(updates))]
    chosen = stacked[int(np.argmin(scores))]
    assert np.allclose(_aggregate("krum", updates, **{"assumed-malicious": f}), chosen, atol=1e-6)
    best = np.argsort(scores)[:3]
    assert np.allclose(
        _aggregate("multikrum", updates, **{"assumed-malicious": f, "multikrum-select": 3}),
        stacked[best].mean(axis=0),
        atol=1e-5,
    )
    assert 2 not in best


def test_robust_strategies_refuse_server_dp():
    with pytest.raises(ConfigError, match="dp-mode = server"):
        RunConfig.from_flat({"strategy": "krum", "dp-mode": "server"})


def test_bulyan_needs_four_times_the_assumed_attackers_plus_three_clients():
    RunConfig.from_flat({"strategy": "bulyan", "clients-per-round": 11, "assumed-malicious": 2})
    with pytest.raises(ConfigError, match=r"clients-per-round >= 4 x 2 \+ 3 = 11"):
        RunConfig.from_flat({"strategy": "bulyan", "clients-per-round": 10, "assumed-malicious": 2})
