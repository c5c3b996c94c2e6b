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

from common.errors import DataError, brief

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


def _check_text_encoding(path: Path) -> None:
    """UTF-16 (Excel's "Unicode text") and other non-UTF-8 files, found before pandas reads garbage."""
    if path.suffix == ".parquet":
        return
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except (OSError, EOFError) as exc:
        raise DataError(
            f"{path}: cannot read the file ({exc}); check that it is a valid "
            f"{'gzip' if path.suffix == '.gz' else 'text'} file"
        ) from exc
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        kind = "UTF-16 text" if head.startswith((b"\xff\xfe", b"\xfe\xff")) or head[1:2] == b"\x00" else "binary"
        raise DataError(f"{path}: the file is {kind}, not UTF-8 text; save it as UTF-8 CSV (e.g. iconv -t UTF-8)")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """Name the line of the first byte that is not UTF-8 (pandas only knows its offset in a buffer)."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        raw = handle.read()
    try:
        raw.decode("utf-8")
        where = ""
    except UnicodeDecodeError as first:
        line = raw.count(b"\n", 0, first.start) + 1
        where = f" (byte 0x{raw[first.start]:02x} on line {line})"
    return DataError(
        f"{path}: not UTF-8 text{where}; save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 for a Latin-1 file)"
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


_RENAME_HINT = "set user-col / item-col / time-col to the names the file uses"


def load_interactions(
    path: str | Path, columns: Columns = Columns(), *, what: str = "", columns_hint: str = _RENAME_HINT
) -> pd.DataFrame:
    """Load and validate an interactions file; every problem raises `DataError`. `what` names the
    setting the path came from (e.g. "--history"), `columns_hint` how to fix missing columns there."""
    path = Path(path)
    if not path.exists():
        todo = (
            "pass an existing file"
            if what
            else "pass an existing interactions file or a dataset name (ml-1m, ml-100k, synthetic)"
        )
        raise DataError(f"{what + ' ' if what else ''}{path}: file not found; {todo}")
    try:
        return _load(path, columns, columns_hint)
    except DataError as exc:
        if what:
            raise DataError(f"{what} {exc}") from exc.__cause__
        raise


def _load(path: Path, columns: Columns, columns_hint: str) -> pd.DataFrame:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass the interactions file inside it")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; it needs a header and at least one interaction row")
    _check_text_encoding(path)

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
            raise DataError(f"{path}: not a readable Parquet file ({brief(exc)}); write it again") from exc
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
        names = [name.strip().strip('"') for name in header.lstrip("\ufeff").split(sep)]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DataError(
                f"{path}: line 1 names column(s) {', '.join(repeated)} more than once; keep one column of each name"
            )
        frame = _read_csv(path, sep=sep)
        header_lines, wanted = 1, columns

    frame = _select_columns(path, frame, wanted, columns_hint)
    if frame.empty:
        raise DataError(
            f"{path}: no interaction rows after the header; add one user_id,item_id,timestamp row per interaction"
        )
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
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from exc
    except (OSError, EOFError) as exc:
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


def _select_columns(path: Path, frame: pd.DataFrame, columns: Columns, hint: str) -> pd.DataFrame:
    frame.columns = [str(c).strip() for c in frame.columns]
    wanted = {columns.user: USER, columns.item: ITEM, columns.time: TIME}
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns[:10])}. "
            f"Rename the columns or {hint}"
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
        out[column] = _integer_ids(path, column, values, where)
    out[TIME] = _parse_timestamps(path, frame[TIME], where)
    return pd.DataFrame(out)


def _integer_ids(path: Path, column: str, values: pd.Series, where) -> np.ndarray:
    numeric = pd.to_numeric(values, errors="coerce")  # int64 when every value fits; else float, uint64 or object
    if numeric.dtype != np.int64:
        as_float = numeric.astype("float64").to_numpy()  # NaN for non-numbers
        bad = np.isnan(as_float) | (as_float % 1 != 0)
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(
                f"{path}: {where(row)}: {column} {values.iloc[row]!r} is not an integer ID; "
                "IDs must be integers (map string IDs to integers first)"
            )
        huge = np.abs(as_float) >= 2.0**63
        if huge.any():
            row = int(np.argmax(huge))
            raise DataError(
                f"{path}: {where(row)}: {column} {values.iloc[row]!r} is too large; IDs must fit in a signed "
                "64-bit integer (map long IDs to small integers first)"
            )
    return numeric.to_numpy().astype(np.int64)


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
