"""Loading interaction files: every supported format, and a located `DataError` for bad input."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zipfile
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from common.data import files as datasets
from common.data.interactions import Columns, load_interactions
from common.errors import DataError

ROWS = [(1, 10, 100), (1, 11, 90), (2, 10, 95), (3, 12, 7)]  # user, item, time in file order


def expected_frame(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype("int64")


def write(path, text: str):
    path.write_text(text)
    return path


def csv_text(rows=ROWS, sep=",", header=("user_id", "item_id", "timestamp")) -> str:
    lines = [sep.join(header)] if header else []
    lines += [sep.join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def assert_frame(frame: pd.DataFrame, rows=ROWS) -> None:
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert all(dtype == np.int64 for dtype in frame.dtypes)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected_frame(rows))


# --- formats -------------------------------------------------------------------------------------


def test_csv_with_header(tmp_path):
    assert_frame(load_interactions(write(tmp_path / "a.csv", csv_text())))


def test_csv_column_order_and_extra_columns_do_not_matter(tmp_path):
    text = "rating,timestamp,item_id,user_id\n" + "".join(f"5,{t},{i},{u}\n" for u, i, t in ROWS)
    assert_frame(load_interactions(write(tmp_path / "a.csv", text)))


def test_tsv(tmp_path):
    assert_frame(load_interactions(write(tmp_path / "a.tsv", csv_text(sep="\t"))))


def test_csv_gz(tmp_path):
    path = tmp_path / "a.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(csv_text())
    assert_frame(load_interactions(path))


def test_parquet(tmp_path):
    path = tmp_path / "a.parquet"
    expected_frame().to_parquet(path)
    assert_frame(load_interactions(path))


def test_custom_column_names_seed_format(tmp_path):
    # The seed project's user_behavior.csv: user, time, item, in that order and with other names.
    text = "user ID,timestamp,item ID\n" + "".join(f"{u},{t},{i}\n" for u, i, t in ROWS)
    path = write(tmp_path / "user_behavior.csv", text)
    assert_frame(load_interactions(path, Columns(user="user ID", item="item ID", time="timestamp")))


def test_movielens_1m_ratings_dat(tmp_path):
    text = "".join(f"{u}::{i}::4::{t}\n" for u, i, t in ROWS)
    assert_frame(load_interactions(write(tmp_path / "ratings.dat", text)))


def test_movielens_100k_u_data(tmp_path):
    text = "".join(f"{u}\t{i}\t3\t{t}\n" for u, i, t in ROWS)
    assert_frame(load_interactions(write(tmp_path / "u.data", text)))


def test_iso_date_timestamps_become_unix_seconds(tmp_path):
    stamps = ["2000-01-01T00:00:05Z", "2000-01-01", "2001-09-09 01:46:40", "1999-12-31T23:59:59"]
    text = "user_id,item_id,timestamp\n" + "".join(f"1,{i},{s}\n" for i, s in enumerate(stamps, 1))
    frame = load_interactions(write(tmp_path / "a.csv", text))
    oracle = [int(datetime.fromisoformat(s.replace("Z", "")).replace(tzinfo=UTC).timestamp()) for s in stamps]
    assert oracle == [946684805, 946684800, 1000000000, 946684799]
    assert frame["timestamp"].tolist() == oracle


def test_parquet_datetime_column_becomes_unix_seconds(tmp_path):
    path = tmp_path / "a.parquet"
    pd.DataFrame(
        {
            "user_id": [1, 1],
            "item_id": [2, 3],
            "timestamp": pd.to_datetime(["2001-09-09 01:46:40", "2001-09-09 01:46:41"]),
        }
    ).to_parquet(path)
    assert load_interactions(path)["timestamp"].tolist() == [1_000_000_000, 1_000_000_001]


def test_integer_valued_float_ids_are_accepted(tmp_path):
    frame = load_interactions(write(tmp_path / "a.csv", "user_id,item_id,timestamp\n1.0,2,3\n"))
    assert frame.iloc[0].tolist() == [1, 2, 3]


# --- bad input: DataError naming the file and the place ------------------------------------------


def raises_data_error(path, columns=Columns()) -> str:  # noqa: B008 - a frozen dataclass
    with pytest.raises(DataError) as info:
        load_interactions(path, columns)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "not found" in raises_data_error(tmp_path / "nope.csv")


def test_directory(tmp_path):
    assert "directory" in raises_data_error(tmp_path)


def test_empty_file(tmp_path):
    assert "empty" in raises_data_error(write(tmp_path / "a.csv", ""))


def test_header_only_file(tmp_path):
    assert "no interaction rows" in raises_data_error(write(tmp_path / "a.csv", "user_id,item_id,timestamp\n"))


def test_misnamed_column_lists_found_columns(tmp_path):
    path = write(tmp_path / "a.csv", "user,item_id,timestamp\n1,2,3\n")
    message = raises_data_error(path)
    assert "missing column(s) user_id" in message
    assert "found user, item_id, timestamp" in message


def test_missing_column(tmp_path):
    message = raises_data_error(write(tmp_path / "a.csv", "user_id,item_id\n1,2\n"))
    assert "missing column(s) timestamp" in message
    assert "found user_id, item_id" in message


def test_custom_columns_not_in_file(tmp_path):
    path = write(tmp_path / "a.csv", csv_text())
    message = raises_data_error(path, Columns(user="user ID", item="item ID", time="timestamp"))
    assert "missing column(s) user ID, item ID" in message


@pytest.mark.parametrize("column,bad", [("user_id", "u7"), ("item_id", "2.5")])
def test_non_integer_id_names_the_line(tmp_path, column, bad):
    rows = [["1", "2", "3"] for _ in range(5)]
    rows[3][0 if column == "user_id" else 1] = bad  # data row 4 -> line 5 (the header is line 1)
    text = "user_id,item_id,timestamp\n" + "".join(",".join(r) + "\n" for r in rows)
    message = raises_data_error(write(tmp_path / "a.csv", text))
    assert f"line 5: {column} '{bad}' is not an integer ID" in message


def test_non_integer_id_line_in_headerless_movielens_file(tmp_path):
    text = "1::2::5::3\n1::2::5::4\nx::2::5::5\n"  # no header: the bad row is line 3
    assert "line 3: user_id 'x'" in raises_data_error(write(tmp_path / "ratings.dat", text))


def test_missing_id_names_the_line(tmp_path):
    text = "user_id,item_id,timestamp\n1,2,3\n1,,4\n"
    assert "line 3: missing item_id" in raises_data_error(write(tmp_path / "a.csv", text))


def test_missing_id_in_parquet_names_the_row(tmp_path):
    path = tmp_path / "a.parquet"
    pd.DataFrame({"user_id": [1, None, 3], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]}).to_parquet(path)
    assert "row 1: missing user_id" in raises_data_error(path)


def test_unparsable_timestamp_names_the_line(tmp_path):
    text = "user_id,item_id,timestamp\n1,2,3\n1,3,4\n1,4,yesterday\n"
    message = raises_data_error(write(tmp_path / "a.csv", text))
    assert "line 4: timestamp 'yesterday'" in message


def test_missing_timestamp_names_the_line(tmp_path):
    text = "user_id,item_id,timestamp\n1,2,\n"
    assert "line 2: missing timestamp" in raises_data_error(write(tmp_path / "a.csv", text))


@pytest.mark.parametrize("sep,label", [("\t", "tabs"), (";", "semicolons")])
def test_csv_with_wrong_delimiter(tmp_path, sep, label):
    message = raises_data_error(write(tmp_path / "a.csv", csv_text(sep=sep)))
    assert f"line 1 is separated by {label}" in message
    assert "must use commas" in message


def test_tsv_that_is_comma_separated(tmp_path):
    message = raises_data_error(write(tmp_path / "a.tsv", csv_text()))
    assert "line 1 is separated by commas" in message
    assert "must use tabs" in message


def test_headerless_csv_is_reported_as_missing_columns(tmp_path):
    message = raises_data_error(write(tmp_path / "a.csv", csv_text(header=None)))
    assert "missing column(s) user_id, item_id, timestamp" in message
    assert "found 1, 10, 100" in message


def test_corrupt_gzip(tmp_path):
    message = raises_data_error(write(tmp_path / "a.csv.gz", "this is not gzip data\n"))
    assert "gzip" in message


def test_ragged_rows(tmp_path):
    text = "user_id,item_id,timestamp\n1,2,3\n1,2,3,4,5\n"
    assert "malformed rows" in raises_data_error(write(tmp_path / "a.csv", text))


# --- common.data.files: local copies first, checksum-verified archives -----------------------------


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise AssertionError("download_movielens must not be called when a local copy exists")

    monkeypatch.setattr(datasets, "download_movielens", fail)
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)


def test_resolve_finds_copy_in_data_dir(tmp_path, no_download):
    path = tmp_path / "data" / "ml-1m" / "ratings.dat"
    path.parent.mkdir(parents=True)
    path.write_text("1::2::5::3\n")
    assert datasets.resolve_interactions("ml-1m", str(tmp_path / "data")) == path


def test_resolve_finds_copy_in_env_data_dir(tmp_path, monkeypatch, no_download):
    path = tmp_path / "env" / "ml-100k" / "u.data"
    path.parent.mkdir(parents=True)
    path.write_text("1\t2\t5\t3\n")
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "env"))
    assert datasets.resolve_interactions("ml-100k") == path


def test_resolve_prefers_data_dir_then_preferred_candidate(tmp_path, monkeypatch, no_download):
    for base, name in (("given", "ratings.dat"), ("given", "interactions.csv.gz"), ("env", "interactions.csv.gz")):
        (tmp_path / base / "ml-1m").mkdir(parents=True, exist_ok=True)
        (tmp_path / base / "ml-1m" / name).write_text("x")
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "env"))
    found = datasets.resolve_interactions("ml-1m", str(tmp_path / "given"))
    assert found == tmp_path / "given" / "ml-1m" / "interactions.csv.gz"
    assert datasets.resolve_interactions("ml-1m") == tmp_path / "env" / "ml-1m" / "interactions.csv.gz"


def test_resolve_finds_copy_in_download_cache(tmp_path, no_download):
    path = tmp_path / "cache" / "ml-1m" / "ratings.dat"
    path.parent.mkdir(parents=True)
    path.write_text("1::2::5::3\n")
    assert datasets.resolve_interactions("ml-1m") == path


def test_resolve_without_download_names_the_searched_dirs(tmp_path, no_download):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nowhere"))):
        datasets.resolve_interactions("ml-1m", str(tmp_path / "nowhere"), download=False)


def tiny_zip(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("ml-1m/ratings.dat", "1::2::5::3\n")
    archive = tmp_path / "ml-1m.zip"
    archive.write_bytes(buffer.getvalue())
    return archive, hashlib.md5(buffer.getvalue()).hexdigest()


def test_verify_and_unpack_accepts_matching_md5(tmp_path):
    archive, md5 = tiny_zip(tmp_path)
    assert datasets.md5sum(archive) == md5
    datasets.verify_and_unpack(archive, md5, tmp_path / "out")
    assert (tmp_path / "out" / "ml-1m" / "ratings.dat").read_text() == "1::2::5::3\n"


def test_verify_and_unpack_rejects_wrong_md5(tmp_path):
    archive, md5 = tiny_zip(tmp_path)
    wrong = format(int(md5, 16) ^ 1, "032x")
    with pytest.raises(DataError, match="checksum mismatch"):
        datasets.verify_and_unpack(archive, wrong, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unparsable_date_among_dates_names_the_line(tmp_path):
    text = "user_id,item_id,timestamp\n1,2,2000-01-01\n1,3,2000-01-02\n1,4,someday\n"
    assert "line 4: timestamp 'someday'" in raises_data_error(write(tmp_path / "a.csv", text))
