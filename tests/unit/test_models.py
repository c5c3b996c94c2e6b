"""Models: shapes, Opacus compatibility, exact per-sample gradients, causality, (de)serialisation."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from common.data.sequences import training_windows
from common.model.losses import next_item_loss
from common.model.models import ModelConfig, build_model
from common.privacy import grad_samplers  # noqa: F401  (the models' Opacus per-sample-gradient rules)
from common.training.step import StepOptions, train_epoch

# "sasrec-original": SASRec with the original block and absolute positions (the SASRec+ recipe)
ARCHS = ["sasrec", "sasrec-original", "gru", "lstm"]
NUM_ITEMS, MAX_LEN = 12, 6


def make_model(arch: str, seed: int = 0, dropout: float = 0.0, item_rank: int = 0):
    torch.manual_seed(seed)
    original = arch == "sasrec-original"
    config = ModelConfig(
        arch="sasrec" if original else arch,
        block="original" if original else "pre-ln",
        positions="absolute" if original else "recency",
        num_items=NUM_ITEMS,
        max_len=MAX_LEN,
        emb_dim=8,
        item_rank=item_rank,
        hidden_dim=10,
        num_layers=2,
        num_heads=2,
        dropout=dropout,
    )
    return build_model(config)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded next-item windows of different lengths (B=4, T=MAX_LEN)."""
    seqs = [
        np.array([3, 5, 7, 2, 9]),
        np.array([1, 2, 3, 4, 5, 6, 12]),
        np.array([9, 11]),
        np.array([4, 4, 8, 12, 1, 10]),
    ]
    inputs, targets, owners = training_windows(seqs, MAX_LEN, "last")
    assert owners.tolist() == [0, 1, 2, 3] and inputs[2].tolist() == [0, 0, 0, 0, 0, 9]
    return torch.as_tensor(inputs), torch.as_tensor(targets)


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes(arch):
    model = make_model(arch).eval()
    inputs, _ = batch()
    hidden = model.encode(inputs)
    assert hidden.shape == (4, MAX_LEN, 8)
    logits = model.score(hidden)
    assert logits.shape == (4, MAX_LEN, NUM_ITEMS)
    torch.testing.assert_close(model(inputs), logits)
    shorter = model.encode(inputs[:, -3:])
    assert shorter.shape == (4, 3, 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_factorised_item_table_is_one_low_rank_table_for_inputs_and_scores(arch):
    model = make_model(arch, item_rank=3).eval()
    table = model.item_up(model.item_emb.weight).detach()  # (N + 1, D): the table the product stands for
    assert model.item_emb.weight.shape == (NUM_ITEMS + 1, 3)
    assert torch.linalg.matrix_rank(table) == 3
    items = torch.tensor([[0, 4, 7]])
    torch.testing.assert_close(model.embed_items(items), table[items])  # inputs: rows of the product
    hidden = torch.randn(5, 8)
    torch.testing.assert_close(model.score(hidden), hidden @ table[1:].T)  # scores: the same rows, tied
    full = sum(v.numel() for v in make_model(arch).arrays().values())
    factorised = sum(v.numel() for v in model.arrays().values())
    assert full - factorised == (NUM_ITEMS + 1) * (8 - 3) - 3 * 8  # rows shrink, one shared map is added
    inputs, targets = batch()
    sampled = next_item_loss(model.train(), inputs, targets, loss="sampled-softmax", num_negatives=4)
    assert torch.isfinite(sampled).all()  # the sampled scorer works in the table's width too
    loss = next_item_loss(model, inputs, targets).mean()
    loss.backward()
    assert model.item_up.weight.grad.abs().sum() > 0 and model.item_emb.weight.grad[1:].abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_opacus_validator_accepts_model(arch):
    assert ModuleValidator.validate(make_model(arch), strict=True) == []


def test_tied_scorer_is_the_embedding():
    model = make_model("gru").eval()
    assert model.scorer.weight is model.item_emb.weight
    hidden = torch.randn(3, 8)
    torch.testing.assert_close(model.score(hidden), hidden @ model.item_emb.weight[1:].T)
    with torch.no_grad():
        model.item_emb.weight[5] += 1.0  # item 5 -> logit column 4
    torch.testing.assert_close(model.score(hidden)[:, 4], hidden @ model.item_emb.weight[5])
    assert model.item_emb.weight[0].abs().sum() == 0  # padding row starts at zero


@pytest.mark.parametrize("arch", ARCHS)
def test_per_sample_gradients_match_per_example_backward(arch):
    model = make_model(arch).train()  # Opacus records activations in train mode; dropout 0 keeps it exact
    reference = copy.deepcopy(model)
    inputs, targets = batch()
    B = len(inputs)

    gsm = GradSampleModule(model, loss_reduction="mean")
    loss = next_item_loss(gsm, inputs, targets, per_sample_grads=True)
    loss.backward()

    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert "item_emb.weight" in names and not any(n.startswith("scorer.") for n in names)
    expected = {name: [] for name in names}
    losses = []
    for i in range(B):
        reference.zero_grad(set_to_none=True)
        loss_i = next_item_loss(reference, inputs[i : i + 1], targets[i : i + 1])
        loss_i.backward()
        losses.append(loss_i.item())
        for name, p in reference.named_parameters():
            expected[name].append(p.grad.clone() if p.grad is not None else torch.zeros_like(p))
    assert loss.item() == pytest.approx(np.mean(losses), rel=1e-5)  # the batch loss is the mean

    for name, p in model.named_parameters():
        grad_sample = p.grad_sample
        assert grad_sample.shape == (B, *p.shape), name
        oracle = torch.stack(expected[name])
        error = (grad_sample - oracle).norm() / oracle.norm().clamp_min(1e-12)
        assert error < 1e-4, f"{arch} {name}: relative error {error:.2e}"
        # and summed over the batch, Opacus' mean-reduced grad_sample gives the ordinary gradient
        torch.testing.assert_close(grad_sample.mean(0), p.grad, rtol=1e-4, atol=1e-6)

    table = model.item_emb.weight.grad_sample  # (B, N + 1, D): both uses of the tied table
    assert torch.count_nonzero(table[:, 0]) == 0  # the padding row never gets a gradient
    unused = sorted(set(range(1, NUM_ITEMS + 1)) - set(inputs.unique().tolist()))
    assert table[:, unused].abs().sum() > 0  # items never input still learn through the scorer


@pytest.mark.parametrize("arch", ARCHS)
def test_dp_sgd_step_changes_weights(arch):
    model = make_model(arch)
    inputs, targets = batch()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    engine = PrivacyEngine()
    private, optimizer, private_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
    )
    torch.manual_seed(0)
    loss, seen = train_epoch(private, private_loader, optimizer, StepOptions(per_sample_grads=True))
    assert np.isfinite(loss) and seen > 0
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert set(changed) == set(before)  # every tensor moved (noise reaches all of them)
    assert engine.get_epsilon(delta=1e-5) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_dp_clipping_bounds_each_per_sample_gradient(arch):
    model = make_model(arch)
    inputs, targets = batch()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private, optimizer, _ = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=0.0, max_grad_norm=0.01
    )
    next_item_loss(private, inputs, targets, per_sample_grads=True).backward()
    optimizer.pre_step()  # clip and aggregate, without noise
    params = [p for p in model.parameters() if p.requires_grad]
    per_sample = torch.cat([p.grad_sample.reshape(len(inputs), -1) for p in params], 1)  # (B, P)
    norms = per_sample.norm(dim=1)  # (B,)
    assert (norms > 0.01).all()  # the bound is active for every sequence
    factors = (0.01 / (norms + 1e-6)).clamp(max=1.0)  # flat clipping, as Opacus defines it
    for p in params:  # oracle: the sum of the clipped per-sample gradients
        expected = torch.einsum("b,b...->...", factors, p.grad_sample)
        torch.testing.assert_close(p.summed_grad, expected, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("arch", ["sasrec", "sasrec-original"])
def test_sasrec_is_causal(arch):
    model = make_model(arch).eval()
    items = torch.tensor([[1, 2, 3, 4, 5, 6]])
    changed = items.clone()
    changed[0, 4] = 9
    a, b = model.encode(items), model.encode(changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=1e-6)
    assert (a[:, 4:] - b[:, 4:]).abs().amax(dim=-1).min() > 1e-4  # positions 4 and 5 see the change


@pytest.mark.parametrize("arch", ["sasrec", "sasrec-original"])
def test_sasrec_left_padding_does_not_change_real_positions(arch):
    model = make_model(arch).eval()
    unpadded = model.encode(torch.tensor([[3, 5, 7]]))  # (1, 3, D)
    padded = model.encode(torch.tensor([[0, 0, 0, 3, 5, 7]]))  # (1, 6, D)
    torch.testing.assert_close(padded[:, -1], unpadded[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[:, 3:], unpadded, rtol=1e-5, atol=1e-5)
    other_padding = model.encode(torch.tensor([[0, 0, 0, 3, 5, 7], [0, 0, 0, 0, 5, 7]]))
    torch.testing.assert_close(other_padding[0], padded[0], rtol=1e-5, atol=1e-5)


def test_sasrec_rejects_too_long_input():
    with pytest.raises(ValueError, match="exceeds max_len"):
        make_model("sasrec").encode(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


@pytest.mark.parametrize("arch", ARCHS)
def test_arrays_round_trip(arch):
    source, target = make_model(arch, seed=1).eval(), make_model(arch, seed=2).eval()
    inputs, _ = batch()
    assert not torch.allclose(source(inputs), target(inputs))
    arrays = source.arrays()
    assert not any(key.startswith("scorer.") for key in arrays)
    assert {name for name, _ in source.named_parameters()} <= set(arrays)
    target.load_arrays({k: v.clone() for k, v in arrays.items()})
    torch.testing.assert_close(target(inputs), source(inputs), rtol=0, atol=0)
    assert target.scorer.weight is target.item_emb.weight  # still tied after loading
    with torch.no_grad():
        target.item_emb.weight[3] *= 2  # the scorer follows the loaded embedding
    assert torch.equal(target.score(torch.eye(8))[:, 2], target.item_emb.weight[3])


def test_load_arrays_rejects_mismatched_weights():
    model = make_model("gru")
    arrays = model.arrays()
    with pytest.raises(ValueError, match="missing"):
        model.load_arrays({k: v for k, v in arrays.items() if k != "project.weight"})
    with pytest.raises(ValueError, match="unexpected"):
        model.load_arrays({**arrays, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        make_model("sasrec").load_arrays(arrays)


@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_arrays_hold_each_tensor_once(arch):
    arrays = make_model(arch).arrays()
    storages = [v.data_ptr() for v in arrays.values()]
    assert len(set(storages)) == len(storages), sorted(arrays)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(arch="transformer"), "unknown arch"),
        (dict(num_items=0), "num_items"),
        (dict(emb_dim=10, num_heads=3), "divisible"),
    ],
)
def test_model_config_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{"arch": "sasrec", "num_items": 5, **kwargs})


@pytest.mark.parametrize("num_heads", [0, -2])
def test_model_config_rejects_non_positive_heads(num_heads):
    with pytest.raises(ValueError, match="num_heads"):
        ModelConfig(arch="sasrec", num_items=5, emb_dim=8, num_heads=num_heads)


def test_token_reduction_weighs_every_position_and_sequence_reduction_every_sequence():
    model = make_model("sasrec").eval()
    inputs, targets = batch()
    with torch.no_grad():
        logits = model(inputs)
    valid = targets > 0
    token_loss = torch.nn.functional.cross_entropy(logits[valid], targets[valid] - 1, reduction="none")
    per_sequence = [
        torch.nn.functional.cross_entropy(logits[b][valid[b]], targets[b][valid[b]] - 1) for b in range(len(inputs))
    ]
    with torch.no_grad():
        token = next_item_loss(model, inputs, targets, reduction="token")
        sequence = next_item_loss(model, inputs, targets, reduction="sequence")
    torch.testing.assert_close(token, token_loss.mean())
    torch.testing.assert_close(sequence, torch.stack(per_sequence).mean())
    assert not torch.isclose(token, sequence)  # windows of 1 to 6 positions: the weights differ
    with pytest.raises(ValueError, match="per-sample"):
        next_item_loss(model, inputs, targets, reduction="token", per_sample_grads=True)
    with pytest.raises(ValueError, match="unknown reduction"):
        next_item_loss(model, inputs, targets, reduction="median")


def test_absolute_positions_count_from_the_window_start_whatever_the_padding():
    torch.manual_seed(0)
    config = ModelConfig(arch="sasrec", num_items=NUM_ITEMS, max_len=MAX_LEN, emb_dim=8, num_heads=2, dropout=0.0)
    absolute = build_model(dataclasses.replace(config, positions="absolute")).eval()
    recency = build_model(config).eval()
    recency.load_arrays(absolute.arrays())  # the same weights: only the position ids differ
    short = torch.tensor([[0, 0, 0, 3, 5, 7]])  # three items, left-padded
    shorter_window = torch.tensor([[3, 5, 7]])
    with torch.no_grad():
        padded, unpadded = absolute.encode(short)[:, -3:], absolute.encode(shorter_window)
        torch.testing.assert_close(padded, unpadded)  # item 3 is position 0 either way
        # recency ids: the newest item sits at max_len - 1 either way, so item 3 is position 3 ...
        torch.testing.assert_close(recency.encode(short)[:, -3:], recency.encode(shorter_window))
        assert not torch.allclose(absolute.encode(short)[:, -3:], recency.encode(short)[:, -3:])  # ... not 0
    masked = torch.tensor([[0, 0, 3, 0, 5, 7]])  # an augmentation-masked item inside the window still counts
    assert absolute.position_ids(masked).tolist() == [[0, 0, 0, 1, 2, 3]]
    assert recency.position_ids(masked).tolist() == [[0, 1, 2, 3, 4, 5]]
    assert recency.position_ids(shorter_window).tolist() == [[3, 4, 5]]
    with pytest.raises(ValueError, match="positions"):
        ModelConfig(arch="sasrec", num_items=NUM_ITEMS, positions="relative")
