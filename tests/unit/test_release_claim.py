"""Everything a DP run releases is inside its claim (issue 29): one test per hole that was found.

1. selection: the released model is the last round's or the public cohort's choice; the round log
   holds no training statistics of protected users; an unlisted file fails `audit --strict`;
2. client DP replies carry nothing data-dependent but the noised weights (also tests/unit/test_privacy.py);
3. one user's randomness is its own: adding a user changes no other user's update;
4. devices that come and go: each round booked with what it really sampled from;
5. no checkpoint gap under DP; 6. a resume never spends past the target; 7. SecAgg+ sends only the
   weight in the clear; 8. the audit's tests hold together at 95% and both modes cross-check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.errors import ConfigError
from common.privacy.releases import releasable_row, reply_fields
from common.recipes import cohort_training
from common.training.cohort_clients import train_chunks
from common.training.step import model_for
from server.loop import run_rounds
from server.privacy import PrivacyTracker
from server.run_state import RunState
from server.strategies import build_strategy
from tests.conftest import COHORT

pytestmark = pytest.mark.usefixtures("cache_env")

DP_COHORT = {
    **COHORT,
    "dropout": 0.2,
    "num-server-rounds": 4,
    "eval-every-rounds": 1,
    "dp-mode": "server",
    "user-sampling": "poisson",
    "noise-multiplier": 1.0,
    "clipping-norm": 0.5,
}


# --- 1. selection and the round log -------------------------------------------------------------------


def test_under_dp_the_round_log_keeps_only_released_fields():
    row = {"round": 3, "sampled": 61, "replied": 59, "failed": 2, "train-loss": 4.1, "epsilon": 1.2, "seconds": 2.0}
    poisson = RunConfig.from_flat(DP_COHORT)
    assert releasable_row(row, poisson) == {"round": 3, "epsilon": 1.2, "seconds": 2.0}  # cohort size and loss out
    fixed = RunConfig.from_flat({**DP_COHORT, "user-sampling": "fixed"})
    assert set(releasable_row(row, fixed)) == {"round", "sampled", "replied", "failed", "epsilon", "seconds"}
    assert releasable_row(row, RunConfig.from_flat(COHORT)) == row  # without DP: everything


# --- 2. client DP: equal weights ----------------------------------------------------------------------


def test_client_dp_weighs_every_client_the_same_and_its_replies_are_listed():
    config = RunConfig.from_flat({"dp-mode": "client", "dp-reference-samples": 40})
    assert build_strategy(config).weighted_by_key == "unit-weight"
    assert set(reply_fields(config)) == {
        "arrays", "num-examples", "unit-weight", "epsilon", "user-level", "dp-noise-reproducible", "declined"
    }  # fmt: skip


# --- 3. a user's randomness is its own ------------------------------------------------------------------


def test_adding_a_user_to_a_chunk_changes_no_other_users_update():
    """With dropout and augmentation, chunk [0, 1..8] minus chunk [1..8] is exactly user 0's own update:
    positions in the chunk moved, nobody else's masks did (their sum's sensitivity stays one user's)."""
    config = RunConfig.from_flat({**DP_COHORT, "augment": "mask,crop", "augment-prob": 1.0})
    data = load_sequence_data(config.data)
    start = model_for(config.model, config.data, data.num_items, seed=config.train.seed).arrays()
    rows = np.arange(1, 9)

    def total(chunk_rows):
        result = train_chunks(
            cohort_training(config, data.num_items), data, [(0, np.asarray(chunk_rows))], start, server_round=2
        )
        n = result.metrics["num-examples"]
        return {k: (result.arrays[k] - start[k]) * n for k in result.arrays}

    with_user, without, alone = total(np.concatenate([[0], rows])), total(rows), total([0])
    for key in with_user:
        assert torch.allclose(with_user[key] - without[key], alone[key], atol=1e-5), key


# --- 4. devices that come and go ------------------------------------------------------------------------


