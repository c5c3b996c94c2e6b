"""Item side features: metadata parsing, alignment with item indices, the featured models (exact DP
per-sample gradients, training, federation, checkpoint and ONNX export)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from opacus import GradSampleModule

from client.ondevice import OnDeviceRecommender
from common.config import RunConfig
from common.data.item_features import item_features, read_item_labels
from common.data.load import load_item_features, load_sequence_data
from common.data.sequences import training_windows
from common.data.synthetic import synthetic_interactions
from common.errors import ConfigError, DataError
from common.evaluation.ranking import model_scores
from common.model.checkpoint import load_model
from common.model.export import export_run
from common.model.losses import next_item_loss
from common.model.models import ModelConfig, build_model
from common.privacy import grad_samplers  # noqa: F401  (the models' Opacus per-sample-gradient rules)
from common.privacy.ledger import PrivacyLedger
from common.recipes import cohort_training, local_training
from common.training.cohort import LocalRecipe, cohort_update
from common.training.cohort_clients import train_chunks
from common.training.federated import local_train
from common.training.step import model_for
from fedseqrec.centralized import train_centralized
from tests.conftest import COHORT
from tests.unit.test_cohort import _one_by_one

pytestmark = pytest.mark.usefixtures("cache_env")
ARCHS = ("sasrec", "gru", "lstm")

MOVIES_DAT = "10::Heat (1995)::Action|Crime|Thriller\n3::Toy Story (1995)::Animation|Comedy\n7::Old (1931)::Drama\n"
U_ITEM = (
    "3|Toy|01-Jan-1995||url|" + "|".join("1" if g in (3, 5) else "0" for g in range(19)) + "\n"
    "10|Heat|01-Jan-1981||url|" + "|".join("1" if g == 1 else "0" for g in range(19)) + "\n"
    "7|Nodate|||url|" + "|".join("1" if g == 8 else "0" for g in range(19)) + "\n"
)


def labels_of(features, item_ids, row):
    return sorted(features.vocabulary[j - 1] for j in features.index[row] if j)


def test_movies_dat_genres_and_year_buckets_align_with_item_indices(tmp_path):
    path = tmp_path / "movies.dat"
    path.write_text(MOVIES_DAT, encoding="latin-1")
    item_ids = np.array([-1, 10, 99, 3, 7])  # index -> original ID; 99 has no metadata
    features = item_features(item_ids, read_item_labels(path, ("genre", "year")))
    assert features.index.shape == (5, 4) and not features.index[0].any() and not features.index[2].any()
    assert labels_of(features, item_ids, 1) == ["genre=Action", "genre=Crime", "genre=Thriller", "year=1995-1999"]
    assert labels_of(features, item_ids, 3) == ["genre=Animation", "genre=Comedy", "year=1995-1999"]
    assert labels_of(features, item_ids, 4) == ["genre=Drama", "year=1930-1934"]
    assert features.missing_items == 1
    genre_only = item_features(item_ids, read_item_labels(path, ("genre",)))
    assert not any(v.startswith("year") for v in genre_only.vocabulary)


def test_u_item_genre_flags_and_dates(tmp_path):
    path = tmp_path / "u.item"
    path.write_text(U_ITEM, encoding="latin-1")
    features = item_features(np.array([-1, 3, 7, 10]), read_item_labels(path, ("genre", "year")))
    assert labels_of(features, None, 1) == ["genre=Animation", "genre=Comedy", "year=1995-1999"]
    assert labels_of(features, None, 2) == ["genre=Drama"]  # no release date: no year feature
    assert labels_of(features, None, 3) == ["genre=Action", "year=1980-1984"]


def test_category_column_of_an_interactions_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,category\n1,5,1,shoes\n2,5,2,shoes\n1,8,3,hats|red\n")
    features = item_features(np.array([-1, 8, 5]), read_item_labels(path, ("category",)))
    assert labels_of(features, None, 1) == ["category=hats", "category=red"]
    assert labels_of(features, None, 2) == ["category=shoes"]


@pytest.mark.parametrize(
    "name, text, features, match",
    [
        ("movies.dat", "1::Title (1999)\n", ("genre",), "line 1: expected MovieID::Title::Genres"),
        ("movies.dat", MOVIES_DAT, ("color",), "no feature.s. color"),
        ("u.item", "1|T|01-Jan-1995||u|0|1\n", ("genre",), "line 1: expected id.title"),
        ("u.item", U_ITEM.replace("01-Jan-1981", "01-Jan-19x1"), ("year",), "does not end in a year"),
        ("items.csv", "item_id,kind\n1,a\n", ("category",), "no column.s. category"),
        ("items.csv", "item_id,category\nx,a\n", ("category",), "row 1: item 'x' is not an integer"),
    ],
)
def test_malformed_metadata_is_a_one_line_error(tmp_path, name, text, features, match):
    path = tmp_path / name
    path.write_text(text)
    read_item_labels.cache_clear()
    with pytest.raises(DataError, match=match) as error:
        read_item_labels(path, features)
    assert "\n" not in str(error.value)


def test_missing_or_foreign_metadata_and_bad_keys(tmp_path):
    with pytest.raises(DataError, match="item metadata file not found"):
        read_item_labels(tmp_path / "nope.dat", ("genre",))
    path = tmp_path / "movies.dat"
    path.write_text(MOVIES_DAT)
    with pytest.raises(DataError, match="describes none of the 2 catalogue items"):
        item_features(np.array([-1, 1000, 1001]), read_item_labels(path, ("genre",)))
    with pytest.raises(ConfigError, match="'item-metadata'.*item-features is empty"):
        RunConfig.from_flat({"item-metadata": str(path)})
    with pytest.raises(ConfigError, match="'item-features'.*synthetic data has no item metadata"):
        RunConfig.from_flat({"data": "synthetic", "item-features": "genre"})
    with pytest.raises(ConfigError, match="'item-features'.*distinct"):
        RunConfig.from_flat({"item-features": "genre,,genre"})


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Synthetic interactions with a `category` column (4 categories by item ID), as a CSV file."""
    root = tmp_path_factory.mktemp("featured")
    frame = synthetic_interactions(120, 40, seed=1)
    frame["category"] = ["c" + str(item % 4) for item in frame["item_id"]]
    path = root / "interactions.csv"
    frame.to_csv(path, index=False)
    return path


