"""Simulated dropouts and attackers (client/fault_injection.py), and a run that survives them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.fault_injection import attackers, dropped, poisoned
from common.config import RunConfig
from common.data.fake_users import fake_users
from common.data.synthetic import synthetic_interactions
from common.errors import ConfigError, DataError
from common.evaluation.ranking import item_exposure, model_scores, popularity_scores
from common.recipes import cohort_training, local_training
from common.training.federated import local_train
from tests.conftest import COHORT, SIM_CONFIG

pytestmark = pytest.mark.usefixtures("cache_env")


def test_attackers_are_a_fixed_share_and_dropouts_a_per_round_draw():
    assert len(attackers(3, 50, 0.2)) == 10 and attackers(3, 50, 0.2) == attackers(3, 50, 0.2)
    assert len(attackers(3, 10, 0.01)) == 1 and attackers(3, 10, 0.0) == set()
    draws = [dropped(0, r, c, 0.3) for r in range(1, 41) for c in range(50)]
    assert np.mean(draws) == pytest.approx(0.3, abs=0.03)
    assert dropped(0, 5, 7, 0.3) == dropped(0, 5, 7, 0.3)


def test_poisoned_updates_against_their_definitions():
    update = {"w": np.array([1.0, -2.0, 2.0], dtype=np.float32)}
    assert np.allclose(poisoned("sign-flip", update, 3.0, None)["w"], [-3, 6, -6])
    assert np.allclose(poisoned("scale", update, 3.0, None)["w"], [3, -6, 6])
    big = {"w": np.ones(100_000, dtype=np.float32)}
    noise = poisoned("random", big, 2.0, np.random.default_rng(0))["w"]
    assert np.linalg.norm(noise) == pytest.approx(2.0 * np.linalg.norm(big["w"]), rel=0.02)
    with pytest.raises(ConfigError, match="sim-target-item"):
        RunConfig.from_flat({"sim-attack": "promote"})
    with pytest.raises(ConfigError, match="cohort engine"):
        RunConfig.from_flat(
            {"partition": "user", "train-windows": "last", "cohort-engine": True, "sim-attack": "scale"}
        )


def test_training_on_fake_users_pushes_the_target_into_top_k():
    from common.data.sequences import build_sequences

    config = RunConfig.from_flat(
        {
            "data": "synthetic",
            "synthetic-users": 120,
            "synthetic-items": 60,
            "model": "gru",
            "emb-dim": 16,
            "hidden-dim": 16,
            "num-layers": 1,
            "max-len": 12,
            "local-epochs": 3,
            "local-lr": 0.01,
            "local-optimizer": "adam",
            "batch-size": 16,
        }
    )
    frame = synthetic_interactions(120, 60, seed=1)
    data = build_sequences(frame, min_item_count=1, min_user_count=3)
    target = int(np.argmin(np.bincount(data.items, minlength=data.num_items + 1)[1:])) + 1  # a cold item
    fake = fake_users(data, target, seed=0)
    assert all((fake.sequence(u)[1::2] == target).all() for u in range(fake.num_users))
    from common.training.step import model_for

    model = model_for(config.model, config.data, data.num_items, seed=config.train.seed)
    before = item_exposure(model_scores(model.eval()), data, target, max_len=12)
    result = local_train(local_training(config, fake.num_items), fake, model.arrays(), server_round=1, client=0)
    model.load_arrays(result.arrays)
    after = item_exposure(model_scores(model.eval()), data, target, max_len=12)
    assert before < 0.5 < after
    counts = np.bincount(data.items, minlength=data.num_items + 1).astype(np.float64)
    top = int(np.argmax(counts[1:])) + 1
    seen = np.mean([top in data.sequence(u)[:-1] for u in range(data.num_users)])
    assert item_exposure(popularity_scores(counts), data, top, max_len=12) == pytest.approx(1 - seen)


# --- item promotion on the cohort engine: fake one-user devices ----------------------------------


def _small_cohort_model(seed: int = 0):
    from common.model.models import ModelConfig, build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig("sasrec", 40, max_len=12, emb_dim=16, num_layers=1, dropout=0.0))


def test_the_servers_norm_check_leaves_out_exactly_the_users_over_it():
    from common.training.cohort import LocalRecipe, _norms, cohort_update

    model = _small_cohort_model()
    inputs, targets = torch.randint(1, 41, (8, 1, 12)), torch.randint(1, 41, (8, 1, 12))
    targets[:4, :, :9] = 0  # four users with three targets, four with twelve: different update norms
    each = [cohort_update(model, inputs[i : i + 1], targets[i : i + 1], LocalRecipe(1, "sgd", 0.5)) for i in range(8)]
    norms = _norms({k: torch.stack([e.update_sum[k] for e in each]) for k in each[0].update_sum})
    low, high = norms.sort().values[3:5].tolist()  # between the 4th and 5th norm: no user sits on the bound,
    bound = (low + high) / 2  # where batched and one-by-one float sums could fall on either side
    result = cohort_update(model, inputs, targets, LocalRecipe(1, "sgd", 0.5, drop_above=bound))
    kept = [i for i in range(8) if norms[i] <= bound]
    assert 0 < len(kept) < 8 and result.users == len(kept) and result.rejected == 8 - len(kept)
    for key, value in result.update_sum.items():
        assert torch.allclose(value, sum(each[i].update_sum[key] for i in kept), atol=1e-6), key


def test_an_attackers_boost_comes_before_its_clip():
    from common.training.cohort import LocalRecipe, _norms, cohort_update

    model = _small_cohort_model()
    inputs, targets = torch.randint(1, 41, (3, 1, 12)), torch.randint(1, 41, (3, 1, 12))
    honest = cohort_update(model, inputs[:1], targets[:1], LocalRecipe(1, "sgd", 0.5))
    boosted = cohort_update(model, inputs[:1], targets[:1], LocalRecipe(1, "sgd", 0.5, scale=10.0))
    for key, value in honest.update_sum.items():
        assert torch.allclose(boosted.update_sum[key], 10 * value, atol=1e-5), key
    norm = float(_norms({k: v.unsqueeze(0) for k, v in honest.update_sum.items()}))
    bounded = cohort_update(model, inputs[:1], targets[:1], LocalRecipe(1, "sgd", 0.5, scale=10.0, clip=2 * norm))
    assert float(_norms({k: v.unsqueeze(0) for k, v in bounded.update_sum.items()})) == pytest.approx(2 * norm)


PROMOTE = {**COHORT, "sim-attack": "promote", "sim-attackers": 0.05, "sim-target-item": 7}


def test_fake_users_join_the_population_after_the_real_ones(cache_env):
    from client.local_data import cohort_data
    from common.data.fake_users import population_with_fakes

    config = RunConfig.from_flat(PROMOTE)
    population, real = population_with_fakes(config.data, config.federation, config.train.seed)
    assert real == 200 and population.num_users == 210  # 5% of 200 real users
    for user in range(real, population.num_users):
        history = population.sequence(user)
        assert (history[1::2] == 7).all() and (history[0::2] != 7).all() and population.user_ids[user] < 0
    assert set(population.lengths()[real:]) <= set(population.lengths()[:real])  # lengths of real users
    data, rows = cohort_data(config, {"partition-id": 0}, [3, 200, 209])
    assert rows[1:].tolist() == [200, 209] and data is population
    with pytest.raises(DataError, match="outside the run's 210"):
        cohort_data(config, {"partition-id": 0}, [210])


def test_fake_users_promote_the_target_and_the_norm_check_bounds_them(cache_env):
    from common.data.fake_users import population_with_fakes
    from common.training.cohort_clients import train_chunks
    from common.training.step import model_for

    config = RunConfig.from_flat({**PROMOTE, "sim-attack-scale": 50.0})
    population, real = population_with_fakes(config.data, config.federation, config.train.seed)
    start = model_for(config.model, config.data, population.num_items, seed=config.train.seed).arrays()
    chunks = [(0, np.concatenate([np.arange(0, 20), np.arange(real, real + 4)]))]
    clean = train_chunks(
        cohort_training(config, population.num_items, True),
        population,
        [(0, np.arange(0, 20))],
        start,
        1,
        fakes_from=real,
    )
    attacked = train_chunks(
        cohort_training(config, population.num_items, True), population, chunks, start, 1, fakes_from=real
    )
    assert attacked.metrics["fake-users"] == 4 and attacked.metrics["users"] == 24

    def target_row_change(result) -> float:
        return float((result.arrays["item_emb.weight"][7] - start["item_emb.weight"][7]).norm())

    assert target_row_change(attacked) > 10 * target_row_change(clean)
    bound = 1.0
    bounded_config = config.replace(**{"max-update-norm": bound})
    bounded = train_chunks(
        cohort_training(bounded_config, population.num_items, True), population, chunks, start, 1, fakes_from=real
    )
    users = bounded.metrics["users"]
    change = {k: (bounded.arrays[k] - start[k]) * users for k in start if k in bounded.arrays}
    assert float(torch.sqrt(sum((v**2).sum() for v in change.values()))) <= users * bound * (1 + 1e-4)
    assert bounded.metrics["rejected-users"] + users == 24 and bounded.metrics["fake-users"] == 4


def test_the_promotion_benchmark_targets_the_coldest_training_item(cache_env):
    from common.data.load import load_sequence_data
    from simulations.benchmarks.robustness.bench_faults import cold_item

    flat = {**COHORT}
    counts = load_sequence_data(RunConfig.from_flat(flat).data).item_counts(train_only=True)
    target = cold_item(flat)
    assert 1 <= target <= len(counts) - 1 and counts[target] == counts[1:].min()


def test_the_users_trimmed_mean_matches_a_numpy_oracle():
    from common.training.cohort import trimmed_sum

    rng = np.random.default_rng(0)
    per_user = {"w": torch.from_numpy(rng.normal(size=(20, 3, 40_000)).astype(np.float32)), "b": torch.ones(20, 2)}
    got = trimmed_sum(per_user, 0.1)
    ordered = np.sort(per_user["w"].numpy(), axis=0)[2:18]  # floor(0.1 x 20) = 2 cut at each end
    assert np.allclose(got["w"].numpy(), 20 * ordered.mean(0), atol=1e-4)
    assert torch.allclose(got["b"], torch.full((2,), 20.0))
    assert torch.allclose(trimmed_sum(per_user, 0.01)["w"], per_user["w"].sum(0))  # nothing to cut


def test_a_trimmed_mean_of_users_keeps_fake_users_off_the_targets_row(cache_env):
    from common.data.fake_users import population_with_fakes
    from common.training.cohort_clients import train_chunks
    from common.training.step import model_for

    config = RunConfig.from_flat({**PROMOTE, "cohort-chunk": 60})
    population, real = population_with_fakes(config.data, config.federation, config.train.seed)
    start = model_for(config.model, config.data, population.num_items, seed=config.train.seed).arrays()
    chunk = [(0, np.concatenate([np.arange(0, 36), np.arange(real, real + 4)]))]  # 4 fake users of 40

    def target_row_change(flat_overrides: dict) -> float:
        result = train_chunks(
            cohort_training(config.replace(**flat_overrides), population.num_items, True),
            population,
            chunk,
            start,
            1,
            fakes_from=real,
        )
        assert result.metrics["users"] == 40 and result.metrics["fake-users"] == 4
        return float((result.arrays["item_emb.weight"][7] - start["item_emb.weight"][7]).norm())

    plain, trimmed = target_row_change({}), target_row_change({"user-trim-beta": 0.15})
    assert trimmed < 0.05 * plain
    with pytest.raises(ConfigError, match="one chunk per round"):
        RunConfig.from_flat({**COHORT, "user-trim-beta": 0.1})
    with pytest.raises(ConfigError, match="dp-mode = server"):
        RunConfig.from_flat({**COHORT, "cohort-chunk": 60, "user-trim-beta": 0.1, "dp-mode": "server"})


def test_the_servers_row_clip_bounds_each_users_rows_and_leaves_the_rest():
    from common.training.cohort import LocalRecipe, cohort_update, item_table_name

    model = _small_cohort_model()
    table = item_table_name(model)
    inputs, targets = torch.randint(1, 41, (6, 1, 12)), torch.randint(1, 41, (6, 1, 12))
    plain = cohort_update(model, inputs, targets, LocalRecipe(1, "sgd", 0.5), keep_users=True).per_user
    row_norms = plain[table].norm(dim=-1)  # (U, N + 1)
    bound = float(row_norms[row_norms > 0].median())
    clipped = cohort_update(model, inputs, targets, LocalRecipe(1, "sgd", 0.5, row_clip=bound), keep_users=True)
    after = clipped.per_user[table]
    assert float(after.norm(dim=-1).max()) <= bound * (1 + 1e-5)
    under = row_norms <= bound  # rows already within the bound are untouched; the others keep their direction
    assert torch.allclose(after[under], plain[table][under], atol=1e-7)
    over = ~under
    assert over.any() and torch.allclose(after[over], plain[table][over] * (bound / row_norms[over]).unsqueeze(-1))
    for key in plain:  # only the item table is clipped row by row
        if key != table:
            assert torch.allclose(clipped.per_user[key], plain[key], atol=1e-7), key
    assert torch.allclose(clipped.update_sum[table], after.sum(0), atol=1e-6)


def test_the_row_clip_bounds_what_fake_users_do_to_the_targets_row(cache_env):
    from common.data.fake_users import population_with_fakes
    from common.training.cohort_clients import train_chunks
    from common.training.step import model_for

    config = RunConfig.from_flat({**PROMOTE, "sim-attack-scale": 50.0})
    population, real = population_with_fakes(config.data, config.federation, config.train.seed)
    start = model_for(config.model, config.data, population.num_items, seed=config.train.seed).arrays()
    chunks = [(0, np.concatenate([np.arange(0, 20), np.arange(real, real + 4)]))]

    def target_row_sum(overrides: dict) -> float:  # the norm of the users' summed change of the target's row
        result = train_chunks(
            cohort_training(config.replace(**overrides), population.num_items, True),
            population,
            chunks,
            start,
            1,
            fakes_from=real,
        )
        users = result.metrics["users"]
        return float(((result.arrays["item_emb.weight"][7] - start["item_emb.weight"][7]) * users).norm())

    bound = 0.05
    plain, clipped = target_row_sum({}), target_row_sum({"max-row-norm": bound})
    assert plain > 24 * bound  # without the clip the fake users alone push it further than 24 clipped users could
    assert clipped <= 24 * bound * (1 + 1e-4)
    with pytest.raises(ConfigError, match="max-row-norm"):
        RunConfig.from_flat({**SIM_CONFIG, "max-row-norm": 1.0})


def test_bandwagon_fake_users_draw_their_items_by_popularity():
    from common.data.fake_users import fake_histories

    popularity = np.zeros(41, dtype=np.int64)
    popularity[[3, 5, 7]] = [900, 100, 5000]  # item 7 is the target: never drawn, however popular
    histories = fake_histories(np.array([400, 400]), 40, 7, seed=0, popularity=popularity)
    others = np.concatenate([h[0::2] for h in histories])
    assert set(others.tolist()) == {3, 5} and all((h[1::2] == 7).all() for h in histories)
    assert 0.85 < (others == 3).mean() < 0.95  # 900 : 100
    uniform = np.concatenate([h[0::2] for h in fake_histories(np.array([400, 400]), 40, 7, seed=0)])
    assert len(set(uniform.tolist())) > 30 and 7 not in uniform
    with pytest.raises(DataError, match="besides the target"):
        fake_histories(np.array([10]), 40, 7, seed=0, popularity=np.eye(41, dtype=np.int64)[7])


def test_a_bandwagon_population_holds_the_popular_items(cache_env):
    from common.data.fake_users import population_with_fakes

    def fakes_and_counts(profile: str):
        config = RunConfig.from_flat({**PROMOTE, "sim-fake-profile": profile})
        population, real = population_with_fakes(config.data, config.federation, config.train.seed)
        train = np.concatenate([population.sequence(u)[:-2] for u in range(real)])  # what the attacker drew from
        counts = np.bincount(train, minlength=population.num_items + 1)
        counts[7] = 0  # the target is never drawn
        fakes = np.concatenate([population.sequence(u)[0::2] for u in range(real, population.num_users)])
        return fakes, counts

    popular, counts = fakes_and_counts("popular")
    uniform, _ = fakes_and_counts("random")
    by_popularity = (counts**2).sum() / counts.sum()  # the mean count of a draw in proportion to counts
    assert abs(counts[popular].mean() - by_popularity) < 0.05 * by_popularity
    assert counts[popular].mean() > counts[uniform].mean()
