"""Read user-item-time interaction files into one validated DataFrame.

Formats: CSV/TSV with a header (plain or .gz), Parquet, and the official MovieLens files
(`ratings.dat` with `::`, `u.data` tab-separated, both without a header). The result always
has int64 columns `user_id`, `item_id`, `timestamp`, in file order.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError

USER, ITEM, TIME = "user_id", "item_id", "timestamp"


@dataclass(frozen=True)
class Columns:
    user: str = USER
    item: str = ITEM
    time: str = TIME


# Official MovieLens layouts: no header, fixed column order.
_MOVIELENS = {
    "ratings.dat": ("::", [USER, ITEM, "rating", TIME]),
    "u.data": ("\t", [USER, ITEM, "rating", TIME]),
}


def _open_text(path: Path):
    return (
        gzip.open(path, "rt", encoding="utf-8", errors="replace")
        if path.suffix == ".gz"
        else open(path, encoding="utf-8", errors="replace")
    )


def _first_line(path: Path) -> str:
    try:
        with _open_text(path) as handle:
            return handle.readline().rstrip("\r\n")
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot read the file ({exc}); check that it is a valid "
            f"{'gzip' if path.suffix == '.gz' else 'text'} file"
        ) from exc


def _delimiter_for(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    return "\t" if name.endswith((".tsv", ".tab")) else ","


def load_interactions(path: str | Path, columns: Columns = Columns()) -> pd.DataFrame:
    """Load and validate an interactions file; every problem raises `DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: file not found; pass an existing interactions file or a dataset name (ml-1m, ml-100k, synthetic)"
        )
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the interactions file inside it")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; it needs a header and at least one interaction row")

    if path.name in _MOVIELENS:
        sep, names = _MOVIELENS[path.name]
        frame = _read_csv(path, sep=sep, header=None, names=names, engine="python" if len(sep) > 1 else "c")
        frame = frame[[USER, ITEM, TIME]]
        header_lines = 0
        wanted = Columns()
    elif path.suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        header_lines, wanted = None, columns
    else:
        sep = _delimiter_for(path)
        header = _first_line(path)
        if not header.strip():
            raise DataError(
                f"{path}: the first line is empty; it must be a header naming the "
                f"columns {columns.user}, {columns.item}, {columns.time}"
            )
        _check_delimiter(path, header, sep, columns)
        frame = _read_csv(path, sep=sep)
        header_lines, wanted = 1, columns

    frame = _select_columns(path, frame, wanted)
    if frame.empty:
        raise DataError(f"{path}: no interaction rows after the header")
    return _validated(path, frame, header_lines)


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: file is empty") from exc
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{path}: malformed rows ({' '.join(str(exc).split())}); every row needs the same number of "
            "fields as the header"
        ) from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from exc


def _check_delimiter(path: Path, header: str, sep: str, columns: Columns) -> None:
    if sep in header:
        return
    for other, label in ((",", "commas"), ("\t", "tabs"), (";", "semicolons"), ("::", "'::'"), ("|", "'|'")):
        if other != sep and other in header:
            expected = "tabs" if sep == "\t" else "commas"
            raise DataError(
                f"{path}: line 1 is separated by {label}, but a {path.suffix or 'CSV'} file must use "
                f"{expected}; convert the file or rename it to match its delimiter "
                f"(.csv for commas, .tsv for tabs)"
            )
    if header.strip() not in (columns.user, columns.item, columns.time):
        raise DataError(
            f"{path}: line 1 ('{header[:60]}') has a single column; expected a header with "
            f"{columns.user}, {columns.item}, {columns.time} separated by "
            f"{'tabs' if sep == chr(9) else 'commas'}"
        )


def _select_columns(path: Path, frame: pd.DataFrame, columns: Columns) -> pd.DataFrame:
    frame.columns = [str(c).strip() for c in frame.columns]
    wanted = {columns.user: USER, columns.item: ITEM, columns.time: TIME}
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns[:10])}. "
            "Rename the columns or set user-col / item-col / time-col to the names the file uses"
        )
    return frame[list(wanted)].rename(columns=wanted)


def _validated(path: Path, frame: pd.DataFrame, header_lines: int | None) -> pd.DataFrame:
    def where(row: int) -> str:
        return f"line {row + header_lines + 1}" if header_lines is not None else f"row {row}"

    out = {}
    for column in (USER, ITEM):
        values = frame[column]
        missing = values.isna().to_numpy()
        if missing.any():
            row = int(np.argmax(missing))
            raise DataError(f"{path}: {where(row)}: missing {column}; every row needs a user and an item ID")
        numeric = pd.to_numeric(values, errors="coerce")
        bad = numeric.isna().to_numpy() | (numeric.to_numpy() % 1 != 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{path}: {where(row)}: {column} {values.iloc[row]!r} is not an integer ID; "
                "IDs must be integers (map string IDs to integers first)"
            )
        out[column] = numeric.to_numpy().astype(np.int64)
    out[TIME] = _parse_timestamps(path, frame[TIME], where)
    return pd.DataFrame(out)


def _parse_timestamps(path: Path, values: pd.Series, where) -> np.ndarray:
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError(f"{path}: {where(row)}: missing timestamp; every row needs a time or position")
    if pd.api.types.is_datetime64_any_dtype(values):  # e.g. a Parquet datetime column
        parsed = pd.to_datetime(values, utc=True)
        bad = parsed.isna().to_numpy()
    else:
        numeric = pd.to_numeric(values, errors="coerce")
        if not numeric.isna().any():
            return numeric.to_numpy().astype(np.int64)
        if numeric.notna().any():  # a numeric column with some non-numbers: those are the bad rows
            bad = numeric.isna().to_numpy()
        else:
            parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
            bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{path}: {where(row)}: timestamp {values.iloc[row]!r} is neither a number nor a "
            "date/time; use Unix seconds, a per-user position, or ISO 8601 dates"
        )
    # Whole seconds since the epoch, whatever the datetime resolution (pandas 3 parses to us).
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy().astype(np.int64)
