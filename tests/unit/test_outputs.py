"""Output folders: staged writes appear whole or not at all; the positive paths of the bad-input checks."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from common.data.interactions import load_interactions
from common.errors import OutputError
from common.outputs import check_output_dir, staged_output
from fedseqrec.cli import main


def test_a_staged_folder_appears_with_every_file_and_normal_permissions(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with staged_output(out, "--out") as stage:
        (stage / "one.txt").write_text("1")
        (stage / "two.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["one.txt", "two.txt"]
    assert stat.S_IMODE(out.stat().st_mode) != 0o700  # not mkdtemp's private mode
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["out"]  # no staging folder left


def test_a_failure_part_way_leaves_no_folder_and_no_new_parents(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out, "--out") as stage:
            (stage / "one.txt").write_text("1")
            raise RuntimeError("bad input found late")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_part_way_leaves_an_existing_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("the old model")
    with pytest.raises(OutputError, match="No space left on device.*nothing was changed"):
        with staged_output(out, "--out") as stage:
            (stage / "model.onnx").write_text("half of a new")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [(p.name, p.read_text()) for p in out.iterdir()] == [("model.onnx", "the old model")]


def test_success_replaces_the_files_of_an_existing_folder_and_keeps_the_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("old")
    (out / "notes.txt").write_text("mine")
    with staged_output(out, "--out") as stage:
        (stage / "model.onnx").write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"model.onnx": "new", "notes.txt": "mine"}


def test_check_output_dir_accepts_new_and_existing_folders(tmp_path):
    check_output_dir(tmp_path, "--out")
    check_output_dir(tmp_path / "x" / "y", "--out")
    assert list(tmp_path.iterdir()) == []  # it creates nothing


def test_a_utf8_file_with_a_byte_order_mark_is_not_bad_input(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\n1,10,100\n")
    assert load_interactions(path)["item_id"].tolist() == [10]


def test_check_device_accepts_a_good_node_config(tmp_path, capsys):
    (tmp_path / "catalogue.json").write_text("[-1, 100, 101, 102]")
    (tmp_path / "device.csv").write_text("user_id,item_id,timestamp\n7,100,1\n7,101,2\n7,102,3\n7,999,4\n")
    node_config = (
        f'data-path="{tmp_path}/device.csv" catalogue-path="{tmp_path}/catalogue.json" client-id=7 '
        f'state-dir="{tmp_path}/state" max-epsilon=8 train="false"'
    )
    assert main(["check-device", "--node-config", node_config]) == 0
    line = capsys.readouterr().out.strip()
    assert line == "ok: client-id 7: 1 user(s), 3 interactions of 3 catalogue items; max-epsilon 8.0, train false"
    assert not (tmp_path / "state").exists()  # checked, not created
