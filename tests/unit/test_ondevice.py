"""On-device recommendation: ONNX export of each architecture, and a torch-free runner that agrees with PyTorch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from client.ondevice import OnDeviceRecommender, read_item_titles
from common.config import RunConfig
from common.data.load import load_sequence_data
from common.data.sequences import left_pad
from common.errors import ConfigError, DataError
from common.evaluation.ranking import model_scores
from common.model.checkpoint import save_model
from common.model.export import METADATA_KEY, export_run
from common.model.models import ModelConfig, build_model
from fedseqrec.cli import main

ARCHS = ("sasrec", "gru", "lstm")
NUM_ITEMS, MAX_LEN = 40, 10
ITEM_IDS = np.concatenate([[-1], 1000 + 7 * np.arange(NUM_ITEMS)])  # non-contiguous, so mapping bugs show
COUNTS = np.concatenate([[0], np.arange(NUM_ITEMS) % 13])  # popularity with ties


def random_model(arch: str, positions: str = "recency", block: str = "pre-ln"):
    """Larger random weights than the init: logits spread out, so top-K lists are not decided by noise."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            arch=arch,
            num_items=NUM_ITEMS,
            max_len=MAX_LEN,
            emb_dim=16,
            hidden_dim=16,
            num_layers=2,
            num_heads=2 if arch == "sasrec" else 1,
            positions=positions,
            block=block,
        )
    )
    with torch.no_grad():
        for value in model.arrays().values():
            value.normal_(0.0, 0.5)
        model.item_emb.weight[0].zero_()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch -> (PyTorch model, export dir), each exported once with int8."""
    out = {}
    for arch in (*ARCHS, "sasrec-original"):
        root = tmp_path_factory.mktemp(arch)
        original = {"model": "sasrec", "positions": "absolute", "sasrec-block": "original"}  # SASRec+
        model = random_model("sasrec", "absolute", "original") if arch == "sasrec-original" else random_model(arch)
        run_config = original if arch == "sasrec-original" else {"model": arch}
        save_model(root / "run" / "model.pt", model, ITEM_IDS, run_config=run_config, best_epoch=3)
        export_run(root / "run", root / "export", int8=True, item_counts=COUNTS)
        out[arch] = (model, root / "export")
    return out


def torch_top_k(model, history_ids: list[int], k: int) -> list[int]:
    """The reference: evaluation's model_scores, every seen item masked."""
    index = {int(item): i for i, item in enumerate(ITEM_IDS) if i > 0}
    seen = np.array([index[i] for i in history_ids if i in index], dtype=np.int64)
    with torch.no_grad():
        scores = model_scores(model)(torch.as_tensor(left_pad([seen], MAX_LEN)))[0]  # (N,)
    scores[seen - 1] = float("-inf")
    return [int(ITEM_IDS[i + 1]) for i in scores.topk(k).indices]


def histories(count: int = 6, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = [1, 3, MAX_LEN - 1, MAX_LEN, MAX_LEN + 7, 2 * MAX_LEN + 5][:count]
    return [[int(i) for i in rng.choice(ITEM_IDS[1:], size=n, replace=False)] for n in lengths]


@pytest.mark.parametrize("arch", ARCHS)
def test_export_writes_model_mapping_and_metadata(exported, arch):
    _, out = exported[arch]
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["arch"], metadata["max_len"], metadata["num_items"]) == (arch, MAX_LEN, NUM_ITEMS)
    assert metadata["training_run"]["best_epoch"] == 3 and metadata["privacy"] is None
    assert metadata["export"]["max_abs_error_vs_torch"] < 1e-4
    items = json.loads((out / "items.json").read_text())
    assert items["item_ids"] == ITEM_IDS.tolist() and items["popularity"] == COUNTS.tolist()
    for name in ("model.onnx", "model.int8.onnx"):
        props = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        assert json.loads(props[METADATA_KEY]) == metadata  # the model file describes itself
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size


