"""The cohort engine: many one-user devices at once, exactly as each device would compute."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.evaluation.ranking import evaluate, model_scores
from common.model.models import ModelConfig, build_model
from common.recipes import cohort_training, ranking
from common.training.cohort import LocalRecipe, cohort_update, user_loss
from common.training.cohort_clients import evaluate_users, train_chunks
from common.training.step import model_for
from tests.conftest import COHORT, _reply

SMALL = ModelConfig("sasrec", 40, max_len=12, emb_dim=16, num_layers=1, dropout=0.0)


pytestmark = pytest.mark.usefixtures("cache_env")


def _one_by_one(model, inputs, targets, recipe: LocalRecipe) -> dict[str, torch.Tensor]:
    """Each user in its own model with torch's optimisers: what each device computes."""
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    total = {k: torch.zeros_like(v) for k, v in start.items()}
    for x, y in zip(inputs, targets):
        device = copy.deepcopy(model)  # weights and buffers (an item-feature table too)
        optimizer = (
            torch.optim.SGD(device.parameters(), lr=recipe.lr)
            if recipe.optimizer == "sgd"
            else torch.optim.Adam(device.parameters(), lr=recipe.lr, eps=recipe.eps)
        )
        for _ in range(recipe.steps):
            optimizer.zero_grad()
            user_loss(device, dict(device.named_parameters()), x, y).backward()
            if recipe.touched_rows:  # the device's own items only: every other row keeps a zero gradient
                untouched = torch.ones(SMALL.num_items + 1, dtype=torch.bool)
                untouched[torch.cat([x.flatten(), y.flatten()])] = False
                device.item_emb.weight.grad[untouched] = 0.0
            optimizer.step()
        update = {k: p.detach() - start[k] for k, p in device.named_parameters()}
        if recipe.clip > 0:
            norm = torch.sqrt(sum((u**2).sum() for u in update.values()))
            update = {k: u * min(1.0, recipe.clip / float(norm)) for k, u in update.items()}
        for k in total:
            total[k] += update[k]
    return total


@pytest.mark.parametrize(
    "recipe",
    [
        LocalRecipe(1, "sgd", 0.5),
        LocalRecipe(3, "sgd", 0.5),
        # eps well above float noise: the key bias's gradient is exactly 0 in
        # theory, and Adam would blow its rounding noise up to +-lr
        LocalRecipe(3, "adam", 0.01, eps=1e-4),
        LocalRecipe(2, "adam", 0.01, clip=0.05, eps=1e-4),
        LocalRecipe(1, "sgd", 0.5, clip=0.05, touched_rows=True),
        LocalRecipe(2, "adam", 0.01, eps=1e-4, touched_rows=True),
    ],
    ids=["sgd-1-batched", "sgd-3", "adam-3", "adam-2-clipped", "sgd-1-clipped-touched", "adam-2-touched"],
)
def test_cohort_update_equals_training_each_user_in_its_own_model(recipe):
    torch.manual_seed(0)
    model = build_model(SMALL)
    high = 21 if recipe.touched_rows else 41  # touched: items 21..40 are nobody's, so their rows must stay
    inputs = torch.randint(0, high, (6, 1, 12))
    targets = torch.randint(1, high, (6, 1, 12))
    targets[:, :, :4] = 0  # short histories: padded positions predict nothing
    result = cohort_update(model, inputs, targets, recipe)
    expected = _one_by_one(model, inputs, targets, recipe)
    assert result.users == 6
    scale = max(float(v.abs().max()) for v in expected.values())
    for key in expected:
        assert torch.allclose(result.update_sum[key], expected[key], atol=1e-4 * scale, rtol=1e-4), key
    if recipe.touched_rows:
        untouched = torch.ones(SMALL.num_items + 1, dtype=torch.bool)
        untouched[torch.cat([inputs.flatten(), targets.flatten()])] = False
        assert untouched.any()
        assert (result.update_sum["item_emb.weight"][untouched] == 0).all()
    if recipe.clip:
        assert result.clipped == 6
        norms = torch.sqrt(sum((v**2).sum() for v in result.update_sum.values()))
        assert norms <= 6 * recipe.clip * (1 + 1e-5)


