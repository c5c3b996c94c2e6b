"""Schemas of the JSON files fedseqrec reads back, and the one reader that checks them.

A run folder, an export folder or a study outlives the command that wrote it: it is copied, cut
short by a full disk, edited by hand, or written by another version. `read_json` reads such a file
and turns every way it can be wrong into one line naming the file, the field, what was expected and
what to do: unreadable, empty, not UTF-8, not JSON (with the line), a key given twice (JSON keeps the
last silently), nested deeper than any file we write, the wrong top-level type, or a field that
breaks its schema. The schemas (pydantic) declare only the fields the readers use, with their types
and ranges; other fields pass through, so a newer writer's additions do not break an older reader.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.errors import DataError

DAMAGED = "the folder is damaged: copy it again from where the run wrote it, or run the command again"
_MAX_DEPTH = 64  # levels of nesting: our files use fewer than 8; deeper is a damaged or hostile file

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0.0)]  # epsilon may be inf (no noise): json writes Infinity
Count = Annotated[int, Field(ge=0)]
Scalar = str | int | float | bool | None


class _Open(BaseModel):
    """Fields a reader uses are checked; others pass (a newer version may add some)."""

    model_config = ConfigDict(extra="allow")


class PrivacyFile(_Open):
    """RUN_DIR/privacy.json (server/privacy_report.py writes it)."""

    dp_mode: str
    unit_of_privacy: str | None = None
    delta: Probability
    epsilon: NonNegative
    # a number, or under client DP with a target a sentence: each client calibrates its own
    noise_multiplier: NonNegative | str | None = None
    rounds: Count | None = None
    adjacency: str | None = None
    server_events: list[list[float]] | None = None  # one list of numbers per accounting event
    epsilon_by_round: list[dict[str, Any]] | None = None


Figures = dict[str, float | None]  # metric -> value (ndcg@10, hr@10, ...)


class _Baseline(_Open):
    test: Figures | None = None
    validation: Figures | None = None


class _GroupAttribute(_Open):
    groups: dict[str, dict[str, float | str | None]] = {}


class _MetricsByGroup(_Open):
    source: str | None = None
    attributes: dict[str, _GroupAttribute] | None = None


class AuditedPrivacyFile(PrivacyFile):
    """privacy.json as the audit reads it: the unit of privacy decides which bound applies."""

    unit_of_privacy: str


class SummaryFile(_Open):
    """RUN_DIR/summary.json of a federation (and metrics.json of a training, which has the same figures)."""

    test: Figures | None = None
    validation: Figures | None = None
    best_round: int | None = None
    best_epoch: int | None = None
    rounds: Count | None = None
    epochs_run: Count | None = None
    num_users: Count | None = None
    num_items: Count | None = None
    stopped_by: str | None = None
    stopped_early: bool | str | None = None
    # Absent, or an object: the report reads it with .get(key, {}), which a null would break.
    popularity_baseline: _Baseline = None  # type: ignore[assignment]
    metrics_by_group: _MetricsByGroup | None = None
    init_model: dict[str, Any] | None = None


class RoundRow(_Open):
    """One line of RUN_DIR/metrics.jsonl: a round (federation) or an epoch (training)."""

    round: int | None = None
    epoch: int | None = None
    validation: Figures | None = None
    test: Figures | None = None


class InputEntry(_Open):
    path: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Count | None = None


class InputsFile(_Open):
    """RUN_DIR/inputs.json (common/data/run_inputs.py)."""

    inputs: dict[str, InputEntry]


class LedgerFile(_Open):
    """A device's privacy_ledger.json as the audit reads it: its history of spends."""

    history: list[tuple[NonNegative, Probability, Count]]  # (noise multiplier, sample rate, steps), as saved


class ExportMetadata(_Open):
    """EXPORT/metadata.json (common/model/export.py)."""

    popularity: Any = None


CONFIG_FILE = TypeAdapter(dict[str, Scalar])  # RUN_DIR/config.json: flat run-config keys (RunConfig checks them)
JSON_OBJECT = TypeAdapter(dict[str, Any])

