"""`recommend --explain`: occlusion attribution on the device, checked against PyTorch and against a
dependency planted in the data, and checked to write and send nothing."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch

from client.ondevice import OnDeviceRecommender
from common.data.sequences import left_pad
from common.errors import ConfigError, DataError
from common.model.checkpoint import save_model
from common.model.export import export_run
from common.model.models import ModelConfig, build_model
from common.training.step import train_epoch, window_dataset, window_loader
from fedseqrec.cli import main

NUM_ITEMS, MAX_LEN = 20, 8
ITEM_IDS = np.concatenate([[-1], 500 + 11 * np.arange(NUM_ITEMS)])  # original IDs 500, 511, ...
A, B = 1, 2  # model indices of the planted pair: A always comes before B, B never without A


def planted_sequences(users: int, seed: int) -> list[np.ndarray]:
    """Random items 3..N; in each history A somewhere and B two steps later, one random item between:
    so B's cause is never the latest item, and an explainer that favours recency would fail."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(users):
        seq = list(rng.integers(3, NUM_ITEMS + 1, size=int(rng.integers(6, 10))))
        a = int(rng.integers(0, len(seq) - 1))
        seq.insert(a, A)
        seq.insert(a + 2, B)
        sequences.append(np.asarray(seq, dtype=np.int64))
    return sequences


def _export(model, tmp_path, name: str):
    save_model(tmp_path / name / "model.pt", model, ITEM_IDS, run_config={"model": model.config.arch})
    counts = np.concatenate([[0], np.ones(NUM_ITEMS, dtype=np.int64)])
    export_run(tmp_path / name, tmp_path / f"{name}-export", item_counts=counts)
    return tmp_path / f"{name}-export" / "model.onnx"


@pytest.fixture(scope="module", params=["sasrec", "gru"])
def planted(request, tmp_path_factory):
    """A small model of each kind trained briefly on the planted data, exported to ONNX."""
    torch.manual_seed(0)
    sizes = {"emb_dim": 16, "hidden_dim": 16, "num_layers": 1, "dropout": 0.0}
    config = ModelConfig(request.param, NUM_ITEMS, max_len=MAX_LEN, **sizes)
    model = build_model(config)
    dataset = window_dataset(planted_sequences(400, seed=0), MAX_LEN, "all")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for epoch in range(20):
        train_epoch(model, window_loader(dataset, 64, epoch), optimizer)
    model.eval()
    return model, _export(model, tmp_path_factory.mktemp(request.param), "run")


def test_the_planted_cause_explains_its_effect(planted):
    """Histories with A and not yet B: B is recommended, and A is the top explanation of B."""
    _, path = planted
    runner = OnDeviceRecommender.load(path)
    rng = np.random.default_rng(1)
    hits = 0
    trials = 20
    for _ in range(trials):
        others = [int(ITEM_IDS[i]) for i in rng.choice(np.arange(3, NUM_ITEMS + 1), size=4, replace=False)]
        history = others[:3] + [int(ITEM_IDS[A])] + others[3:]  # A second to last, B due next
        result = runner.recommend(history, k=3)
        assert int(ITEM_IDS[B]) in result.items, result.items
        (why,) = runner.explain(history, [int(ITEM_IDS[B])], top=3)
        hits += why.causes[0][0] == int(ITEM_IDS[A])
        assert why.causes[0][1] > 0
    assert hits == trials


def test_attribution_equals_the_pytorch_log_probability_drop(planted):
    """Oracle: log p(item | history) - log p(item | history with h masked), computed with PyTorch."""
    model, path = planted
    runner = OnDeviceRecommender.load(path)
    rng = np.random.default_rng(2)
    history_idx = rng.choice(np.arange(1, NUM_ITEMS + 1), size=MAX_LEN + 3)  # repeats and truncation
    history = [int(ITEM_IDS[i]) for i in history_idx]
    targets = [int(ITEM_IDS[i]) for i in (4, 9, 17)]
    window = history_idx[-MAX_LEN:]

    def logp(items: np.ndarray) -> torch.Tensor:  # items: the window, 0 where masked
        with torch.no_grad():
            hidden = model.encode(torch.as_tensor(left_pad([items], MAX_LEN)))[:, -1]
            return torch.log_softmax(model.score(hidden).double(), dim=-1)[0]

    full = logp(window)
    for explanation, target in zip(runner.explain(history, targets, top=NUM_ITEMS), targets):
        assert explanation.item == target
        t = int(np.flatnonzero(ITEM_IDS == target)[0]) - 1
        want = {
            int(ITEM_IDS[v]): float(full[t] - logp(np.where(window == v, 0, window))[t]) for v in set(window.tolist())
        }
        got = dict(explanation.causes)
        assert set(got) == set(want)  # every distinct item of the model's input, and only those
        for item, value in want.items():
            assert got[item] == pytest.approx(value, abs=2e-3), item
        assert [v for _, v in explanation.causes] == sorted(got.values(), reverse=True)


