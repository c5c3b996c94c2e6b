"""The cohort's summed loss as the batched paths compute it, against the per-user definition."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from common.model.models import ModelConfig, build_model
from common.training import window_loss
from common.training.cohort import user_loss
from common.training.window_loss import users_loss_sum, weighted_cross_entropy

CONFIG = ModelConfig("sasrec", 30, max_len=10, emb_dim=16, num_layers=1, dropout=0.0)


def _windows(users: int = 5, windows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, 31, (users, windows, 10), generator=generator)
    targets = torch.randint(1, 31, (users, windows, 10), generator=generator)
    for u in range(users):
        inputs[u, 0, : 2 + u] = 0  # windows of different lengths, none full
        targets[u, 0, : 2 + u] = 0
    targets[0, 1, 4] = 0  # a position without a target inside a window
    targets[1, 1] = 0  # a window without any target adds nothing
    return inputs, targets


def _model(features: bool):
    """The small SASRec, with 4 item features in 2 slots when `features`."""
    config = dataclasses.replace(CONFIG, num_features=4, feature_slots=2) if features else CONFIG
    torch.manual_seed(0)
    model = build_model(config)
    if features:
        index = torch.randint(0, 5, (31, 2))
        index[0] = 0
        model.set_item_features(index)
    return model


@pytest.mark.parametrize("features", [False, True])
def test_loss_and_gradient_equal_the_sum_of_each_users_loss(features):
    model = _model(features)
    inputs, targets = _windows()
    params = dict(model.named_parameters())
    expected = sum(user_loss(model, params, x, y) for x, y in zip(inputs, targets))
    expected_grads = torch.autograd.grad(expected, list(params.values()))
    total = users_loss_sum(model, inputs, targets)
    grads = torch.autograd.grad(total, list(params.values()))
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    for name, g, e in zip(params, grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-7), name


def test_weighted_cross_entropy_matches_torch_and_runs_backward_once():
    torch.manual_seed(0)
    logits = torch.randn(7, 11, requires_grad=True)
    items, weight = torch.randint(0, 11, (7,)), torch.rand(7)
    weight[2] = 0.0
    reference = (F.cross_entropy(logits, items, reduction="none") * weight).sum()
    (expected,) = torch.autograd.grad(reference, logits)
    loss = weighted_cross_entropy(logits * 1.0, items, weight)
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)
    loss.backward(retain_graph=True)
    assert torch.allclose(logits.grad, expected, atol=1e-7)
    with pytest.raises(RuntimeError, match="backward runs once"):
        loss.backward()


@pytest.mark.parametrize("features", [False, True])
def test_bfloat16_scoring_is_float32_within_bfloat16_rounding(monkeypatch, features):
    """bfloat16 inputs to the scorer's products, float32 sums and softmax: the loss and every gradient
    within ~1% of float32 (bfloat16 keeps 8 bits); the padded positions change nothing."""
    if not window_loss.native_bfloat16():
        pytest.skip("this CPU multiplies bfloat16 only by emulation: the float32 path runs (next test)")
    monkeypatch.setattr(window_loss, "SCORE_ROWS_MULTIPLE", 64)  # the 5 users' ~60 positions padded
    model = _model(features)
    inputs, targets = _windows()
    params = dict(model.named_parameters())
    exact = users_loss_sum(model, inputs, targets)
    exact_grads = torch.autograd.grad(exact, list(params.values()))
    low = users_loss_sum(model, inputs, targets, precision="bfloat16")
    low_grads = torch.autograd.grad(low, list(params.values()))
    assert float(low) == pytest.approx(float(exact), rel=1e-2)
    assert float(low) != float(exact)  # it did run in bfloat16
    for name, g, e in zip(params, low_grads, exact_grads):
        assert g.dtype == torch.float32, name
        assert float((g - e).norm()) <= 0.03 * float(e.norm()) + 1e-6, name


def test_bfloat16_scoring_without_native_support_is_float32_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(window_loss, "native_bfloat16", lambda: False)
    monkeypatch.setattr(window_loss, "_warned", False)
    torch.manual_seed(0)
    model = build_model(CONFIG)
    inputs, targets = _windows()
    with caplog.at_level("WARNING"):
        low = users_loss_sum(model, inputs, targets, precision="bfloat16")
        users_loss_sum(model, inputs, targets, precision="bfloat16")
    assert float(low) == float(users_loss_sum(model, inputs, targets))
    assert sum("no native bfloat16" in r.message for r in caplog.records) == 1  # once, not every chunk


def test_an_unknown_precision_is_refused():
    model = build_model(CONFIG)
    with pytest.raises(ValueError, match="precision 'float16' is not float32 or bfloat16"):
        users_loss_sum(model, *_windows(), precision="float16")