def test_cohort_update_of_the_original_sasrec_block_equals_training_each_user_alone():
    config = dataclasses.replace(SMALL, block="original", positions="absolute", num_layers=2)
    torch.manual_seed(0)
    model = build_model(config)
    inputs, targets = torch.randint(0, 41, (5, 1, 12)), torch.randint(1, 41, (5, 1, 12))
    targets[:, :, :4] = 0
    recipe = LocalRecipe(2, "sgd", 0.5)
    result = cohort_update(model, inputs, targets, recipe)
    expected = _one_by_one(model, inputs, targets, recipe)
    scale = max(float(v.abs().max()) for v in expected.values())
    assert {k for k in expected if ".q." in k or ".kv." in k}  # the original block's own weights are there
    for key in expected:
        assert torch.allclose(result.update_sum[key], expected[key], atol=1e-4 * scale, rtol=1e-4), key


def test_chunks_spread_over_nodes_give_the_same_aggregate():
    config = RunConfig.from_flat(
        {**COHORT, "dropout": 0.2, "local-epochs": 2, "local-optimizer": "adam", "local-lr": 0.01}
    )
    data = load_sequence_data(config.data)
    start = model_for(config.model, config.data, data.num_items, seed=config.train.seed).arrays()
    chunks = [(i, np.arange(i * 16, (i + 1) * 16)) for i in range(4)]
    one_node = train_chunks(cohort_training(config, data.num_items), data, chunks, start, server_round=3)
    node_a, node_b = (
        train_chunks(cohort_training(config, data.num_items), data, part, start, server_round=3)
        for part in (chunks[::2], chunks[1::2])
    )
    n_a, n_b = node_a.metrics["num-examples"], node_b.metrics["num-examples"]
    assert one_node.metrics["num-examples"] == n_a + n_b == 64
    for key, value in one_node.arrays.items():
        combined = (node_a.arrays[key] * n_a + node_b.arrays[key] * n_b) / (n_a + n_b)  # Flower's weighted mean
        assert torch.allclose(value, combined, atol=1e-6), key  # dropout draws are fixed per chunk


def test_client_evaluation_equals_server_evaluation_on_the_same_users():
    config = RunConfig.from_flat(COHORT)
    data = load_sequence_data(config.data)
    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed)
    users = np.arange(0, 200, 3)
    for split in ("validation", "test"):
        server = evaluate(model_scores(model), data, split, max_len=20, top_k=10, users=users)
        halves = [
            evaluate_users(
                config.model, config.data, ranking(config), config.train.seed, data, part, model.arrays(), split
            )
            for part in (users[:30], users[30:])
        ]
        for key in ("ndcg@10", "hr@10", "mrr@10"):
            pooled = sum(h[key] * h["num-examples"] for h in halves) / len(users)
            assert pooled == pytest.approx(server[key], abs=1e-9), (split, key)


def test_cohort_config_rejects_what_it_cannot_do():
    from common.errors import ConfigError

    for bad, needs in [
        ({"partition": "iid"}, "partition = user"),
        ({"train-windows": "all"}, "train-windows"),
        ({"dp-mode": "client"}, "dp-mode none or server"),
        ({"strategy": "fedprox"}, "fedavg, fedadam or fedyogi"),
    ]:
        with pytest.raises(ConfigError, match=needs):
            RunConfig.from_flat({**COHORT, **bad})
    with pytest.raises(ConfigError, match="user-sampling"):
        RunConfig.from_flat({"user-sampling": "poisson"})
    with pytest.raises(ConfigError, match="local-item-rows"):
        RunConfig.from_flat({"local-item-rows": "touched"})


# --- whole runs on Flower's simulation engine -------------------------------------------------------


def test_plan_deals_chunks_round_robin_and_gives_devices_their_own_users():
    from server.cohort import CohortPlan

    config = RunConfig.from_flat({**COHORT, "cohort-chunk": 2})
    hosts = CohortPlan(config, num_users=10, hosts=[7, 9], devices={})
    assert hosts.assign(np.array([1, 3, 4, 8, 9])) == {
        7: {"chunk-ids": [0, 2], "chunk-sizes": [2, 1], "chunk-keys": [1, 3, 9]},
        9: {"chunk-ids": [1], "chunk-sizes": [2], "chunk-keys": [4, 8]},
    }
    a, b = hosts.sample(5), hosts.sample(5)
    assert np.array_equal(a, b) and len(a) == 10  # seeded by (seed, round); min(60, 10) users
    devices = CohortPlan(config, num_users=0, hosts=[], devices={3: 101, 5: 105})
    assert devices.assign(np.array([3, 5])) == {101: {}, 105: {}}


