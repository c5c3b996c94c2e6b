"""End-to-end centralized training on synthetic data, reproducibility, and config validation."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.synthetic import synthetic_interactions
from common.errors import ConfigError
from common.evaluation.ranking import evaluate, model_scores
from common.model.checkpoint import load_model
from fedseqrec.centralized import train_centralized

TINY = {
    "model": "sasrec",
    "max-len": 10,
    "train-windows": "all",
    "emb-dim": 16,
    "num-layers": 1,
    "dropout": 0.0,
    "batch-size": 32,
    "lr": 1e-2,
    "seed": 3,
    "eval-batch-size": 64,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small SASRec trained on a synthetic CSV (the data have order a model can learn)."""
    base = tmp_path_factory.mktemp("centralized")
    csv = base / "interactions.csv"
    synthetic_interactions(120, 30, mean_length=15, seed=0).to_csv(csv, index=False)
    config = RunConfig.from_flat({**TINY, "data": str(csv), "epochs": 5, "patience": 5})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDSEQREC_CACHE", str(base / "cache"))
        metrics = train_centralized(config, base / "run", show_progress=False)
        data = load_sequence_data(config.data)
    return config, metrics, data, base / "run"


def test_centralized_beats_popularity(trained):
    _, metrics, _, _ = trained
    for split in ("validation", "test"):
        model_ndcg = metrics[split]["ndcg@10"]
        popularity_ndcg = metrics["popularity_baseline"][split]["ndcg@10"]
        assert 0.0 <= popularity_ndcg <= 1.0
        assert model_ndcg > popularity_ndcg + 0.05, (split, model_ndcg, popularity_ndcg)


def test_centralized_writes_its_results(trained):
    config, metrics, data, out = trained
    for name in (
        "metrics.json",
        "model.pt",
        "metrics.jsonl",
        "learning_curve.png",
        "config.json",
        "preprocessing.json",
    ):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "config.json").read_text()) == config.to_flat()
    assert metrics["num_users"] == data.num_users and metrics["num_items"] == data.num_items

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, metrics["epochs_run"] + 1))
    assert all(np.isfinite(r["loss"]) and "ndcg@10" in r["validation"] for r in rows)
    best = max(rows, key=lambda r: r["validation"]["ndcg@10"])
    assert metrics["best_epoch"] == best["epoch"]  # the model kept is the best on validation
    assert metrics["validation"]["ndcg@10"] == pytest.approx(best["validation"]["ndcg@10"])
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_saved_model_reproduces_the_reported_metrics(trained):
    config, metrics, data, out = trained
    model, item_ids, metadata = load_model(out / "model.pt")
    assert not model.training
    np.testing.assert_array_equal(item_ids, data.item_ids)
    assert item_ids[0] == -1 and sorted(item_ids[1:]) == list(item_ids[1:])
    assert metadata["best_epoch"] == metrics["best_epoch"]
    assert metadata["run_config"] == config.to_flat()
    again = evaluate(model_scores(model), data, "test", top_k=10)
    assert again == pytest.approx(metrics["test"])


def test_same_seed_same_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "interactions.csv"
    synthetic_interactions(40, 20, mean_length=10, seed=1).to_csv(csv, index=False)
    config = RunConfig.from_flat({**TINY, "data": str(csv), "epochs": 2, "dropout": 0.3})
    first = train_centralized(config, tmp_path / "a", show_progress=False)
    second = train_centralized(config, tmp_path / "b", show_progress=False)
    for key in ("validation", "test", "popularity_baseline", "best_epoch"):
        assert first[key] == second[key], key
    other = train_centralized(config.replace(seed=4), tmp_path / "c", show_progress=False)
    assert other["validation"] != first["validation"]  # the seed matters (so equality above is not vacuous)


def test_synthetic_data_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    settings = RunConfig.from_flat({"data": "synthetic", "synthetic-users": 30, "synthetic-items": 15}).data
    data = load_sequence_data(settings)
    expected = synthetic_interactions(30, 15, seed=0)
    assert data.num_users == 30 and len(data.items) == len(expected)
    cached = load_sequence_data(settings)  # second load comes from the cache in FEDSEQREC_CACHE
    np.testing.assert_array_equal(cached.items, data.items)
    assert cached.report == data.report
    assert list((tmp_path / "cache" / "preprocessed").glob("*.npz"))


def test_synthetic_interactions_are_seeded_and_well_formed():
    a = synthetic_interactions(20, 12, mean_length=8, seed=5)
    b = synthetic_interactions(20, 12, mean_length=8, seed=5)
    assert a.equals(b)
    assert not a.equals(synthetic_interactions(20, 12, mean_length=8, seed=6))
    assert list(a.columns) == ["user_id", "item_id", "timestamp"]
    assert a["item_id"].between(1, 12).all() and sorted(a["user_id"].unique()) == list(range(1, 21))
    assert a.groupby("user_id").size().min() >= 5
    for _, group in a.groupby("user_id"):  # positions 0, 1, 2, ... per user
        assert group["timestamp"].tolist() == list(range(len(group)))