def test_empty_history_explains_nothing_and_bad_arguments_are_errors(planted):
    _, path = planted
    runner = OnDeviceRecommender.load(path)
    assert runner.explain([], [int(ITEM_IDS[3])])[0].causes == []
    with pytest.raises(DataError, match="outside the model's catalogue"):
        runner.explain([int(ITEM_IDS[1])], [12345])
    with pytest.raises(ConfigError, match="top"):
        runner.explain([int(ITEM_IDS[1])], [int(ITEM_IDS[2])], top=0)


class _Watch:
    """An audit hook (they cannot be removed, so it is switched on and off) that records every file
    opened for writing and every socket operation while on."""

    on = False
    seen: list[str] = []

    @classmethod
    def hook(cls, event: str, args) -> None:
        if not cls.on:
            return
        if event == "open" and len(args) > 1 and isinstance(args[1], str) and set(args[1]) & set("wax+"):
            cls.seen.append(f"open {args[0]} {args[1]}")
        elif event == "open" and len(args) > 2 and isinstance(args[2], int) and args[2] & 0o3:  # O_WRONLY|O_RDWR
            cls.seen.append(f"open {args[0]} flags {args[2]}")
        elif event.startswith("socket."):
            cls.seen.append(event)


sys.addaudithook(_Watch.hook)


def test_cli_explain_prints_top_causes_and_nothing_leaves_the_device(planted, tmp_path, capsys, monkeypatch):
    _, path = planted
    history = tmp_path / "me.csv"
    rows = [(7, int(ITEM_IDS[i]), t) for t, i in enumerate([5, 6, 7, A, 8])]
    history.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    movies = tmp_path / "movies.dat"
    movies.write_text("".join(f"{int(i)}::Film {int(i)}::Drama\n" for i in ITEM_IDS[1:]), encoding="latin-1")
    before = sorted(p for p in tmp_path.rglob("*"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("explain opened a connection"))
    _Watch.seen.clear()
    _Watch.on = True
    try:
        code = main(["recommend", "--model", str(path), "--history", str(history), "-k", "3", "--explain"])
        code_titles = main(
            ["recommend", "--model", str(path), "--history", str(history), "-k", "2", "--explain", "1"]
            + ["--items-file", str(movies)]
        )
    finally:
        _Watch.on = False
    assert code == code_titles == 0
    assert _Watch.seen == []  # no file written, no socket touched
    assert sorted(p for p in tmp_path.rglob("*")) == before
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "log-probability" in out.err
    first = lines[: 3 * 4]  # -k 3, top 3 causes each
    items = [line.split("\t") for line in first if not line.startswith("\t")]
    causes = [line.split("\t") for line in first if line.startswith("\t")]
    assert [row[0] for row in items] == ["1", "2", "3"] and len(causes) == 9
    seen = {str(int(ITEM_IDS[i])) for i in (5, 6, A, 7, 8)}
    assert all(c[1] == "because" and c[2] in seen and float(c[3]) == float(c[3]) for c in causes)
    assert str(int(ITEM_IDS[B])) in [row[1] for row in items]
    b_block = first[[row[1] for row in items].index(str(int(ITEM_IDS[B]))) * 4 :][:4]
    assert b_block[1].split("\t")[2] == str(int(ITEM_IDS[A]))  # B because of A first
    titled = lines[12:]
    assert len(titled) == 4 and titled[1].split("\t")[4] == f"Film {titled[1].split(chr(9))[2]}"


def test_cli_explain_with_a_negative_count_exits_2(planted, tmp_path, capsys):
    _, path = planted
    history = tmp_path / "me.csv"
    history.write_text(f"user_id,item_id,timestamp\n1,{int(ITEM_IDS[1])},0\n")
    assert main(["recommend", "--model", str(path), "--history", str(history), "--explain", "-2"]) == 2
    assert "--explain" in capsys.readouterr().err
