"""User-level DP on the cohort engine beyond DP-FedAvg: DP-FTRL (tree aggregation, participation
cap) and adaptive clipping with its cost in the accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.errors import ConfigError
from common.privacy import participation
from common.privacy.tree_aggregation import TreeNoise, nodes_above, prefix_nodes, tree_depth
from tests.conftest import COHORT, _reply, gaussian_rdp_epsilon

pytestmark = pytest.mark.usefixtures("cache_env")


# --- tree aggregation ------------------------------------------------------------------------------


def test_prefix_nodes_tile_the_prefix_and_a_leaf_lies_under_at_most_depth_nodes():
    for t in range(0, 70):
        covered = sorted(r for level, index in prefix_nodes(t) for r in range(index << level, (index + 1) << level))
        assert covered == list(range(t)), t  # disjoint blocks exactly covering rounds 1..t (0-based here)
        assert len(prefix_nodes(t)) == bin(t).count("1")
    for rounds in (1, 2, 5, 6, 8, 13):
        used = {node for t in range(1, rounds + 1) for node in prefix_nodes(t)}
        for leaf in range(1, rounds + 1):
            holding = [n for n in used if n[1] << n[0] < leaf <= (n[1] + 1) << n[0]]
            assert len(holding) <= tree_depth(rounds)  # the accountant's depth is an upper bound
            assert set(holding) <= set(nodes_above(leaf, rounds))


def test_tree_noise_is_the_sum_of_its_node_draws_each_drawn_once():
    tree = TreeNoise([(3,)], std=1.0, rng=np.random.default_rng(0))
    seen: dict = {}
    for t in range(1, 17):
        noise = tree.prefix(t)[0]
        for node, draws in tree.nodes.items():
            if node in seen:
                assert np.array_equal(seen[node], draws[0])  # a node keeps its draw while it is used
            seen[node] = draws[0].copy()
        assert np.allclose(noise, sum(seen[node] for node in prefix_nodes(t)))
    assert tree.drawn == len({node for t in range(1, 17) for node in prefix_nodes(t)})


def test_prefix_noise_std_is_std_times_root_of_the_nodes_it_sums():
    for t in (3, 4, 7):
        tree = TreeNoise([(400_000,)], std=0.5, rng=np.random.default_rng(t))
        for s in range(1, t):
            tree.prefix(s)
        assert tree.prefix(t)[0].std() == pytest.approx(0.5 * np.sqrt(bin(t).count("1")), rel=0.01)


# --- accounting -----------------------------------------------------------------------------------


def test_dpftrl_accounting_against_the_gaussian_oracle_and_a_concrete_pair():
    from common.audit.accounting import ftrl_lower_bound
    from common.privacy.server_accounting import dpftrl_epsilon, dpftrl_noise_for

    delta = 1 / 6040
    for z, rounds_in_tree, passes in [(2.0, 6, 20), (4.0, 4, 5), (1.5, 1, 3)]:
        claim = dpftrl_epsilon(z, [[rounds_in_tree]] * passes, delta=delta)
        # Each pass: one leaf under depth nodes, each a Gaussian of multiplier z: RDP alpha*depth/(2 z^2).
        oracle = gaussian_rdp_epsilon(z / np.sqrt(tree_depth(rounds_in_tree)), passes, delta)
        assert claim == pytest.approx(oracle, rel=0.02)
        assert 0 < ftrl_lower_bound(z, [[rounds_in_tree]] * passes, delta=delta) <= claim
    z = dpftrl_noise_for(8.0, rounds_in_tree=6, trees=20, delta=delta)
    assert dpftrl_epsilon(z, [[6]] * 20, delta=delta) == pytest.approx(8.0, rel=0.01)
    # A restarted tree inside a pass (a resumed run) costs at most what a pass's deepest tree does.
    assert dpftrl_epsilon(2.0, [[3, 3]], delta=delta) <= dpftrl_epsilon(2.0, [[6]], delta=delta)


# --- participation --------------------------------------------------------------------------------


def test_each_user_has_one_round_per_tree_and_no_round_past_its_cap():
    users, per_round, rounds, cap = 500, 120, 40, 3
    rounds_in_tree, cap = participation.ftrl_schedule(users, per_round, rounds, cap)
    assert rounds_in_tree == 5 and cap == 3
    taken = {u: [] for u in range(users)}
    for r in range(1, rounds + 1):
        for u in participation.scheduled(7, np.arange(users), r, rounds_in_tree, cap):
            taken[int(u)].append(r)
    for u, rounds_taken in taken.items():
        trees = [participation.tree_of(r, rounds_in_tree)[0] for r in rounds_taken]
        assert trees == [0, 1, 2], u  # once in each of the first `cap` trees, never after
    # A user's slot does not move when others join or leave (replace-with-zero keeps the schedule).
    assert participation.slot(7, 42, 1, 5) == participation.slot(7, 42, 1, 5)
    some = participation.scheduled(7, np.arange(0, users, 2), 3, rounds_in_tree, cap)
    assert set(some) <= set(participation.scheduled(7, np.arange(users), 3, rounds_in_tree, cap))


def test_a_device_refuses_every_round_that_is_not_its_slot(cache):
    from client.participation import ftrl_own_slots

    config = RunConfig.from_flat(
        {**COHORT, "dp-mode": "server", "server-mechanism": "dp-ftrl", "num-server-rounds": 12, "max-participations": 2}
    )
    rounds_in_tree, cap = participation.ftrl_schedule(200, 60, 12, 2)
    keys = np.arange(200)
    joined = np.zeros(200, dtype=int)
    for r in range(1, 13):  # a server that asks every user every round
        round_config = {"chunk-keys": keys.tolist()}
        kept, refused = ftrl_own_slots(config, {"partition-id": 0}, round_config, [(0, keys.copy())], r)
        joined[kept[0][1]] += 1
        assert refused == 200 - len(kept[0][1])
    assert joined.max() == cap == 2 and joined.min() == 2  # a device cannot be made to exceed its cap
    # A real device takes the tree length from the server, yet still joins at most `cap` trees.
    device_joins = 0
    for r in range(1, 13):
        kept, _ = ftrl_own_slots(
            config, {"client-id": 5, "state-dir": "/nowhere"}, {"rounds-in-tree": 1}, [(0, np.array([0]))], r
        )
        device_joins += len(kept[0][1])
    assert device_joins == 2


def test_dp_ftrl_config_needs_the_cohort_engine_and_server_dp():
    with pytest.raises(ConfigError, match="cohort-engine = true"):
        RunConfig.from_flat({"dp-mode": "server", "server-mechanism": "dp-ftrl"})
    with pytest.raises(ConfigError, match="user-sampling = fixed"):
        RunConfig.from_flat({**COHORT, "dp-mode": "server", "server-mechanism": "dp-ftrl", "user-sampling": "poisson"})
    with pytest.raises(ConfigError, match="adaptive-clipping"):
        RunConfig.from_flat({**COHORT, "dp-mode": "server", "server-mechanism": "dp-ftrl", "adaptive-clipping": True})


# --- the server's noise -----------------------------------------------------------------------------


def test_dp_ftrl_model_carries_the_trees_prefix_noise_not_a_sum_of_fresh_draws():
    from flwr.app import ArrayRecord

    from server.privacy import PrivacyTracker

    config = RunConfig.from_flat(
        {
            **COHORT,
            "dp-mode": "server",
            "server-mechanism": "dp-ftrl",
            "noise-multiplier": 2.0,
            "clipping-norm": 0.5,
            "num-server-rounds": 8,
            "clients-per-round": 25,
        }
    )  # 200 users: 8 rounds per tree
    tracker = PrivacyTracker(config, population=200, delta=1e-3)
    assert tracker.rounds_in_tree == 8
    size = 200_000
    model = torch.zeros(size)
    stds = {}
    for r in range(1, 8):
        assert tracker.allows(r) and tracker.refuses(25) is None
        out = tracker.private_sum([_reply({"w": model.clone()}, 25)], ArrayRecord({"w": model.clone()}), r)
        model = out[0].content["arrays"].to_torch_state_dict()["w"]  # plain averaging: FTRL's prefix sum
        tracker.record(r, {}, arrived=25)
        stds[r] = float(model.std())
    unit = 2.0 * 0.5 / 25  # z C over the expected cohort, per node
    for r, std in stds.items():  # after r rounds the model holds popcount(r) node draws, not r draws
        assert std == pytest.approx(unit * np.sqrt(bin(r).count("1")), rel=0.02), r
    from common.privacy.server_accounting import dpftrl_epsilon

    assert tracker.tree.trees == [[7]]
    assert tracker.epsilon_by_round[7] == pytest.approx(dpftrl_epsilon(2.0, [[7]], delta=1e-3))


def test_adaptive_clipping_moves_c_toward_the_quantile_and_pays_for_its_count():
    from flwr.app import ArrayRecord

    from server.cohort_noise import update_noise_multiplier
    from server.privacy import PrivacyTracker

    assert update_noise_multiplier(1.0, 10.0) == pytest.approx((1 - 1 / 400) ** -0.5)
    with pytest.raises(ValueError, match="clip-count-stddev"):
        update_noise_multiplier(3.0, 1.0)
    config = RunConfig.from_flat(
        {
            **COHORT,
            "dp-mode": "server",
            "adaptive-clipping": True,
            "noise-multiplier": 1.0,
            "clipping-norm": 1.0,
            "clip-lr": 0.2,
            "clip-quantile": 0.5,
        }
    )
    tracker = PrivacyTracker(config, population=200, delta=1e-3)
    assert tracker.adaptive.count_stddev == pytest.approx(60 / 20)
    assert tracker.update_multiplier > tracker.noise_multiplier  # the count takes a share of the budget
    assert tracker.round_config(1) == {"clipping-norm": 1.0}
    clips = []
    for r in range(1, 30):
        reply = _reply({"w": torch.zeros(10)}, 60)
        reply.content["metrics"]["clipped"] = 0  # nobody clipped: C is too large and must shrink
        tracker.private_sum([reply], ArrayRecord({"w": torch.zeros(10)}), r)
        clips.append(tracker.clip)
    assert clips[-1] < 0.2 * clips[0]
    assert tracker.state_dict()["clip"] == tracker.clip


# --- whole runs -----------------------------------------------------------------------------------