def featured_flat(path, **extra) -> dict:
    return {
        "data": str(path),
        "item-features": "category",
        "max-len": 12,
        "emb-dim": 16,
        "num-layers": 1,
        "dropout": 0.0,
        "epochs": 2,
        "batch-size": 32,
        "lr": 0.01,
        **extra,
    }


def test_feature_table_follows_the_item_reindexing(catalogue):
    config = RunConfig.from_flat(featured_flat(catalogue))
    data = load_sequence_data(config.data)
    features = load_item_features(config.data, data.item_ids)
    expected = ["category=c" + str(item % 4) for item in data.item_ids[1:]]
    got = [features.vocabulary[row[0] - 1] for row in features.index[1:]]
    assert got == expected and not features.index[0].any()


def featured_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(arch, 12, 6, emb_dim=8, hidden_dim=10, num_layers=2, num_heads=2, dropout=0.0)
    model = build_model(dataclasses.replace(config, num_features=5, feature_slots=3))
    rng = np.random.default_rng(0)
    index = torch.zeros(13, 3, dtype=torch.long)
    for row in range(1, 13):
        count = rng.integers(0, 4)
        index[row, :count] = torch.as_tensor(rng.choice(5, count, replace=False) + 1)
    model.set_item_features(index)
    with torch.no_grad():
        model.feature_emb.weight.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_featured_per_sample_gradients_are_exact(arch):
    """DP-SGD clips what Opacus computes: the feature table's per-sample gradient (input and tied
    scorer together) must equal one backward pass per sequence."""
    model = featured_model(arch).train()
    reference = copy.deepcopy(model)
    sequences = [np.array([3, 5, 7, 2, 9]), np.array([1, 2, 3, 4, 5, 6, 12]), np.array([9, 11])]
    inputs, targets, _ = training_windows(sequences, 6, "last")
    inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
    next_item_loss(GradSampleModule(model, loss_reduction="mean"), inputs, targets, per_sample_grads=True).backward()
    for name, param in model.named_parameters():
        oracle = []
        for i in range(len(inputs)):
            reference.zero_grad(set_to_none=True)
            next_item_loss(reference, inputs[i : i + 1], targets[i : i + 1]).backward()
            grad = dict(reference.named_parameters())[name].grad
            oracle.append(torch.zeros_like(param) if grad is None else grad.clone())
        oracle = torch.stack(oracle)
        error = (param.grad_sample - oracle).norm() / oracle.norm().clamp_min(1e-12)
        assert error < 1e-4, f"{arch} {name}: relative error {error:.2e}"
    assert model.feature_emb.weight.grad_sample[:, 0].abs().sum() == 0  # "no feature" never learns