SCHEMAS: dict[str, Any] = {  # by file name, for readers that take any file of a run folder
    "privacy.json": PrivacyFile,
    "summary.json": SummaryFile,
    "metrics.json": SummaryFile,
    "inputs.json": InputsFile,
    "config.json": CONFIG_FILE,
}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key[:40]!r} given twice")
        seen[key] = value
    return seen


def _depth(value: Any, limit: int = _MAX_DEPTH) -> int:
    """How deep the value nests (stops counting at `limit`)."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest >= limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


def _field_problem(exc: ValidationError) -> str:
    """The first violation as `field 'a.b': <what was expected>`."""
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"]) or "(the whole file)"
    message = error["msg"][0].lower() + error["msg"][1:]
    shown = repr(error.get("input"))
    got = "" if error["type"] == "missing" else f", got {shown if len(shown) <= 40 else shown[:37] + '...'}"
    return f"field '{loc[:80]}': {message}{got}"


def parse_json(raw: bytes, path: Path, what: str, todo: str) -> Any:
    """JSON from bytes, or a DataError naming the file and what is wrong with it."""
    where = f"{path}: {what}"
    if not raw.strip():
        raise DataError(f"{where} is empty; {todo}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at {exc.start}); {todo}") from exc
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); {todo}"
        ) from exc
    except ValueError as exc:  # a duplicated key, from the hook
        raise DataError(f"{where} is not valid: {exc}; {todo}") from exc
    except RecursionError as exc:
        raise DataError(f"{where} is nested too deeply to be a file fedseqrec wrote; {todo}") from exc
    if _depth(value) >= _MAX_DEPTH:
        raise DataError(f"{where} is nested too deeply to be a file fedseqrec wrote; {todo}")
    return value


def read_json(path: Path, schema: Any = JSON_OBJECT, *, what: str = "file", todo: str = DAMAGED) -> Any:
    """Read and check a JSON file; the value as the schema returns it (a model, or plain JSON).
    `schema`: a pydantic model class, a TypeAdapter, or None for any JSON value."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: {what} not found; {todo}") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{path}: is a folder, not the {what}; {todo}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc}); {todo}") from exc
    value = parse_json(raw, path, what, todo)
    return check_json(value, path, schema, what=what, todo=todo)


def check_json(value: Any, path: Path, schema: Any = JSON_OBJECT, *, what: str = "file", todo: str = DAMAGED) -> Any:
    """Check a parsed JSON value against a schema, naming the file on a violation."""
    if schema is None:
        return value
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        if not isinstance(value, dict):
            raise DataError(f"{path}: {what} holds {_type_name(value)}, not a JSON object; {todo}")
        try:
            schema.model_validate(value)
        except ValidationError as exc:
            raise DataError(f"{path}: {what}: {_field_problem(exc)}; {todo}") from exc
        return value  # the plain dict: readers index it as before
    if schema in (CONFIG_FILE, JSON_OBJECT) and not isinstance(value, dict):
        raise DataError(f"{path}: {what} holds {_type_name(value)}, not a JSON object; {todo}")
    try:
        return schema.validate_python(value)
    except ValidationError as exc:
        top = exc.errors()[0]
        if not top["loc"]:  # the whole value has the wrong type
            raise DataError(f"{path}: {what} holds {_type_name(value)}; {top['msg'].lower()}; {todo}") from exc
        raise DataError(f"{path}: {what}: {_field_problem(exc)}; {todo}") from exc


def check_sqlite(path: Path, what: str, todo: str) -> None:
    """A SQLite file that opens and passes SQLite's own quick check (optuna's study.db)."""
    path = Path(path)
    if not path.exists():
        return
    try:
        with open(path, "rb") as handle:
            header = handle.read(16)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror or exc}); {todo}") from exc
    if header != b"SQLite format 3\x00":
        state = "is empty" if not header else "is not a SQLite database"
        raise DataError(f"{path}: the {what} {state}; {todo}")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = connection.execute("PRAGMA quick_check").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: the {what} is damaged ({exc}); {todo}") from exc
    if not result or result[0] != "ok":
        raise DataError(f"{path}: the {what} is damaged ({str(result and result[0])[:80]}); {todo}")
