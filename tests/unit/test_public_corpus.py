"""The external public corpus: another service's users mapped onto this catalogue by title and year."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import RunConfig
from common.data.public_corpus import load_public_corpus
from common.errors import ConfigError, DataError
from common.evaluation.paired import paired_gain
from common.training.pretrain import pretrain
from common.training.step import model_for


def _corpus(folder):
    folder.mkdir()
    (folder / "u.item").write_text(
        "1|Toy Story (1995)|01-Jan-1995||url|0\n2|GoldenEye (1995)|01-Jan-1995||url|0\n3|Heat (1995)|x||url|0\n",
        encoding="latin-1",
    )
    # user 7 rated 2, 1, 3 (in time order); user 8 only a film the catalogue lacks and one mapped film
    (folder / "u.data").write_text("7\t1\t5\t200\n7\t2\t4\t100\n7\t3\t3\t300\n8\t3\t2\t50\n8\t1\t1\t60\n")
    return folder


def test_corpus_films_map_by_title_and_year_onto_model_indices(tmp_path):
    movies = tmp_path / "movies.dat"
    movies.write_text("10::Toy Story (1995)::Animation\n20::GoldenEye  (1995)::Action\n30::Heat (1996)::Crime\n")
    corpus = load_public_corpus(str(_corpus(tmp_path / "other")), movies, np.array([-1, 20, 10]))
    # Heat (1995) is not Heat (1996): dropped; user 8 keeps one film, too few to learn from
    assert [s.tolist() for s in corpus.sequences] == [[1, 2]]
    assert corpus.report["films_mapped"] == 2 and corpus.report["users"] == 1
    assert corpus.report["interactions_dropped"] == 2


def test_a_folder_without_the_corpus_files_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="u.data and u.item"):
        load_public_corpus(str(tmp_path), tmp_path / "movies.dat", np.array([-1, 1]))


def test_pretraining_needs_public_data_and_the_corpus_needs_pretraining():
    with pytest.raises(ConfigError, match="pretrain-epochs"):
        RunConfig.from_flat({"pretrain-epochs": 3})
    with pytest.raises(ConfigError, match="public-corpus"):
        RunConfig.from_flat({"public-corpus": "ml-100k"})
    RunConfig.from_flat({"pretrain-epochs": 3, "public-corpus": "ml-100k"})


def test_pretraining_lowers_the_loss_and_keeps_the_best_validated_epoch():
    config = RunConfig.from_flat({"model": "gru", "emb-dim": 16, "max-len": 8})
    model = model_for(config.model, config.data, 20, seed=config.train.seed)
    rng = np.random.default_rng(0)
    sequences = [np.arange(1, 21)[(np.arange(12) + rng.integers(20)) % 20] for _ in range(40)]  # 1, 2, 3, ...
    scores = iter([0.1, 0.3, 0.2, 0.2, 0.2])
    report = pretrain(
        model,
        sequences,
        epochs=5,
        lr=1e-2,
        batch_size=16,
        max_len=8,
        seed=0,
        validate=lambda m: next(scores),
        patience=2,
    )
    assert report["history"][-1]["loss"] < report["history"][0]["loss"]
    assert report["epoch_kept"] == 2 and report["epochs_run"] == 4  # stopped after 2 epochs without a better one


def test_paired_gain_is_the_mean_per_user_difference_with_an_interval_around_it():
    base = np.array([0, 20, 20, 5] * 50)
    new = np.array([0, 0, 20, 5] * 50)  # one user in four moves from miss to rank 0
    gain = paired_gain(base, new, 10)
    assert gain["mean"] == pytest.approx(0.25)
    assert gain["interval_95"][0] < 0.25 < gain["interval_95"][1] and gain["interval_95"][0] > 0.15
    with pytest.raises(ValueError):
        paired_gain(base, new[:-1], 10)
