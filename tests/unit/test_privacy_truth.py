"""Privacy claims that hold against the server (issues: privacy truth, server sensitivity).

Each case failed before its fix: predictable DP noise, a budget overshot when clients drop out,
a unit of privacy the report recomputed from the config, an audit that copied the run's method,
device files written where the server pointed, and a server epsilon at sensitivity C, not 2C.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.audit.accounting import audit_server_events, gaussian_epsilon
from common.audit.worst_pair import epsilon_lower_bound
from common.config import RunConfig
from common.data.load import load_sequence_data
from common.privacy import randomness
from common.privacy.mechanism import ADD_OR_REMOVE_ONE, REPLACE_ONE, sum_sensitivity
from common.privacy.server_accounting import dpfedavg_epsilon, dpfedavg_noise_for, round_event
from common.recipes import local_training
from common.training.federated import local_train
from common.training.step import model_for
from server.privacy import PrivacyTracker

TINY = {
    "data": "synthetic",
    "synthetic-users": 30,
    "synthetic-items": 40,
    "model": "gru",
    "emb-dim": 16,
    "hidden-dim": 16,
    "max-len": 20,
    "batch-size": 8,
    "dropout": 0.0,
    "local-epochs": 1,
    "local-lr": 0.01,
    "dp-mode": "client",
    "noise-multiplier": 1.0,
    "delta": 1e-3,
}


pytestmark = pytest.mark.usefixtures("cache_env")


def _device_round(reproducible: bool) -> dict[str, torch.Tensor]:
    config = RunConfig.from_flat(TINY)
    data = load_sequence_data(config.data)
    start = model_for(config.model, config.data, data.num_items, seed=config.train.seed).arrays()
    result = local_train(
        local_training(config, data.num_items),
        data,
        start,
        server_round=3,
        client=7,
        reproducible_dp_noise=reproducible,
        reference_samples=16,
    )
    return result.arrays


def test_two_device_rounds_with_identical_inputs_differ_unless_noise_is_reproducible():
    first, second = _device_round(False), _device_round(False)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the server cannot redo the noise
    replay_a, replay_b = _device_round(True), _device_round(True)
    assert all(torch.equal(replay_a[k], replay_b[k]) for k in replay_a)  # the explicit simulation setting


def test_a_device_never_takes_seed_derived_noise():
    from client.identity import is_simulated

    assert is_simulated({"partition-id": 3})
    assert not is_simulated({"client-id": 3, "data-path": "x.csv", "catalogue-path": "c.json", "state-dir": "s"})
    assert not is_simulated({"partition-id": 3, "state-dir": "s"})


def test_server_noise_source_is_secret_unless_reproducible():
    randomness.seed_numpy_global(reproducible=False, derived=42)
    a = np.random.normal(size=4)
    randomness.seed_numpy_global(reproducible=False, derived=42)
    b = np.random.normal(size=4)
    assert not np.array_equal(a, b)
    randomness.seed_numpy_global(reproducible=True, derived=42)
    c = np.random.normal(size=4)
    randomness.seed_numpy_global(reproducible=True, derived=42)
    assert np.array_equal(c, np.random.normal(size=4))
    assert randomness.dp_seed(reproducible=False, derived=5) != randomness.dp_seed(reproducible=False, derived=5)


def test_sensitivity_comes_from_the_adjacency_in_one_place():
    assert sum_sensitivity(REPLACE_ONE, 1.5) == 3.0 and sum_sensitivity(ADD_OR_REMOVE_ONE, 1.5) == 1.5
    with pytest.raises(ValueError, match="adjacency"):
        sum_sensitivity("swap-two", 1.0)
    event = round_event(1.2, 10, 100)  # the run's accounting
    assert event.noise == pytest.approx(1.2 / 2) and event.adjacency == REPLACE_ONE
    # the calibration reads the same accounting: its noise lands on the target, not on half of it
    z = dpfedavg_noise_for(4.0, num_sampled=10, population=100, rounds=20, delta=1e-4)
    eps = dpfedavg_epsilon(noise_multiplier=z, num_sampled=10, population=100, rounds=20, delta=1e-4)
    assert 3.99 <= eps <= 4.0


def test_the_issues_tiny_run_is_at_least_the_unsampled_replace_one_gaussian():
    # 20 one-user clients, 19 per round, 2 rounds, z = 1, delta 0.05: 4.46 was reported before.
    claimed = dpfedavg_epsilon(noise_multiplier=1.0, num_sampled=19, population=20, rounds=2, delta=0.05)
    unsampled = gaussian_epsilon(1.0 / (2.0 * math.sqrt(2)), 0.05)  # Gaussian at z/2, composed twice
    assert unsampled == pytest.approx(7.875, abs=0.01)
    assert claimed >= unsampled


def test_lower_bound_is_the_exact_gaussian_without_sampling():
    for z, rounds, delta in [(1.0, 2, 0.05), (2.0, 10, 1e-5)]:
        exact = gaussian_epsilon(1.0 / (2.0 / z * math.sqrt(rounds)), delta)  # shift 2C over noise zC
        bound = epsilon_lower_bound([(z, 10, 10)] * rounds, delta=delta)
        assert exact - 0.01 <= bound <= exact  # rounded down, so never above


def test_lower_bound_matches_an_independent_pld_of_the_aligned_pair():
    import dp_accounting
    from dp_accounting import pld

    accountant = pld.PLDAccountant(value_discretization_interval=1e-4)  # add/remove, shift 2C = multiplier z/2
    accountant.compose(dp_accounting.PoissonSampledDpEvent(30 / 120, dp_accounting.GaussianDpEvent(0.8 / 2)), count=3)
    bound = epsilon_lower_bound([(0.8, 30, 120)] * 3, delta=1 / 120)
    assert bound == pytest.approx(accountant.get_epsilon(1 / 120), rel=0.01)
    assert bound <= dpfedavg_epsilon(noise_multiplier=0.8, num_sampled=30, population=120, rounds=3, delta=1 / 120)


def test_audit_fails_a_run_accounted_at_sensitivity_c():
    events = [(1.0, 19, 20)] * 2
    wrong = dpfedavg_epsilon(noise_multiplier=2.0, num_sampled=19, population=20, rounds=2, delta=0.05)  # = z, not z/2
    assert wrong == pytest.approx(4.46, abs=0.01)
    report = audit_server_events(events, delta=0.05, recorded=wrong, adjacency=REPLACE_ONE)
    assert any("understates" in f for f in report["failures"])
    right = dpfedavg_epsilon(noise_multiplier=1.0, num_sampled=19, population=20, rounds=2, delta=0.05)
    assert audit_server_events(events, delta=0.05, recorded=right, adjacency=REPLACE_ONE)["failures"] == []
    unnamed = audit_server_events(events, delta=0.05, recorded=right, adjacency=None)
    assert any("adjacency" in f for f in unnamed["failures"])


def test_tracker_refuses_a_round_that_dropouts_would_push_past_the_cap():
    config = RunConfig.from_flat({"dp-mode": "server", "noise-multiplier": 2.0, "clients-per-round": 30})
    probe = PrivacyTracker(config, population=120, delta=1 / 120)
    full, half = probe.epsilon_after(30), probe.epsilon_after(15)
    assert half > full  # fewer updates under the same noise: less noise relative to each
    capped = PrivacyTracker(config.replace(**{"max-epsilon": (full + half) / 2}), population=120, delta=1 / 120)
    assert capped.allows(1)  # planned as if everyone replies
    assert capped.refuses(30) is None
    reason = capped.refuses(15)
    assert reason and "15 of 30" in reason and "max-epsilon" in reason


def test_message_audit_on_a_device_writes_to_its_state_dir_not_the_servers_path(tmp_path):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from client.message_audit import AUDIT_DIR, message_audit_mod

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    server_chose, state_dir = tmp_path / "server-run", tmp_path / "device-state"
    ask = Message(
        content=RecordDict({"config": ConfigRecord({"run-dir": str(server_chose), "server-round": 1})}),
        message_type="train",
        dst_node_id=7,
    )

    def handler(msg, context):
        return Message(
            content=RecordDict(
                {"arrays": ArrayRecord({"w": torch.zeros(2)}), "metrics": MetricRecord({"num-examples": 1})}
            ),
            reply_to=msg,
        )

    context = Context(
        run_id=1,
        node_id=7,
        node_config={"client-id": 3, "state-dir": str(state_dir)},
        state=RecordDict(),
        run_config={"audit-messages": True},
    )
    message_audit_mod(ask, context, handler)
    assert (state_dir / AUDIT_DIR / "client-3.jsonl").exists()
    assert not server_chose.exists()
