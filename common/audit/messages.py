"""What clients sent: the offline checker of the reply structures that the client's mod
(client/message_audit.py) recorded in RUN_DIR/message-audit/client-<key>.jsonl.

The checker accepts only the model's arrays and whitelisted numeric metrics: any other record,
key or type (a user ID, an item list, a string) fails the audit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

AUDIT_DIR = "message-audit"  # under the run dir (or a device's state dir): one JSONL file per client
METRIC_WHITELIST = frozenset(
    {
        "client-key",
        "train-loss",
        "num-examples",
        "unit-weight",
        "declined",
        "epsilon",
        "dp-steps",
        "noise-multiplier",
        "sample-rate",
        "user-level",
        "dp-noise-reproducible",
        "users",
        "clipped",
        "refused-slot",
        "dropped-users",
    }
)
METRIC_PATTERNS = (re.compile(r"ndcg@\d+"), re.compile(r"hr@\d+"))
NUMERIC_TYPES = frozenset({"int", "float"})


def metric_allowed(key: str) -> bool:
    return key in METRIC_WHITELIST or any(p.fullmatch(key) for p in METRIC_PATTERNS)


def check_message(row: dict, expected_arrays: dict[str, tuple[list[int], str]]) -> list[str]:
    """Problems with one recorded reply (empty list = it passes)."""
    problems = []
    for name, record in row.get("records", {}).items():
        kind = record.get("kind")
        if kind == "arrays":
            sent = record["arrays"]
            if set(sent) != set(expected_arrays):
                extra, missing = sorted(set(sent) - set(expected_arrays)), sorted(set(expected_arrays) - set(sent))
                problems.append(f"record '{name}': arrays differ from the model's (extra {extra}, missing {missing})")
            for key in set(sent) & set(expected_arrays):
                shape, dtype = expected_arrays[key]
                if list(sent[key]["shape"]) != list(shape) or sent[key]["dtype"] != dtype:
                    problems.append(
                        f"record '{name}': array {key} is {sent[key]['shape']} {sent[key]['dtype']}, "
                        f"the model's is {list(shape)} {dtype}"
                    )
        elif kind == "metrics":
            for key, value_type in record["metrics"].items():
                if not metric_allowed(key):
                    problems.append(f"record '{name}': metric '{key}' is not whitelisted")
                elif value_type not in NUMERIC_TYPES:
                    problems.append(f"record '{name}': metric '{key}' has type {value_type}, not a number")
        else:
            problems.append(f"record '{name}' of kind {kind!r}: clients may send only arrays and metrics")
    return problems


def audit_messages(run_dir: Path, expected_arrays: dict[str, tuple[list[int], str]]) -> dict:
    files = sorted((Path(run_dir) / AUDIT_DIR).glob("*.jsonl"))
    failures, count, types = [], 0, {}
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            row = json.loads(line)
            count += 1
            types[row["message_type"]] = types.get(row["message_type"], 0) + 1
            failures += [
                f"{path.name}:{number} ({row['message_type']}): {p}" for p in check_message(row, expected_arrays)
            ]
    return {
        "files": len(files),
        "messages": count,
        "by_type": types,
        "failures": failures,
        "whitelist": sorted(METRIC_WHITELIST) + [p.pattern for p in METRIC_PATTERNS],
    }
