"""Ghost clipping (one clipped SGD step per user, no per-user weights) against the exact vmap path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.model.models import ModelConfig, build_model
from common.training import ghost_clipping
from common.training.cohort import LocalRecipe, _one_sgd_step, _stacked, cohort_update

ITEMS, LENGTH, USERS = 40, 12, 8
MODELS = {
    "sasrec-pre-ln": ModelConfig("sasrec", ITEMS, max_len=LENGTH, emb_dim=16, num_layers=2, num_heads=2, dropout=0.0),
    "sasrec-original": ModelConfig(
        "sasrec", ITEMS, max_len=LENGTH, emb_dim=16, num_layers=2, dropout=0.0, block="original", positions="absolute"
    ),
    "gru": ModelConfig("gru", ITEMS, max_len=LENGTH, emb_dim=16, hidden_dim=12, num_layers=2, dropout=0.0),
    "lstm": ModelConfig("lstm", ITEMS, max_len=LENGTH, emb_dim=16, hidden_dim=12, num_layers=2, dropout=0.0),
}


def _model(name: str, features: bool):
    config = MODELS[name]
    if features:
        config = dataclasses.replace(config, num_features=7, feature_slots=3)
    torch.manual_seed(0)
    model = build_model(config)
    if features:
        index = torch.randint(0, 8, (ITEMS + 1, 3))
        index[0] = 0
        index[5] = 0  # an item without features
        model.set_item_features(index)
    with torch.no_grad():  # trained-looking weights: every gradient term of the same order
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.train()
    return model


def _windows(windows: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """USERS users' (U, W, T) windows with histories of different lengths (left padding), an item
    repeated inside a window (the same table row twice) and an input item that is also a target."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(1, ITEMS + 1, (USERS, windows, LENGTH), generator=generator)
    targets = torch.randint(1, ITEMS + 1, (USERS, windows, LENGTH), generator=generator)
    for u in range(USERS):
        inputs[u, :, : u + 1] = 0  # user u's history is u + 1 items shorter than the window
        targets[u, :, : u + 1] = 0  # so no user has a target at the first position
    inputs[0, 0, -3:] = 7
    targets[1, 0, -1] = inputs[1, 0, -2]
    return inputs, targets


def _user_norms(model, inputs, targets, lr: float) -> torch.Tensor:
    """Each user's one-step update norm, by the exact per-user path."""
    per_user = _stacked(model, inputs, targets, LocalRecipe(1, "sgd", lr), keep_users=True).per_user
    return torch.sqrt(sum(u.flatten(1).pow(2).sum(1) for u in per_user.values()))


def _assert_same(result, expected) -> None:
    assert result.users == expected.users
    assert result.clipped == expected.clipped
    assert result.loss_sum == pytest.approx(expected.loss_sum, rel=1e-6)
    scale = max(float(v.abs().max()) for v in expected.update_sum.values())
    assert result.update_sum.keys() == expected.update_sum.keys()
    for key, value in expected.update_sum.items():
        assert torch.allclose(result.update_sum[key], value, rtol=1e-4, atol=1e-5 * scale), key


@pytest.fixture(params=["cheaper", "gram", "materialise"])
def form(request, monkeypatch):
    """Every way of taking a norm: the cost model's pick, and each form everywhere."""
    monkeypatch.setattr(ghost_clipping, "FORM", request.param)
    return request.param


@pytest.mark.parametrize("features", [False, True], ids=["plain-items", "item-features"])
@pytest.mark.parametrize("name", list(MODELS))
def test_clipped_sum_equals_the_per_user_path(name, features, form):
    model = _model(name, features)
    assert ghost_clipping.supports(model)
    inputs, targets = _windows()
    lr = 0.5
    norms = _user_norms(model, inputs, targets, lr).sort().values
    # A bound halfway between the 4th and 5th largest norms: half the users clipped, none on the edge.
    clip = float(norms[USERS // 2 - 1] + norms[USERS // 2]) / 2
    assert float(norms[USERS // 2] - norms[USERS // 2 - 1]) > 1e-3 * clip
    recipe = LocalRecipe(1, "sgd", lr, clip=clip)
    result = cohort_update(model, inputs, targets, recipe)
    expected = _stacked(model, inputs, targets, recipe)
    assert expected.clipped == USERS // 2
    _assert_same(result, expected)


@pytest.mark.parametrize("name", ["sasrec-pre-ln", "lstm"])
def test_several_windows_per_user_count_as_one_user(name, form):
    model = _model(name, features=True)
    inputs, targets = _windows(windows=2)
    norms = _user_norms(model, inputs, targets, 1.0)
    recipe = LocalRecipe(1, "sgd", 1.0, clip=float(norms.median()) * 0.999)
    _assert_same(cohort_update(model, inputs, targets, recipe), _stacked(model, inputs, targets, recipe))


@pytest.mark.parametrize("name", list(MODELS))
def test_a_clip_nobody_reaches_gives_the_plain_one_step_sum(name):
    model = _model(name, features=name == "gru")
    inputs, targets = _windows()
    bound = float(_user_norms(model, inputs, targets, 0.5).max()) * 10
    result = cohort_update(model, inputs, targets, LocalRecipe(1, "sgd", 0.5, clip=bound))
    plain = _one_sgd_step(model, inputs, targets, 0.5)
    assert result.clipped == 0
    _assert_same(result, plain)


def test_a_model_it_does_not_know_keeps_the_per_user_path():
    config = dataclasses.replace(MODELS["sasrec-pre-ln"], item_rank=8)  # item_up's weight used outside its layer
    torch.manual_seed(0)
    model = build_model(config)
    assert not ghost_clipping.supports(model)
    inputs, targets = _windows()
    recipe = LocalRecipe(1, "sgd", 0.5, clip=1e-3)
    result, expected = cohort_update(model, inputs, targets, recipe), _stacked(model, inputs, targets, recipe)
    assert result.clipped == expected.clipped == USERS
    for key, value in expected.update_sum.items():
        assert torch.equal(result.update_sum[key], value), key


@pytest.mark.parametrize("name", sorted(MODELS))
def test_with_keyed_dropout_the_ghost_path_equals_the_vmap_path(name):
    """Each user's dropout masks come from its own key in both paths (`common.model.keyed_dropout`), so the
    clipped sums agree with dropout on too, although the ghost path reorders the users."""
    model = _model(name, features=False)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    for block in getattr(model, "blocks", []):  # the attention weights' dropout
        for holder in (block, getattr(block, "attn", None)):
            for attribute in ("dropout", "attn_dropout"):
                if holder is not None and isinstance(getattr(holder, attribute, None), float):
                    setattr(holder, attribute, 0.3)
    inputs, targets = _windows()
    keys = torch.arange(100, 100 + USERS, dtype=torch.int64)
    recipe = LocalRecipe(1, "sgd", 0.5, clip=float(_user_norms(model, inputs, targets, 0.5).median()))
    ghost = cohort_update(model, inputs, targets, recipe, keys=keys)
    exact = _stacked(model, inputs, targets, recipe, keys=keys)
    _assert_same(ghost, exact)
    assert 0 < exact.clipped < USERS
    without_keys = _stacked(model, inputs, targets, recipe, keys=keys + 1)  # other masks: another sum
    assert any(not torch.allclose(without_keys.update_sum[k], exact.update_sum[k]) for k in exact.update_sum)
