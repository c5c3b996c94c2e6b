"""Rank-time ensembles: fusion math against numpy, one member = that member, the ScoreFn in
evaluate(), the `fedseqrec ensemble` command and its ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from client.ondevice import OnDeviceRecommender
from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.sequences import left_pad
from common.evaluation.ranking import evaluate, model_scores, rank_targets
from common.model.checkpoint import save_model
from common.model.ensemble import EnsembleScores, ensemble_scores, fuse
from common.model.models import ModelConfig, build_model
from fedseqrec.cli import main
from fedseqrec.ensemble import export_ensemble, run_ensemble

pytestmark = pytest.mark.usefixtures("cache_env")
DATA = {"data": "synthetic", "synthetic-users": 80, "synthetic-items": 30, "max-len": 8}


def random_model(arch: str, num_items: int, max_len: int, seed: int):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch, num_items, max_len, emb_dim=8, hidden_dim=8, num_layers=1, dropout=0.0))
    with torch.no_grad():
        for value in model.arrays().values():
            value.normal_(0.0, 0.5)
        model.item_emb.weight[0].zero_()
    return model.eval()


def numpy_fusion(members: list[np.ndarray], weights: list[float], method: str) -> np.ndarray:
    total = 0.0
    for scores, weight in zip(members, weights):
        if method == "zscore":
            part = (scores - scores.mean(1, keepdims=True)) / scores.std(1, keepdims=True)
        else:
            rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1) + 1
            part = 1.0 / (60.0 + rank)
        total = total + weight * part
    return total


@pytest.mark.parametrize("method", ["zscore", "rrf"])
def test_fusion_matches_a_numpy_oracle(method):
    rng = np.random.default_rng(0)
    members = [rng.normal(size=(5, 40)) * scale + shift for scale, shift in ((1, 0), (10, 3), (0.1, -2))]
    weights = [0.5, 0.3, 0.2]
    got = fuse([torch.as_tensor(m) for m in members], weights, method).numpy()
    np.testing.assert_allclose(got, numpy_fusion(members, weights, method), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["zscore", "rrf"])
@pytest.mark.parametrize("arch", ["sasrec", "gru"])
def test_ensemble_of_one_ranks_like_that_model(method, arch):
    model = random_model(arch, 30, 8, seed=1)
    rng = np.random.default_rng(2)
    histories = [rng.integers(1, 31, size=n) for n in (1, 4, 8, 13)]
    targets = np.array([h[-1] for h in histories])
    single = rank_targets(model_scores(model), histories, targets, num_items=30)
    fused = rank_targets(ensemble_scores([model], [1.0], method), histories, targets, num_items=30)
    np.testing.assert_array_equal(fused[0], single[0])
    np.testing.assert_array_equal(fused[1], single[1])


def test_members_read_their_own_context_and_zero_weight_members_do_not_count(cache):
    data = load_sequence_data(RunConfig.from_flat(DATA).data)
    short = random_model("sasrec", data.num_items, 4, seed=3)
    long = random_model("lstm", data.num_items, 12, seed=4)
    score = ensemble_scores([short, long], [1.0, 0.0], "zscore")
    assert score.max_len == 12
    fused = evaluate(score, data, "validation")
    alone = evaluate(model_scores(short), data, "validation")  # fed its own last 4 items
    for key in ("ndcg@10", "hr@10", "mrr@10"):
        assert fused[key] == pytest.approx(alone[key], abs=1e-12)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
    """Three saved runs (random weights, one catalogue) as `fedseqrec train` would leave them."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEDSEQREC_CACHE", str(cache))
        data = load_sequence_data(RunConfig.from_flat(DATA).data)
    out = []
    for seed, (arch, max_len) in enumerate((("sasrec", 8), ("gru", 8), ("lstm", 6))):
        model = random_model(arch, data.num_items, max_len, seed=10 + seed)
        flat = RunConfig.from_flat({**DATA, "model": arch, "max-len": max_len}).to_flat()
        save_model(root / arch / "model.pt", model, data.item_ids, run_config=flat, best_epoch=1)
        out.append(root / arch)
    return out


def test_command_chooses_on_validation_and_reports_test_once(runs, tmp_path, capsys):
    assert main(["ensemble", *map(str, runs), "--out", str(tmp_path / "ens")]) == 0
    report = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert set(report["candidates"]) == {"zscore/equal", "zscore/validation", "rrf/equal", "rrf/validation"}
    singles = [m["validation"]["ndcg@10"] for m in report["members"]]
    best = max([c["validation"]["ndcg@10"] for c in report["candidates"].values()])
    assert report["ensemble_wins_on_validation"] == (best > max(singles))
    assert (report["test"]["chosen"] is not None) == report["ensemble_wins_on_validation"]
    weights = report["candidates"]["zscore/validation"]["weights"]
    assert np.allclose(weights, np.array(singles) / sum(singles))
    assert json.loads(capsys.readouterr().out)["chosen"] == report["chosen"]


@pytest.mark.parametrize("method", ["zscore", "rrf"])
def test_exported_ensemble_recommends_like_the_torch_ensemble(runs, tmp_path, method):
    from common.model.checkpoint import load_model

    models = [load_model(r / "model.pt")[0] for r in runs]
    item_ids = load_model(runs[0] / "model.pt")[1]
    pick = {"method": method, "weighting": "equal", "weights": [1 / 3] * 3}
    report = {"members": [{"run_dir": str(r)} for r in runs]}
    written = export_ensemble(models, pick, item_ids, tmp_path / "export", report, wins=True)
    assert written["written"] and written["max_abs_error_vs_torch"] < 1e-3
    runner = OnDeviceRecommender.load(tmp_path / "export" / "model.onnx")
    reference = EnsembleScores(models, pick["weights"], method).eval()
    rng = np.random.default_rng(5)
    for length in (2, 6, 11):
        history = rng.choice(np.arange(1, len(item_ids)), size=length, replace=False)
        with torch.no_grad():
            scores = reference(torch.as_tensor(left_pad([history], 8)))[0]
        scores[history - 1] = float("-inf")
        got = runner.recommend([int(item_ids[i]) for i in history], k=5).items
        assert got == [int(item_ids[i + 1]) for i in scores.topk(5).indices]


def test_members_of_different_catalogues_are_refused(runs, tmp_path, capsys):
    other = tmp_path / "other"
    data = load_sequence_data(RunConfig.from_flat(DATA).data)
    flat = RunConfig.from_flat(DATA).to_flat()
    save_model(other / "model.pt", random_model("gru", data.num_items, 8, 0), data.item_ids + 1, run_config=flat)
    assert main(["ensemble", str(runs[0]), str(other), "--out", str(tmp_path / "x")]) == 2
    assert "item catalogue differs" in capsys.readouterr().err
    assert main(["ensemble", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_run_ensemble_without_a_winner_does_not_export(runs, tmp_path):
    report = run_ensemble(runs[:1], tmp_path / "one", export=True)
    assert report["ensemble_wins_on_validation"] is False  # one member: fusion only re-scales its scores
    assert report["export"]["written"] is False and not (tmp_path / "one" / "export").exists()
