"""Differential privacy: DP-SGD behaviour, ledgers, budgets, server-side clipping, accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from common.config import RunConfig
from common.data.sequences import SequenceData, build_sequences
from common.data.synthetic import synthetic_interactions
from common.model.losses import next_item_loss
from common.model.models import ModelConfig, build_model
from common.privacy import grad_samplers  # noqa: F401  (the models' Opacus per-sample-gradient rules)
from common.privacy.ledger import PrivacyLedger
from common.privacy.server_accounting import dpfedavg_epsilon, dpfedavg_epsilon_events
from common.recipes import local_training
from common.training.federated import DeviceLimits, local_train
from common.training.step import StepOptions, train_epoch
from tests.conftest import gaussian_rdp_epsilon


def small_model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig("sasrec", num_items=30, max_len=8, emb_dim=8, num_layers=1, dropout=0.0))


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 31, (n, 8), generator=g)
    y = torch.randint(1, 31, (n, 8), generator=g)
    x[:, :2] = 0
    y[:, :2] = 0
    return x, y


def test_dp_training_without_noise_or_clipping_equals_plain_training():
    x, y = batch()
    plain = small_model()
    opt = torch.optim.SGD(plain.parameters(), lr=0.5)
    train_epoch(plain, [(x, y)], opt)

    private = small_model()
    engine = PrivacyEngine()
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    module, optimizer, loader = engine.make_private(
        module=private,
        optimizer=torch.optim.SGD(private.parameters(), lr=0.5),
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=1e9,
        poisson_sampling=False,
    )
    train_epoch(module, loader, optimizer, StepOptions(per_sample_grads=True))
    for (name, a), b in zip(plain.arrays().items(), private.arrays().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_per_sample_clipping_bounds_each_contribution():
    x, y = batch(n=5)
    model = small_model()
    engine = PrivacyEngine()
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    clip = 0.01
    module, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        poisson_sampling=False,
    )
    inputs, targets = next(iter(loader))
    next_item_loss(module, inputs, targets, per_sample_grads=True).backward()
    params = [p for p in module.parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.reshape(len(x), -1).norm(dim=1) for p in params]).norm(dim=0)
    assert (norms > clip).all()  # the bound is active for every sample
    optimizer.clip_and_accumulate()
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        expected = torch.einsum("i,i...->...", factors, p.grad_sample)
        assert torch.allclose(p.summed_grad, expected, atol=1e-7)
    clipped_norms = factors * norms
    assert (clipped_norms <= clip * (1 + 1e-5)).all()


def test_noise_std_matches_noise_multiplier_times_clip_over_batch():
    x, y = batch(n=8)
    model = small_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    engine = PrivacyEngine()
    z, clip = 1.3, 0.5
    module, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        data_loader=DataLoader(TensorDataset(x, y), batch_size=8),
        noise_multiplier=z,
        max_grad_norm=clip,
        poisson_sampling=False,
    )
    inputs, targets = next(iter(loader))
    (0.0 * next_item_loss(module, inputs, targets, per_sample_grads=True)).backward()  # zero gradients
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    change = (after - before).numpy()
    change = change[np.abs(change) > 0]  # the padding row is re-zeroed by our step, not by Opacus here
    assert np.std(change) == pytest.approx(z * clip / 8, rel=0.05)


def test_ledger_epsilon_equals_opacus_accountant_on_the_same_history():
    accountant = RDPAccountant()
    ledger = PrivacyLedger("rdp")
    for z, q, steps in [(1.1, 0.05, 40), (1.1, 0.05, 20), (0.8, 0.1, 10)]:
        for _ in range(steps):
            accountant.step(noise_multiplier=z, sample_rate=q)
        ledger.record(noise_multiplier=z, sample_rate=q, steps=steps)
    assert ledger.epsilon(1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_ledger_saved_and_restored_keeps_composing(tmp_path):
    path = tmp_path / "ledger.json"
    first = PrivacyLedger("rdp")
    first.record(noise_multiplier=1.0, sample_rate=0.1, steps=30)
    first.save(path)
    eps_one = PrivacyLedger.load(path, "rdp").epsilon(1e-5)
    restored = PrivacyLedger.load(path, "rdp")
    restored.record(noise_multiplier=1.0, sample_rate=0.1, steps=30)
    restored.save(path)
    reference = PrivacyLedger("rdp")
    reference.record(noise_multiplier=1.0, sample_rate=0.1, steps=60)
    assert PrivacyLedger.load(path, "rdp").epsilon(1e-5) == pytest.approx(reference.epsilon(1e-5))
    assert reference.epsilon(1e-5) > eps_one > 0
    with pytest.raises(ValueError, match="accountant"):
        PrivacyLedger.load(path, "prv")


@pytest.fixture
def client_data() -> SequenceData:
    frame = synthetic_interactions(40, 30, mean_length=12, seed=2)
    return build_sequences(frame, min_item_count=1)


def dp_config(**extra) -> RunConfig:
    return RunConfig.from_flat(
        {
            "data": "synthetic",
            "model": "sasrec",
            "emb-dim": 8,
            "num-layers": 1,
            "max-len": 10,
            "batch-size": 8,
            "dp-mode": "client",
            "train-windows": "last",
            "local-epochs": 1,
            "local-lr": 0.001,
            "noise-multiplier": 1.0,
            "delta": 1e-3,
            "dp-reference-samples": 40,  # the public size each client's plan assumes
            **extra,
        }
    )


def test_client_at_its_budget_declines_and_spends_nothing(client_data):
    config = dp_config(**{"max-epsilon": 3.0})
    arrays = build_model(ModelConfig("sasrec", client_data.num_items, 10, 8, num_layers=1)).arrays()
    ledger = PrivacyLedger("rdp")
    spent, rounds = [], 0
    while rounds < 20:
        result = local_train(
            local_training(config, client_data.num_items),
            client_data,
            arrays,
            server_round=rounds,
            client=0,
            ledger=ledger,
        )
        rounds += 1
        if result.arrays is None:
            break
        spent.append(result.metrics["epsilon"])
    assert result.arrays is None and result.metrics["declined"] == 1
    assert 0 < spent[-1] <= 3.0 and spent == sorted(spent)
    history = list(ledger.history)
    local_train(
        local_training(config, client_data.num_items), client_data, arrays, server_round=99, client=0, ledger=ledger
    )
    assert ledger.history == history  # declining spends nothing


def test_target_epsilon_holds_when_batches_do_not_divide_the_samples(client_data):
    # reference 40 / batch 9: round(40 / 9) = 4 Poisson batches per epoch at rate exactly 1/4, and
    # Opacus' sampler runs those 4 (its own length would be int(1 / 0.25) = 4 too, but int(1 / (1/k))
    # can drop one for other k): the ledger books what ran, and the target holds.
    config = dp_config(**{"batch-size": 9, "target-epsilon": 2.0, "noise-multiplier": 0.0, "local-epochs": 2})
    arrays = build_model(ModelConfig("sasrec", client_data.num_items, 10, 8, num_layers=1)).arrays()
    ledger = PrivacyLedger("rdp")
    for server_round in range(3):
        result = local_train(
            local_training(config, client_data.num_items),
            client_data,
            arrays,
            server_round=server_round,
            client=0,
            ledger=ledger,
            expected_rounds=3,
        )
    ((z, rate, steps),) = ledger.history
    assert rate == pytest.approx(1 / 4) and steps == 3 * 2 * 4
    assert 1.9 < result.metrics["epsilon"] <= 2.0


def test_a_client_dp_reply_is_the_same_with_one_window_more_or_less(client_data):
    """Add/remove one window: the plan (rate, steps, divisor, noise) and every reply field but the
    noised weights must not move, or the reply itself releases the window (issue 29, hole 2)."""
    arrays = build_model(ModelConfig("sasrec", client_data.num_items, 10, 8, num_layers=1)).arrays()
    fewer = client_data.subset(np.arange(client_data.num_users - 1))  # train-windows last: one window less
    config = dp_config(**{"target-epsilon": 2.0, "noise-multiplier": 0.0})
    replies, ledgers = [], []
    for data in (client_data, fewer):
        ledger = PrivacyLedger("rdp")
        replies.append(
            local_train(
                local_training(config, data.num_items), data, arrays, server_round=1, client=0, ledger=ledger
            ).metrics
        )
        ledgers.append(ledger.history)
    assert replies[0] == replies[1] and ledgers[0] == ledgers[1]
    assert set(replies[0]) <= {"num-examples", "unit-weight", "epsilon", "user-level", "dp-noise-reproducible"}
    assert replies[0]["num-examples"] == 1


def test_device_owner_limits_override_the_run(client_data):
    arrays = build_model(ModelConfig("sasrec", client_data.num_items, 10, 8, num_layers=1)).arrays()
    config = dp_config(**{"max-epsilon": 100.0})
    tight = local_train(
        local_training(config, client_data.num_items),
        client_data,
        arrays,
        server_round=1,
        client=0,
        ledger=PrivacyLedger("rdp"),
        limits=DeviceLimits(max_epsilon=0.01),
    )
    assert tight.arrays is None
    off = local_train(
        local_training(config, client_data.num_items),
        client_data,
        arrays,
        server_round=1,
        client=0,
        limits=DeviceLimits(train=False),
    )
    assert off.arrays is None and off.metrics["declined"] == 1


def test_server_side_clipping_bounds_each_update():
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from server.privacy import PrivacyTracker
    from server.strategies import build_strategy

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    config = RunConfig.from_flat(
        {"dp-mode": "server", "noise-multiplier": 0.0, "clipping-norm": 0.5, "clients-per-round": 3}
    )
    strategy = PrivacyTracker(config, population=3, delta=1e-3).wrap(build_strategy(config))
    current = {"w": np.zeros(4, dtype=np.float32)}

    class Grid:
        def get_node_ids(self):
            return [1, 2, 3]

    list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(4)}), ConfigRecord({}), Grid()))
    updates = [np.array([10.0, 0, 0, 0]), np.array([0, 0.1, 0, 0]), np.array([0, 0, -3.0, 4.0])]
    replies = []
    for node, u in enumerate(updates, start=1):
        ask = Message(content=RecordDict({"config": ConfigRecord({})}), message_type="train", dst_node_id=node)
        replies.append(
            Message(
                content=RecordDict(
                    {
                        "arrays": ArrayRecord({"w": torch.as_tensor((current["w"] + u).astype(np.float32))}),
                        "metrics": MetricRecord({"num-examples": 100 * node, "unit-weight": 1}),
                    }
                ),
                reply_to=ask,
            )
        )
    arrays, _ = strategy.aggregate_train(1, replies)
    clipped = [u * min(1.0, 0.5 / np.linalg.norm(u)) for u in updates]
    assert np.allclose(arrays["w"].numpy(), np.mean(clipped, axis=0), atol=1e-6)  # uniform weights, clipped


def test_server_accounting_without_sampling_matches_the_gaussian_oracle_at_replace_one_sensitivity():
    # Noise z*C on a sum whose replace-one sensitivity is 2C: the Gaussian mechanism at multiplier z/2.
    for z, rounds in [(1.0, 1), (2.0, 10), (5.0, 50)]:
        ours = dpfedavg_epsilon(noise_multiplier=z, num_sampled=10, population=10, rounds=rounds, delta=1e-5)
        assert ours == pytest.approx(gaussian_rdp_epsilon(z / 2, rounds, 1e-5), rel=0.02)


def test_sampling_amplifies_and_fewer_replies_cost_more():
    full = dpfedavg_epsilon(noise_multiplier=1.0, num_sampled=100, population=100, rounds=10, delta=1e-4)
    sampled = dpfedavg_epsilon(noise_multiplier=1.0, num_sampled=10, population=100, rounds=10, delta=1e-4)
    assert sampled < full
    short = dpfedavg_epsilon_events([(1.0, 10, 100)] * 9 + [(0.5, 10, 100)], delta=1e-4)
    assert short > sampled


def test_grouped_rounds_compose_like_rounds_one_by_one():
    import dp_accounting
    from dp_accounting import rdp

    from common.privacy.accountants.rdp import ORDERS, dp_event
    from common.privacy.server_accounting import round_event

    events = [(1.0, 10, 100)] * 5 + [(0.7, 8, 100)] + [(1.0, 10, 100)] * 3
    one_by_one = rdp.RdpAccountant(ORDERS, neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for z, m, n in events:
        one_by_one.compose(dp_event(round_event(z, m, n)))
    assert dpfedavg_epsilon_events(events, delta=1e-4) == pytest.approx(one_by_one.get_epsilon(1e-4), rel=1e-9)


def test_client_dp_rejects_combinations_that_break_the_guarantee():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="fedprox"):
        RunConfig.from_flat({"dp-mode": "client", "strategy": "fedprox"})
    with pytest.raises(ConfigError, match="sampled-softmax"):
        RunConfig.from_flat({"dp-mode": "client", "loss": "sampled-softmax"})
    with pytest.raises(ConfigError, match="item-rank = 0"):
        RunConfig.from_flat({"dp-mode": "client", "item-rank": 16})
    with pytest.raises(ConfigError, match="item-rank"):
        RunConfig.from_flat({"emb-dim": 32, "item-rank": 32})