# --- RunConfig --------------------------------------------------------------------------------------


def test_from_flat_defaults_and_coercion():
    config = RunConfig.from_flat(
        {"epochs": "7", "lr": "0.5", "mask-seen": "False", "batch-size": 16.0, "model": "gru", "dropout": 0}
    )
    assert config.train.epochs == 7 and isinstance(config.train.epochs, int)
    assert config.train.lr == 0.5
    assert config.train.mask_seen is False
    assert config.train.batch_size == 16 and isinstance(config.train.batch_size, int)
    assert config.model.model == "gru" and config.model.dropout == 0.0
    assert config.data == RunConfig().data  # untouched groups keep their defaults
    assert RunConfig.from_flat(config.to_flat()) == config


def test_from_flat_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'; did you mean 'epochs'\?"):
        RunConfig.from_flat({"epoch": 3})
    with pytest.raises(ConfigError, match="unknown key 'min_item_count'; did you mean 'min-item-count'"):
        RunConfig.from_flat({"min_item_count": 3})
    with pytest.raises(ConfigError, match="unknown key 'zzzz'; run `fedseqrec config`"):
        RunConfig.from_flat({"zzzz": 1})


@pytest.mark.parametrize(
    "key,value,kind",
    [
        ("epochs", "ten", "int"),
        ("epochs", 2.5, "int"),
        ("epochs", True, "int"),
        ("lr", True, "float"),
        ("lr", "fast", "float"),
        ("mask-seen", "yes", "bool"),
        ("mask-seen", 1, "bool"),
        ("data", 5, "str"),
    ],
)
def test_from_flat_wrong_types(key, value, kind):
    with pytest.raises(ConfigError, match=f"key '{key}' must be {kind}, got {value!r}".replace("(", r"\(")):
        RunConfig.from_flat({key: value}, where="conf/x.toml")
    with pytest.raises(ConfigError, match="^conf/x.toml: "):
        RunConfig.from_flat({key: value}, where="conf/x.toml")


@pytest.mark.parametrize(
    "flat,key",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": "nan"}, "lr"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"min-user-count": 2}, "min-user-count"),
        ({"max-len": 1}, "max-len"),
        ({"emb-dim": 64, "num-heads": 3}, "num-heads"),
        ({"device": "tpu"}, "device"),
        ({"holdout-fraction": 1.0}, "holdout-fraction"),
        ({"synthetic-items": 9}, "synthetic-items"),
    ],
)
def test_from_flat_out_of_range(flat, key):
    with pytest.raises(ConfigError, match=f"config key '{key}': must"):
        RunConfig.from_flat(flat)


@pytest.mark.parametrize(
    "key,value",
    [("model", "foo"), ("loss", "bpr"), ("strategy", "fedsgd"), ("train-windows", "first"), ("dp-mode", "local")],
)
def test_from_flat_bad_choice(key, value):
    with pytest.raises(ConfigError, match=f"key '{key}' must be one of .*; got '{value}'"):
        RunConfig.from_flat({key: value})


def test_replace_is_validated():
    config = RunConfig()
    assert config.replace(epochs=3).train.epochs == 3
    assert config.train.epochs == RunConfig().train.epochs  # frozen: the original is unchanged
    with pytest.raises(ConfigError, match="epochs"):
        config.replace(epochs=-1)