def test_a_real_device_is_a_cohort_of_its_own_user(tmp_path):
    """The deployment path: a SuperNode with its own data file trains its user with the same code."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    import client.app as client_app
    from client.local_data import load_local_data
    from common.data.synthetic import synthetic_interactions

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    config = RunConfig.from_flat(COHORT)
    data = load_sequence_data(config.data)
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps(data.item_ids.tolist()))
    frame = synthetic_interactions(200, 50, seed=0)
    one_user = frame[frame["user_id"] == frame["user_id"].iloc[0]]
    one_user.to_csv(tmp_path / "me.csv", index=False)
    node_config = {
        "client-id": 4,
        "data-path": str(tmp_path / "me.csv"),
        "catalogue-path": str(catalogue),
        "state-dir": str(tmp_path / "state"),
    }
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=config.to_flat())
    start = model_for(config.model, config.data, data.num_items, seed=config.train.seed).arrays()
    ask = Message(
        content=RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord({"server-round": 2})}),
        message_type="train",
        dst_node_id=7,
    )
    reply = client_app.train(ask, context)
    assert reply.content["metrics"]["users"] == 1 and reply.content["metrics"]["num-examples"] == 1
    local = load_local_data(config, node_config)
    expected = train_chunks(cohort_training(config, local.num_items), local, [(0, np.arange(1))], start, server_round=2)
    got = reply.content["arrays"].to_torch_state_dict()
    for key, value in expected.arrays.items():
        assert torch.allclose(got[key], value, atol=1e-7), key
    query = client_app.query(
        Message(content=RecordDict({"config": ConfigRecord({})}), message_type="query", dst_node_id=7), context
    )
    assert query.content["metrics"]["client-key"] == 4  # a device identifies itself, it hosts no one else


# --- user-level DP-FedAvg on the cohort engine -----------------------------------------------------


def test_poisson_accounting_matches_the_gaussian_oracle_and_bounds_from_below():
    from common.audit.worst_pair import epsilon_lower_bound
    from common.privacy.server_accounting import dpfedavg_epsilon
    from tests.conftest import gaussian_rdp_epsilon

    # Everyone sampled (q = 1): the Gaussian mechanism at multiplier z under add/remove (sensitivity C).
    for z, rounds in [(1.0, 1), (2.0, 10)]:
        ours = dpfedavg_epsilon(
            noise_multiplier=z, num_sampled=100, population=100, rounds=rounds, delta=1e-5, sampling="poisson"
        )
        assert ours == pytest.approx(gaussian_rdp_epsilon(z, rounds, 1e-5), rel=0.02)
    # Sampled: between the exact epsilon of a concrete add/remove pair and the RDP claim; the bound is
    # dp-accounting's PLD of the same subsampled Gaussian (an independent implementation agrees).
    import dp_accounting
    from dp_accounting import pld

    claim = dpfedavg_epsilon(
        noise_multiplier=1.0, num_sampled=500, population=6040, rounds=200, delta=1 / 6040, sampling="poisson"
    )
    bound = epsilon_lower_bound([(1.0, 500, 6040)] * 200, delta=1 / 6040, adjacency="add/remove")
    accountant = pld.PLDAccountant(value_discretization_interval=1e-3)
    accountant.compose(dp_accounting.PoissonSampledDpEvent(500 / 6040, dp_accounting.GaussianDpEvent(1.0)), count=200)
    assert bound == pytest.approx(accountant.get_epsilon(1 / 6040), rel=0.02)
    assert 0 < bound <= claim


def test_private_sum_adds_z_c_noise_to_the_sum_and_divides_by_the_expected_cohort():
    from flwr.app import ArrayRecord

    from server.privacy import PrivacyTracker

    config = RunConfig.from_flat(
        {**COHORT, "dp-mode": "server", "user-sampling": "poisson", "noise-multiplier": 0.0, "clipping-norm": 0.5}
    )
    tracker = PrivacyTracker(config, population=200, delta=1e-3)
    start = {"w": torch.zeros(200_000)}
    a, b = torch.full((200_000,), 0.1), torch.full((200_000,), -0.3)  # node means of 3 and 2 users
    out = tracker.private_sum([_reply({"w": a}, 3), _reply({"w": b}, 2)], ArrayRecord(start), 1)
    assert len(out) == 1 and int(out[0].content["metrics"]["num-examples"]) == 1
    expected = (3 * 0.1 + 2 * -0.3) / 60  # sum over the expected cohort q N = 60, not the 5 that came
    summed = out[0].content["arrays"].to_torch_state_dict()["w"]
    assert torch.allclose(summed, torch.full((200_000,), expected), atol=1e-7)
    noisy = PrivacyTracker(config.replace(**{"noise-multiplier": 1.2}), population=200, delta=1e-3)
    out = noisy.private_sum([_reply({"w": torch.zeros(200_000)}, 5)], ArrayRecord(start), 1)
    std = float(out[0].content["arrays"].to_torch_state_dict()["w"].std())
    assert std == pytest.approx(1.2 * 0.5 / 60, rel=0.02)  # z C on the sum, over the expected cohort
    again = noisy.private_sum([_reply({"w": torch.zeros(200_000)}, 5)], ArrayRecord(start), 1)
    first, second = (o[0].content["arrays"].to_torch_state_dict()["w"] for o in (out, again))
    assert not torch.equal(first, second)


def test_bfloat16_scoring_is_offered_where_its_path_runs_and_refused_elsewhere():
    from common.errors import ConfigError

    config = RunConfig.from_flat({**COHORT, "score-precision": "bfloat16"})
    assert cohort_training(config, 50).honest.score_precision == "bfloat16"
    for bad, needs in [
        ({"cohort-engine": False, "partition": "iid"}, "cohort-engine = true"),
        ({"local-epochs": 2}, "local-epochs = 1"),
        ({"local-optimizer": "adam"}, "local-optimizer = sgd"),
        ({"dp-mode": "server", "noise-multiplier": 1.0}, "per-user norms stay float32"),
        ({"max-update-norm": 5.0}, "max-update-norm"),
        ({"local-item-rows": "touched"}, "local-item-rows"),
    ]:
        with pytest.raises(ConfigError, match=needs):
            RunConfig.from_flat({**COHORT, "score-precision": "bfloat16", **bad})
    with pytest.raises(ConfigError, match="score-precision"):
        RunConfig.from_flat({**COHORT, "score-precision": "float16"})


def test_a_bfloat16_chunk_trains_like_a_float32_one():
    """The main job's setting end to end through `train_chunks`: the summed update within bfloat16
    rounding of float32's."""
    from common.training import window_loss

    if not window_loss.native_bfloat16():
        pytest.skip("no native bfloat16 on this CPU: float32 runs instead (test_window_loss)")
    data = load_sequence_data(RunConfig.from_flat(COHORT).data)
    chunks = [(0, np.arange(16)), (1, np.arange(16, 32))]
    arrays = {
        k: v.clone()
        for k, v in model_for(
            RunConfig.from_flat(COHORT).model, RunConfig.from_flat(COHORT).data, data.num_items, seed=0
        )
        .arrays()
        .items()
    }
    results = {
        precision: train_chunks(
            cohort_training(RunConfig.from_flat({**COHORT, "score-precision": precision}), data.num_items),
            data,
            chunks,
            arrays,
            server_round=1,
        )
        for precision in ("float32", "bfloat16")
    }
    exact, low = (dict(results[p].arrays) for p in ("float32", "bfloat16"))
    assert exact.keys() == low.keys()
    differs = False
    for key in exact:
        e, b = torch.as_tensor(np.asarray(exact[key])), torch.as_tensor(np.asarray(low[key]))
        assert float((b - e).norm()) <= 0.03 * float(e.norm()) + 1e-6, key
        differs |= not torch.equal(b, e)
    assert differs
