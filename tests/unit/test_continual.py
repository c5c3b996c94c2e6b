"""Continual learning: a run that starts from a previous run's model (`init-model`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import RunConfig
from common.errors import ConfigError, DataError
from common.model.checkpoint import save_model
from common.model.warm_start import ITEM_TABLE, warm_start
from common.training.step import model_for
from tests.conftest import COHORT

pytestmark = pytest.mark.usefixtures("cache_env")

OLD_IDS = np.concatenate([[-1], 100 + 3 * np.arange(30)])  # original IDs 100, 103, ..., 187


def _trained_model(tmp_path, config: RunConfig, item_ids=OLD_IDS):
    """A saved model whose weights differ from any fresh initialisation."""
    model = model_for(config.model, config.data, len(item_ids) - 1, seed=123)
    with torch.no_grad():
        for value in model.arrays().values():
            value.add_(torch.randn_like(value))
        model.item_emb.weight[0].zero_()
    path = tmp_path / "old" / "model.pt"
    save_model(path, model, item_ids, run_config=config.to_flat())
    return model, path


def test_grown_catalogue_keeps_shared_rows_and_gives_new_items_fresh_rows(tmp_path):
    config = RunConfig.from_flat(COHORT)
    old, path = _trained_model(tmp_path, config)
    # The new catalogue drops the old items 100 and 103, keeps the rest, adds 5 new IDs in between.
    new_ids = np.concatenate([[-1], np.sort(np.concatenate([OLD_IDS[3:], [101, 150, 152, 500, 501]]))])
    start = warm_start(config.model, config.data, config.train.seed, new_ids, path)
    fresh = model_for(config.model, config.data, len(new_ids) - 1, seed=config.train.seed).arrays()
    old_rows = {int(i): old.item_emb.weight[row] for row, i in enumerate(OLD_IDS) if row > 0}
    table = start.arrays[ITEM_TABLE]
    assert table.shape == (len(new_ids), config.model.emb_dim)
    assert torch.equal(table[0], torch.zeros(config.model.emb_dim))  # padding stays "no item"
    for row, item in enumerate(new_ids[1:], start=1):
        want = old_rows[int(item)] if int(item) in old_rows else fresh[ITEM_TABLE][row]
        assert torch.equal(table[row], want), item
    for key, value in old.arrays().items():
        if key != ITEM_TABLE:
            assert torch.equal(start.arrays[key], value), key
    assert start.report["items_kept"] == 28
    assert start.report["items_new"] == 5 and start.report["items_dropped"] == 2
    # The warm-started arrays load into this run's model as they are.
    model_for(config.model, config.data, len(new_ids) - 1, seed=config.train.seed).load_arrays(start.arrays)


def test_same_catalogue_reproduces_the_model_exactly(tmp_path):
    config = RunConfig.from_flat(COHORT)
    old, path = _trained_model(tmp_path, config)
    start = warm_start(config.model, config.data, config.train.seed, OLD_IDS, path)
    for key, value in old.arrays().items():
        assert torch.equal(start.arrays[key], value), key


@pytest.mark.parametrize(
    ("change", "named"), [({"emb-dim": 32}, "emb_dim"), ({"model": "gru"}, "arch"), ({"max-len": 30}, "max_len")]
)
def test_a_model_of_another_shape_is_refused_naming_the_field(tmp_path, change, named):
    config = RunConfig.from_flat(COHORT)
    _, path = _trained_model(tmp_path, config)
    with pytest.raises(ConfigError, match=f"init-model.*{named}"):
        changed = config.replace(**change)
        warm_start(changed.model, changed.data, changed.train.seed, OLD_IDS, path)


def test_missing_foreign_or_unrelated_model_files_are_clear_errors(tmp_path):
    config = RunConfig.from_flat(COHORT)
    with pytest.raises(ConfigError, match="init-model.*not a file"):
        warm_start(config.model, config.data, config.train.seed, OLD_IDS, tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a fedseqrec model.pt"):
        warm_start(config.model, config.data, config.train.seed, OLD_IDS, tmp_path / "junk.pt")
    _, path = _trained_model(tmp_path, config)
    with pytest.raises(DataError, match="shares no item"):
        warm_start(config.model, config.data, config.train.seed, np.concatenate([[-1], 5000 + np.arange(10)]), path)


def test_federate_resolves_init_model_and_checks_it_exists(tmp_path, monkeypatch):
    from fedseqrec.launch.federate import init_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"x")
    assert init_model_path("model.pt") == tmp_path / "model.pt"
    with pytest.raises(ConfigError, match="init-model"):
        init_model_path("missing/model.pt")
