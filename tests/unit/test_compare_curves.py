"""simulations.benchmarks.central.compare_curves: validation curves of several runs, one plot and one table."""

from __future__ import annotations

import json

from simulations.benchmarks.central.compare_curves import main, read_curve, table


def _metrics(folder, values):
    folder.mkdir()
    rows = [{"epoch": e, "loss": 1.0, "validation": {"ndcg@10": v}} for e, v in enumerate(values, 1)]
    rows.insert(1, {"epoch": 99, "loss": 1.0})  # an epoch without validation is skipped
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_curves_table_and_plot(tmp_path, capsys):
    a = _metrics(tmp_path / "a", [0.1, 0.2, 0.3, 0.25, 0.28])
    b = _metrics(tmp_path / "b", [0.05, 0.1, 0.15])
    assert read_curve(a) == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.25, 5: 0.28}
    text = table({"a": read_curve(a), "b": read_curve(b)}, every=2)
    assert "| 2 | 0.2000 | 0.1000 |" in text and "| 4 | 0.2500 | - |" in text
    assert "| best (epoch) | 0.3000 (3) | 0.1500 (3) |" in text
    out = tmp_path / "curves.png"
    assert main([f"a={a}", f"b={b / 'metrics.jsonl'}", "--out", str(out), "--goal", "0.3"]) == 0
    assert out.stat().st_size > 1000 and "best (epoch)" in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["no-label-here", "--out", str(tmp_path / "x.png")]) == 2
    assert main([f"a={tmp_path / 'missing'}", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "LABEL=PATH" in err[0] and "no metrics.jsonl" in err[1]
    assert not (tmp_path / "x.png").exists()