def test_count_matrix_and_gather_give_the_same_scores_and_per_sample_gradients(monkeypatch):
    """The catalogue's feature table is a count-matrix product (fast under vmap) unless the matrix
    would be too large; both ways must agree, forward and in Opacus' per-sample gradients."""
    import common.model.models
    import common.privacy.grad_samplers

    inputs = torch.tensor([[0, 3, 5, 7, 2, 9], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[3, 5, 7, 2, 9, 11], [2, 3, 4, 5, 6, 12]])
    results = {}
    for way in ("count-matrix", "gather"):
        if way == "gather":
            for module in (common.model.models, common.privacy.grad_samplers):
                monkeypatch.setattr(module, "count_matrix_fits", lambda items, features: False)
        model = featured_model("sasrec").train()
        scores = model(inputs).detach()
        wrapped = GradSampleModule(model, loss_reduction="mean")
        next_item_loss(wrapped, inputs, targets, per_sample_grads=True).backward()
        results[way] = scores, {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    torch.testing.assert_close(results["count-matrix"][0], results["gather"][0])
    for name, grad in results["count-matrix"][1].items():
        torch.testing.assert_close(grad, results["gather"][1][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_depend_on_features_and_the_table_is_not_a_weight(arch):
    model = featured_model(arch).eval()
    inputs = torch.tensor([[0, 0, 3, 5, 7, 2]])
    scores = model_scores(model)
    before = scores(inputs)
    assert "feature_index" not in model.arrays() and "feature_emb.weight" in model.arrays()
    shuffled = model.feature_index.clone()
    shuffled[1:] = shuffled[1:].roll(1, 0)
    model.set_item_features(shuffled)
    assert not torch.allclose(scores(inputs), before)
    # and with an empty table the model is a plain item-ID model (same weights)
    model.set_item_features(torch.zeros_like(shuffled))
    plain = build_model(dataclasses.replace(model.config, num_features=0, feature_slots=0)).eval()
    plain.load_arrays({k: v for k, v in model.arrays().items() if k != "feature_emb.weight"})
    torch.testing.assert_close(scores(inputs), model_scores(plain)(inputs))


@pytest.mark.parametrize("arch", ARCHS)
def test_featured_model_trains_saves_and_exports(catalogue, tmp_path, arch):
    config = RunConfig.from_flat(featured_flat(catalogue, model=arch))
    metrics = train_centralized(config, tmp_path / "run", show_progress=False)
    assert metrics["validation"]["ndcg@10"] > metrics["popularity_baseline"]["validation"]["ndcg@10"]
    model, item_ids, _ = load_model(tmp_path / "run" / "model.pt")
    assert model.has_features and model.feature_emb.weight[1:].abs().sum() > 0
    fresh = model_for(config.model, config.data, len(item_ids) - 1, seed=config.train.seed, item_ids=item_ids)
    assert torch.equal(model.feature_index, fresh.feature_index)  # the file keeps the table it trained with
    assert (model.feature_emb.weight - fresh.feature_emb.weight).abs().max() > 1e-3  # learned from its init
    export_run(tmp_path / "run", tmp_path / "export", item_counts=np.ones(len(item_ids), dtype=np.int64))
    runner = OnDeviceRecommender.load(tmp_path / "export" / "model.onnx")  # table baked into the graph
    history = [int(i) for i in item_ids[1:6]]
    got = runner.recommend(history, k=5)
    with torch.no_grad():
        index = {int(v): i for i, v in enumerate(item_ids) if i}
        seen = torch.tensor([[0] * (12 - len(history)) + [index[h] for h in history]])
        want = model_scores(model)(seen)[0]
        want[seen[0, -len(history) :] - 1] = float("-inf")
    assert got.items == [int(item_ids[i + 1]) for i in want.topk(5).indices]


def test_cohort_engine_trains_feature_embeddings_only_as_weights(catalogue):
    config = RunConfig.from_flat(
        {
            **COHORT,
            "data": str(catalogue),
            "item-features": "category",
            "local-optimizer": "adam",
            "local-lr": 0.01,
            "local-epochs": 2,
        }
    )
    data = load_sequence_data(config.data)
    start = model_for(
        config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids
    ).arrays()
    result = train_chunks(
        cohort_training(config, data.num_items),
        data,
        [(0, np.arange(16)), (1, np.arange(16, 32))],
        start,
        server_round=1,
    )
    assert set(result.arrays) == set(start) and "feature_index" not in result.arrays
    assert not torch.equal(result.arrays["feature_emb.weight"], start["feature_emb.weight"])


def test_movielens_metadata_is_found_without_the_ratings_file(tmp_path, monkeypatch):
    """A server that holds only the catalogue still finds the dataset's public movies.dat."""
    (tmp_path / "ml-1m").mkdir()
    (tmp_path / "ml-1m" / "movies.dat").write_text(MOVIES_DAT)
    monkeypatch.setenv("FEDSEQREC_DATA_DIR", str(tmp_path))
    settings = RunConfig.from_flat({"data": "ml-1m", "item-features": "genre"}).data
    features = load_item_features(settings, np.array([-1, 3, 7, 10]))
    assert labels_of(features, None, 2) == ["genre=Drama"]


def test_the_paired_benchmark_compares_runs_that_differ_in_one_key(catalogue, tmp_path):
    from simulations.benchmarks.quality.bench_item_features import compare

    runs = {}
    for name, extra in {"plain": {}, "mask": {"augment": "mask"}, "featured": {"item-features": "category"}}.items():
        flat = {**featured_flat(catalogue, epochs=1), "item-features": "", **extra}
        train_centralized(RunConfig.from_flat(flat), tmp_path / name, show_progress=False)
        runs[name] = tmp_path / name
    result = compare(runs["plain"], runs["mask"], cold=5, key="augment")
    assert result["differs-in"] == {"augment": "mask"} and result["all"]["users"] == 120
    low, high = result["all"]["ndcg_gain_95ci"]
    assert low <= high
    assert compare(runs["plain"], runs["featured"], cold=5)["differs-in"] == {"item-features": "category"}
    with pytest.raises(SystemExit, match=r"differ in augment alone, not in \['augment', 'item-features'\]"):
        compare(runs["mask"], runs["featured"], cold=5, key="augment")
    both = compare(runs["mask"], runs["featured"], cold=5, key="item-features,augment")  # several keys at once
    assert both["differs-in"] == {"augment": "", "item-features": "category"}
    with pytest.raises(SystemExit, match="without item-features"):
        compare(runs["plain"], runs["mask"], cold=5)
    from simulations.benchmarks.quality.bench_item_features import main

    out = tmp_path / "pairs.json"
    main(["--pairs", f"{runs['plain']}:{runs['mask']}", "--differs-in", "augment", "--out", str(out)])
    assert json.loads(out.read_text())["pairs"][0]["all"] == result["all"]


# --- item features under differential privacy -------------------------------------------------------


def test_client_dp_sgd_trains_the_feature_table_and_accounts_as_without_it(catalogue):
    """Client DP-SGD (Opacus) with features: the table is one more clipped, noised weight, and the
    ledger records exactly what a featureless run records (features change no sampling or noise)."""
    flat = featured_flat(
        catalogue, **{"dp-mode": "client", "train-windows": "last", "noise-multiplier": 1.0, "dp-reference-samples": 32}
    )
    flat = {**flat, "local-epochs": 1, "local-lr": 0.01, "delta": 1e-3}
    config = RunConfig.from_flat(flat)
    plain_config = RunConfig.from_flat({**flat, "item-features": ""})
    data = load_sequence_data(config.data)
    ledgers, results = {}, {}
    for name, run_config in (("featured", config), ("plain", plain_config)):
        start = model_for(
            run_config.model, run_config.data, data.num_items, seed=run_config.train.seed, item_ids=data.item_ids
        ).arrays()
        ledgers[name] = PrivacyLedger("rdp")
        results[name] = local_train(
            local_training(run_config, data.num_items), data, start, server_round=1, client=0, ledger=ledgers[name]
        )
        assert results[name].arrays is not None
        assert all(torch.isfinite(v).all() for v in results[name].arrays.values())
    featured_start = model_for(
        config.model, config.data, data.num_items, seed=config.train.seed, item_ids=data.item_ids
    ).arrays()
    moved = results["featured"].arrays["feature_emb.weight"] - featured_start["feature_emb.weight"]
    # in the update (its row 0, "no feature", gets noise too but is masked out of every input)
    assert moved[1:].abs().max() > 1e-4
    assert ledgers["featured"].history == ledgers["plain"].history
    assert results["featured"].metrics["epsilon"] == results["plain"].metrics["epsilon"] > 0


def test_user_level_clipping_bounds_each_users_whole_update_feature_table_included():
    """User-level DP on the cohort engine clips each user's update over all weights: with features
    the feature rows are inside the clipped norm, exactly as each device would compute alone."""
    model = featured_model("sasrec").train()
    torch.manual_seed(1)
    inputs, targets = torch.randint(0, 13, (5, 1, 6)), torch.randint(1, 13, (5, 1, 6))
    recipe = LocalRecipe(1, "sgd", 0.5, clip=0.05)
    result = cohort_update(model, inputs, targets, recipe, keep_users=True)
    assert result.clipped == 5
    per_user = torch.sqrt(sum((u.flatten(1) ** 2).sum(1) for u in result.per_user.values()))
    assert (per_user <= recipe.clip * (1 + 1e-5)).all()
    assert result.update_sum["feature_emb.weight"][1:].abs().max() > 0
    expected = _one_by_one(model, inputs, targets, recipe)  # each user in its own model, clipped alone
    for key in expected:
        torch.testing.assert_close(result.update_sum[key], expected[key], atol=1e-6, rtol=1e-4)