class LeavingDevicesGrid:
    """Real devices (client keys 1..n); after `leave_after` rounds the upper half disconnects."""

    def __init__(self, n: int, leave_after: int):
        self.n, self.leave_after, self.round = n, leave_after, 0

    def get_node_ids(self):
        return list(range(1, self.n // 2 + 1)) if self.round >= self.leave_after else list(range(1, self.n + 1))

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            if m.metadata.message_type == MessageType.QUERY:
                content = RecordDict({"metrics": MetricRecord({"client-key": m.metadata.dst_node_id})})
            else:
                self.round = int(m.content["config"]["server-round"])
                moved = {k: v + 0.01 for k, v in m.content["arrays"].to_torch_state_dict().items()}
                metrics = {"num-examples": 1, "unit-weight": 1}
                content = RecordDict({"arrays": ArrayRecord(moved), "metrics": MetricRecord(metrics)})
            replies.append(Message(content=content, reply_to=m))
        return replies


def test_rounds_after_devices_leave_are_booked_with_the_devices_really_sampled_from(tmp_path):
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    config = RunConfig.from_flat(
        {"dp-mode": "server", "clients-per-round": 5, "num-server-rounds": 4, "noise-multiplier": 1.0}
    )
    grid = LeavingDevicesGrid(40, leave_after=2)
    tracker = PrivacyTracker(config, population=40, delta=1 / 40)
    strategy = tracker.wrap(build_strategy(config))
    state = RunState(fingerprint="t", round=0, arrays={"w": torch.zeros(3)})
    keys = {k: k for k in range(1, 41)}
    run_rounds(grid, config, strategy, state, tmp_path, None, keys, {}, tracker)
    assert [int(n) for _, _, n in tracker.events] == [40, 40, 20, 20]  # the rate doubled when half left
    assert tracker.epsilon_by_round[4] == pytest.approx(tracker._server_epsilon(tracker.events))


def test_poisson_rate_is_set_by_the_population_not_by_who_is_connected():
    from server.cohort import CohortPlan

    config = RunConfig.from_flat({**DP_COHORT, "clients-per-round": 10, "population-floor": 100})
    plan = CohortPlan(config, 0, [], {k: k for k in range(50)}, population=100)  # half the devices connected
    draws = [len(plan.sample(r, secret=True)) for r in range(400)]
    assert np.mean(draws) == pytest.approx(5.0, rel=0.1)  # q = 10 / 100 over the 50 connected, not 10 / 50


def test_dp_with_real_devices_and_no_data_needs_a_declared_population():
    from server.federation import dp_population

    config = RunConfig.from_flat({**DP_COHORT, "data": "", "catalogue-path": "c.json", "federated-evaluation": True})
    with pytest.raises(ConfigError, match="population-floor"):
        dp_population(config, None, {1: 1})
    declared = config.replace(**{"population-floor": 5000})
    assert dp_population(declared, None, {1: 1}) == (5000, 5000)


# --- 5. checkpoints and 6. resumes --------------------------------------------------------------------


def test_dp_runs_checkpoint_every_round():
    with pytest.raises(ConfigError, match="checkpoint-every"):
        RunConfig.from_flat({**DP_COHORT, "checkpoint-every": 5})
    RunConfig.from_flat({**COHORT, "checkpoint-every": 5})  # without DP a gap loses only time


def test_a_resume_with_more_rounds_spends_only_what_is_left_of_the_target():
    config = RunConfig.from_flat({**DP_COHORT, "target-epsilon": 2.0, "num-server-rounds": 5})
    first = PrivacyTracker(config, population=200, delta=1e-3)
    for r in range(1, 6):
        first.record(r, {}, arrived=1)
    assert first.epsilon_by_round[5] <= 2.0
    longer = config.replace(**{"num-server-rounds": 10})
    resumed = PrivacyTracker(longer, population=200, delta=1e-3, state=first.state_dict())
    assert resumed.noise_multiplier > first.noise_multiplier  # the rest of the budget over five more rounds
    for r in range(6, 11):
        assert resumed.allows(r)
        resumed.record(r, {}, arrived=1)
    assert resumed.epsilon_by_round[10] <= 2.0 * (1 + 1e-9)
    same = PrivacyTracker(config, population=200, delta=1e-3, state=first.state_dict())
    assert same.noise_multiplier == first.noise_multiplier  # the same plan resumes with the same z


def test_target_epsilon_is_the_cap_unless_raised_and_the_report_says_so():
    config = RunConfig.from_flat({**DP_COHORT, "target-epsilon": 1.0, "num-server-rounds": 3})
    tracker = PrivacyTracker(config, population=200, delta=1e-3)
    tracker.noise_multiplier = 0.5  # as if another z had been used: the next rounds would pass the target
    for r in range(1, 4):
        if not tracker.allows(r):
            break
        tracker.record(r, {}, arrived=1)
    assert max(tracker.epsilon_by_round.values(), default=0.0) <= 1.0
    assert tracker.cap_name == "target-epsilon"
    raised = PrivacyTracker(config.replace(**{"max-epsilon": 3.0}), population=200, delta=1e-3)
    assert raised.cap_name == "max-epsilon"
    with pytest.raises(ConfigError, match="below target-epsilon"):
        config.replace(**{"max-epsilon": 0.5})


# --- 7. SecAgg+ -----------------------------------------------------------------------------------------


def test_secagg_replies_carry_only_the_weight_in_the_clear():
    from client.secure_aggregation import to_fitres

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    start = {"w": torch.zeros(3)}
    ask = Message(content=RecordDict({"config": ConfigRecord({})}), message_type="train", dst_node_id=3)
    metrics = {"num-examples": 1, "train-loss": 3.2, "clipped": 1, "users": 1}
    reply = Message(
        content=RecordDict({"arrays": ArrayRecord({"w": torch.ones(3)}), "metrics": MetricRecord(metrics)}),
        reply_to=ask,
    )
    fitres = to_fitres(reply, ["w"], start)
    assert fitres.metrics == {} and fitres.num_examples == 1
    assert len(fitres.parameters.tensors) == 2  # the weights and the masked clipped share


# --- 8. the audit ---------------------------------------------------------------------------------------


def test_the_two_membership_attacks_hold_together_at_95_percent():
    from common.audit.membership import ATTACK_CONFIDENCE, ATTACKS, membership_inference
    from common.model.models import ModelConfig, build_model

    assert ATTACK_CONFIDENCE == pytest.approx(1 - 0.05 / len(ATTACKS))
    model = build_model(ModelConfig("sasrec", 30, max_len=8, emb_dim=8, num_layers=1)).eval()
    rng = np.random.default_rng(0)
    users = [rng.integers(1, 31, size=8) for _ in range(20)]
    result = membership_inference(model, users[:10], users[10:], delta=1e-3, bootstrap=10)
    assert all(a["epsilon_lower_bound"]["confidence"] == ATTACK_CONFIDENCE for a in result["attacks"].values())


def test_the_server_audit_sandwiches_the_claim_between_independent_bounds():
    from common.audit.accounting import audit_server_events

    events = [[1.0, 60, 200]] * 5
    honest = audit_server_events(events, delta=1e-3, recorded=0.0, adjacency="add/remove", sampling="poisson")
    truth = honest["epsilon"]["replayed_run_accountant"]
    ok = audit_server_events(events, delta=1e-3, recorded=truth, adjacency="add/remove", sampling="poisson")
    assert ok["failures"] == []
    assert ok["epsilon"]["independent_lower_bound"] <= truth <= ok["epsilon"]["independent_upper_bound"] * 1.001
    over = audit_server_events(events, delta=1e-3, recorded=3 * truth, adjacency="add/remove", sampling="poisson")
    assert any("independent RDP bound" in f for f in over["failures"])
    pld = audit_server_events(
        events, delta=1e-3, recorded=truth, adjacency="add/remove", sampling="poisson", accountant="pld"
    )
    assert pld["epsilon"]["replayed_run_accountant"] < truth  # PLD is tighter than the RDP claim