def test_from_toml(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('model = "lstm"\nepochs = 4\n')
    config = RunConfig.from_toml(path, overrides={"epochs": 9})
    assert (config.model.model, config.train.epochs) == ("lstm", 9)
    with pytest.raises(ConfigError, match="not found"):
        RunConfig.from_toml(tmp_path / "missing.toml")
    path.write_text("epochs = = 4\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        RunConfig.from_toml(path)
    path.write_text("epohcs = 4\n")
    with pytest.raises(ConfigError, match=f"^{path}: unknown key 'epohcs'; did you mean 'epochs'"):
        RunConfig.from_toml(path)


ALLOCATION_PROBE = """
import psutil, torch
from common.training.allocator import release_freed_memory, retain_freed_memory
applied = retain_freed_memory()
x = torch.ones(16 << 20)  # 64 MiB, above glibc's default mmap threshold
before = psutil.Process().memory_info().rss
del x
after_free = psutil.Process().memory_info().rss
release_freed_memory()
print(applied, (before - after_free) / 2**20, (before - psutil.Process().memory_info().rss) / 2**20)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc malloc tuning"
)
@pytest.mark.parametrize("setting, retained", [("1", True), ("0", False)])
def test_freed_tensor_memory_is_kept_for_the_next_step_and_released_after_the_pass(setting, retained):
    env = {**os.environ, "FEDSEQREC_RETAIN_MEMORY": setting}
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATION_PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    applied, dropped_on_free, dropped_on_release = out[0] == "True", float(out[1]), float(out[2])
    assert applied is retained
    assert (dropped_on_free < 8) if retained else (dropped_on_free > 56)
    assert dropped_on_release > 56  # after a pass over the data the memory goes back to the OS


NON_PRIVATE_PROBE = """
import psutil, torch
from common.training.allocator import retaining
from common.model.models import ModelConfig, build_model
from common.training.step import train_epoch
model = build_model(ModelConfig("gru", num_items=20, max_len=5, emb_dim=8, hidden_dim=8, num_layers=1))
batch = (torch.randint(1, 21, (4, 5)), torch.randint(1, 21, (4, 5)))
train_epoch(model, [batch], torch.optim.SGD(model.parameters(), lr=0.1))  # ends with release_freed_memory()
x = torch.ones(16 << 20)  # 64 MiB, above glibc's default mmap threshold
before = psutil.Process().memory_info().rss
del x
print(retaining(), (before - psutil.Process().memory_info().rss) / 2**20)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc malloc tuning"
)
def test_non_private_training_keeps_the_default_allocator():
    """Retention is for DP-SGD only (measured: non-private steps are slower with it)."""
    env = {**os.environ, "FEDSEQREC_RETAIN_MEMORY": "1"}
    out = subprocess.run(
        [sys.executable, "-c", NON_PRIVATE_PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False"
    assert float(out[1]) > 56  # freed at once: glibc's mmap threshold is untouched


def test_lr_factor_warms_up_then_holds_or_decays_by_cosine():
    from common.training.step import lr_factor

    assert [lr_factor(e, 10, "constant", 0) for e in range(1, 11)] == [1.0] * 10
    assert [lr_factor(e, 10, "constant", 4) for e in (1, 2, 4, 5, 10)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(e, 10, "cosine", 2) for e in range(1, 11)]
    assert cosine[:3] == [0.5, 1.0, 1.0]  # warm-up, then the cosine starts at 1
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:]))  # strictly falling after that
    assert cosine[-1] > 0 and cosine[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert lr_factor(6, 10, "cosine", 0) == pytest.approx(0.5)  # halfway: half the base rate


def test_centralized_training_follows_the_lr_schedule(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "interactions.csv"
    synthetic_interactions(40, 20, mean_length=10, seed=1).to_csv(csv, index=False)
    config = RunConfig.from_flat(
        {**TINY, "data": str(csv), "epochs": 4, "lr": 0.01, "lr-schedule": "cosine", "lr-warmup-epochs": 1}
    )
    train_centralized(config, tmp_path / "run", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["lr"] for row in rows] == pytest.approx([0.01, 0.01, 0.0075, 0.0025])
    with pytest.raises(ConfigError, match="lr-warmup-epochs"):
        RunConfig.from_flat({"epochs": 4, "lr-warmup-epochs": 4})
    with pytest.raises(ConfigError, match="lr-schedule"):
        RunConfig.from_flat({"lr-schedule": "step"})


def test_loss_reduction_token_is_refused_with_client_dp():
    RunConfig.from_flat({"loss-reduction": "token"})  # fine without client DP
    with pytest.raises(ConfigError, match="loss-reduction = sequence"):
        RunConfig.from_flat({"loss-reduction": "token", "dp-mode": "client"})


def test_runs_started_together_share_the_preprocessing_cache_without_clobbering(tmp_path):
    """Two processes preprocessing the same data at once (two benchmarks started together) both finish."""
    script = (
        "from common.config import DataSettings\n"
        "from common.data.load import load_sequence_data\n"
        "data = load_sequence_data(DataSettings(data='synthetic', synthetic_users=400))\n"
        "print(data.num_items)\n"
    )
    env = {**os.environ, "FEDSEQREC_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in results]
    assert len({out for out, _ in results}) == 1
    assert sorted(f.name for f in (tmp_path / "cache" / "preprocessed").iterdir() if "tmp" in f.name) == []


def test_absolute_positions_are_a_sasrec_setting():
    RunConfig.from_flat({"model": "sasrec", "positions": "absolute"})
    with pytest.raises(ConfigError, match="positions"):
        RunConfig.from_flat({"model": "gru", "positions": "absolute"})


def test_the_original_sasrec_block_is_a_sasrec_setting():
    RunConfig.from_flat({"model": "sasrec", "sasrec-block": "original"})
    with pytest.raises(ConfigError, match="sasrec-block"):
        RunConfig.from_flat({"model": "lstm", "sasrec-block": "original"})