@pytest.mark.parametrize("arch", (*ARCHS, "sasrec-original"))
def test_runner_top_k_equals_pytorch(exported, arch):
    model, out = exported[arch]
    runner = OnDeviceRecommender.load(out / "model.onnx")
    for history in histories():
        got = runner.recommend(history, k=8)
        assert got.items == torch_top_k(model, history, 8), (arch, len(history))
        assert got.source == "model" and got.unknown == [] and not set(got.items) & set(history)
        assert got.scores == sorted(got.scores, reverse=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_model_mostly_agrees(exported, arch):
    model, out = exported[arch]
    runner = OnDeviceRecommender.load(out / "model.int8.onnx")
    overlaps = [len(set(runner.recommend(h, k=10).items) & set(torch_top_k(model, h, 10))) / 10 for h in histories()]
    assert np.mean(overlaps) >= 0.7, overlaps


def test_runner_imports_no_torch():
    code = (
        "import client.ondevice, sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_unknown_items_are_ignored_and_counted(exported):
    runner = OnDeviceRecommender.load(exported["sasrec"][1] / "model.onnx")
    history = histories()[2]
    noisy = [5, *history[:4], 6, *history[4:], 5]
    got = runner.recommend(noisy, k=5)
    assert got.unknown == [5, 6, 5]
    assert got.items == runner.recommend(history, k=5).items


def test_empty_or_unknown_only_history_gets_popularity(exported):
    runner = OnDeviceRecommender.load(exported["gru"][1] / "model.onnx")
    by_count = sorted(range(1, NUM_ITEMS + 1), key=lambda i: (-COUNTS[i], i))  # ties: lower index first
    for history, unknown in (([], []), ([3, 4], [3, 4])):
        got = runner.recommend(history, k=5)
        assert got.source == "popularity" and got.unknown == unknown
        assert got.items == [int(ITEM_IDS[i]) for i in by_count[:5]]


def test_without_popularity_an_empty_history_uses_the_model(tmp_path):
    model = random_model("sasrec")
    save_model(tmp_path / "run" / "model.pt", model, ITEM_IDS)  # no run_config: no training data to count
    export_run(tmp_path / "run", tmp_path / "export")
    assert json.loads((tmp_path / "export" / "metadata.json").read_text())["popularity"].startswith("none")
    got = OnDeviceRecommender.load(tmp_path / "export" / "model.onnx").recommend([], k=4)
    assert got.source == "model-empty-history" and got.items == torch_top_k(model, [], 4)


def test_popularity_comes_from_the_runs_training_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSEQREC_CACHE", str(tmp_path / "cache"))
    run_config = {"data": "synthetic", "synthetic-users": 40, "synthetic-items": 20, "max-len": 6}
    data = load_sequence_data(RunConfig.from_flat(run_config).data)
    model = build_model(ModelConfig(arch="gru", num_items=data.num_items, max_len=6, emb_dim=8, hidden_dim=8))
    save_model(tmp_path / "run" / "model.pt", model, data.item_ids, run_config=run_config)
    export_run(tmp_path / "run", tmp_path / "export")
    items = json.loads((tmp_path / "export" / "items.json").read_text())
    assert items["popularity"] == data.item_counts().tolist()  # training parts only: no test item leaks
    got = OnDeviceRecommender.load(tmp_path / "export" / "model.onnx").recommend([], k=3)
    assert got.source == "popularity" and got.scores == sorted(data.item_counts()[1:].tolist(), reverse=True)[:3]


def test_dp_run_exports_privacy_summary_and_no_raw_counts(tmp_path):
    save_model(tmp_path / "run" / "model.pt", random_model("lstm"), ITEM_IDS, run_config={"dp-mode": "client"})
    (tmp_path / "run" / "privacy.json").write_text(json.dumps({"epsilon": 3.5, "delta": 1e-4, "dp_mode": "client"}))
    export_run(tmp_path / "run", tmp_path / "export")
    metadata = json.loads((tmp_path / "export" / "metadata.json").read_text())
    assert metadata["privacy"]["epsilon"] == 3.5 and metadata["privacy"]["delta"] == 1e-4
    assert metadata["popularity"].startswith("none: DP run")
    assert json.loads((tmp_path / "export" / "items.json").read_text())["popularity"] is None


def test_long_history_uses_the_latest_items_and_excludes_all_seen(exported):
    runner = OnDeviceRecommender.load(exported["lstm"][1] / "model.onnx")
    history = histories()[-1]  # 2 * MAX_LEN + 5 items
    got = runner.recommend(history, k=NUM_ITEMS)
    assert got.truncated == len(history) - MAX_LEN
    assert len(got.items) == NUM_ITEMS - len(history)  # k beyond the unseen items: all unseen ones
    assert not set(got.items) & set(history)
    recent = runner.recommend(history[-MAX_LEN:], k=NUM_ITEMS)  # same model input, fewer exclusions
    assert [i for i in recent.items if i not in history] == got.items


def test_bad_arguments(exported, tmp_path):
    runner = OnDeviceRecommender.load(exported["sasrec"][1] / "model.onnx")
    with pytest.raises(ConfigError, match="k must be"):
        runner.recommend([1000], k=0)
    with pytest.raises(DataError, match="integer item IDs"):
        runner.recommend(["abc"], k=3)
    with pytest.raises(DataError, match="no model file"):
        OnDeviceRecommender.load(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_text("not a model")
    with pytest.raises(DataError, match="not a loadable ONNX model"):
        OnDeviceRecommender.load(tmp_path / "garbage.onnx")


def test_item_titles_from_movielens_formats(tmp_path):
    movies = tmp_path / "movies.dat"
    movies.write_bytes("1000::Am\xe9lie (2001)::Comedy\n1007::Heat (1995)::Action\n".encode("latin-1"))
    uitem = tmp_path / "u.item"
    uitem.write_bytes("1000|Am\xe9lie (2001)|01-Jan-2001||http://x|0|1\n".encode("latin-1"))
    assert read_item_titles(movies) == {1000: "Am\xe9lie (2001)", 1007: "Heat (1995)"}
    assert read_item_titles(uitem) == {1000: "Am\xe9lie (2001)"}
    (tmp_path / "bad.dat").write_text("no ids here\n")
    with pytest.raises(DataError, match="bad.dat:1"):
        read_item_titles(tmp_path / "bad.dat")


def test_cli_export_and_recommend(exported, tmp_path, capsys):
    model, _ = exported["sasrec"]
    run = tmp_path / "run"
    save_model(run / "model.pt", model, ITEM_IDS)
    assert main(["export", str(run), "--out", str(tmp_path / "export"), "--int8"]) == 0
    assert (tmp_path / "export" / "model.int8.onnx").exists()
    history = histories()[3]
    rows = [f"{user},{item},{t}" for user in (7, 8) for t, item in enumerate(history)]
    csv = tmp_path / "history.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "\n".join(reversed(rows)) + "\n")  # out of time order
    movies = tmp_path / "movies.dat"
    movies.write_text("".join(f"{i}::Movie {i} (2000)::Drama\n" for i in ITEM_IDS[1:]), encoding="latin-1")
    capsys.readouterr()
    assert (
        main(
            [
                "recommend",
                "--model",
                str(tmp_path / "export" / "model.onnx"),
                "--history",
                str(csv),
                "--user",
                "8",
                "-k",
                "5",
                "--items-file",
                str(movies),
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    want = torch_top_k(model, history, 5)
    assert [line.split("\t") for line in lines] == [
        [str(r), str(i), f"Movie {i} (2000)"] for r, i in enumerate(want, start=1)
    ]


def test_cli_export_of_a_folder_without_model_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "export")]) == 2
    assert "no model file" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["several users", "missing model", "unknown user"])
def test_cli_bad_input_exits_2(exported, tmp_path, capsys, problem):
    csv = tmp_path / "history.csv"
    csv.write_text("user_id,item_id,timestamp\n1,1000,1\n2,1007,2\n")
    model = exported["gru"][1] / "model.onnx" if problem != "missing model" else tmp_path / "nope.onnx"
    argv = ["recommend", "--model", str(model), "--history", str(csv)]
    argv += ["--user", "9"] if problem == "unknown user" else ["--user", "1"] if problem == "missing model" else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("fedseqrec: error: ")


def test_cli_recommend_notes_and_items_each_on_their_own_line(exported, tmp_path):
    """stderr's note and stdout's items, merged as on a terminal: the note is a line of its own."""
    csv = tmp_path / "history.csv"
    csv.write_text("user_id,item_id,timestamp\n1,1000,1\n1,1007,2\n")
    model = exported["gru"][1] / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "fedseqrec.cli", "recommend", "--model", str(model), "--history", str(csv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    lines = done.stdout.splitlines()
    assert done.stdout.endswith("\n")
    assert lines.count("source: model") == 1
    items = [line for line in lines if line != "source: model"]
    assert [line.split("\t")[0] for line in items] == [str(rank) for rank in range(1, 11)]


# --- re-ranking on the device ------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8])
def test_device_mmr_picks_what_the_servers_mmr_picks(lam):
    from client.ondevice import mmr_positions, relevance
    from common.evaluation.reranking import mmr

    rng = np.random.default_rng(int(lam * 10))
    candidates, k = 30, 10
    vectors = rng.normal(size=(candidates + 1, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = (vectors @ vectors.T).astype(np.float32)  # (C + 1, C + 1), item 0 unused
    items = rng.permutation(np.arange(1, candidates + 1))  # candidate indices, best first
    scores = np.sort(rng.normal(size=candidates).astype(np.float32))[::-1].copy()
    as_torch = torch.from_numpy
    server = mmr(as_torch(items)[None], as_torch(scores)[None], k, lam=lam, similarity=as_torch(similarity))[0].numpy()
    device = items[mmr_positions(relevance(scores), similarity[items][:, items].astype(np.float64), k, lam)]
    np.testing.assert_array_equal(device, server)


def test_exported_item_vectors_are_the_scorers_rows(exported):
    model, out = exported["sasrec"]
    vectors = np.load(out / "item_vectors.npy")
    assert vectors.shape == (NUM_ITEMS + 1, 16) and vectors.dtype == np.float16 and not vectors[0].any()
    np.testing.assert_allclose(vectors[1:], model.item_emb.weight[1:].detach().numpy(), rtol=2e-3, atol=2e-3)


def _mean_pairwise_cosine(runner, ids: list[int]) -> float:
    indices, _ = runner.to_indices(ids)
    unit = runner.unit_vectors()[indices]
    sims = unit @ unit.T
    return float((sims.sum() - np.trace(sims)) / (len(ids) * (len(ids) - 1)))


@pytest.mark.parametrize("arch", ARCHS)
def test_device_reranking_trades_relevance_for_diversity_or_the_long_tail(exported, arch):
    runner = OnDeviceRecommender.load(exported[arch][1])
    tail_ids = set(ITEM_IDS[np.flatnonzero(runner.long_tail())].tolist())
    more_diverse = more_tail = 0
    for history in histories():
        plain = runner.recommend(history, k=5)
        pool = set(runner.recommend(history, k=20).items)
        assert runner.recommend(history, k=5, rerank="mmr", lam=0.0, candidates=20).items == plain.items
        diverse = runner.recommend(history, k=5, rerank="mmr", lam=0.8, candidates=20)
        tail = runner.recommend(history, k=5, rerank="long-tail", lam=0.8, candidates=20)
        for result in (diverse, tail):
            assert set(result.items) <= pool and not set(result.items) & set(history) and len(result.items) == 5
        assert _mean_pairwise_cosine(runner, diverse.items) <= _mean_pairwise_cosine(runner, plain.items) + 1e-9
        assert len(tail_ids & set(tail.items)) >= len(tail_ids & set(plain.items))
        more_diverse += _mean_pairwise_cosine(runner, diverse.items) < _mean_pairwise_cosine(runner, plain.items)
        more_tail += len(tail_ids & set(tail.items)) > len(tail_ids & set(plain.items))
    assert more_diverse >= 3 and more_tail >= 3  # the trade is real on most histories, not only allowed


def test_device_long_tail_holds_a_fifth_of_the_popularity(exported):
    runner = OnDeviceRecommender.load(exported["gru"][1])
    tail = runner.long_tail().astype(bool)
    total = COUNTS.sum()
    assert COUNTS[tail].sum() <= 0.2 * total and not tail[0]
    next_up = np.min(COUNTS[1:][~tail[1:]])  # the least popular item left out would push it past 20%
    assert COUNTS[tail].sum() + next_up > 0.2 * total


def test_cli_recommend_reranks_and_an_old_export_says_to_reexport(exported, tmp_path, capsys):
    import shutil

    csv = tmp_path / "history.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "".join(f"1,{i},{t}\n" for t, i in enumerate(histories()[0])))
    argv = ["recommend", "--model", str(exported["sasrec"][1]), "--history", str(csv), "-k", "4"]
    assert main(argv + ["--rerank", "mmr", "--rerank-lambda", "0.5", "--rerank-candidates", "20"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 4 and "re-ranked: mmr, lambda 0.5, 20 candidates" in err
    old = tmp_path / "old-export"
    shutil.copytree(exported["sasrec"][1], old)
    (old / "item_vectors.npy").unlink()  # an export from before item vectors were written
    assert main(["recommend", "--model", str(old), "--history", str(csv), "--rerank", "mmr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedseqrec: error: ") and "export the run again" in err and "Traceback" not in err
    assert main(argv + ["--rerank", "mmr", "--rerank-candidates", "2"]) == 2  # fewer candidates than k
    assert "fewer than k" in capsys.readouterr().err
