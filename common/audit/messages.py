"""What clients send: a Flower client mod that records each reply's structure, and its checker.

The mod (enabled by run config `audit-messages = true`) appends one JSON line per outgoing reply to
RUN_DIR/message-audit/client-<key>.jsonl: record names and kinds, array names / shapes / dtypes,
metric keys and value types; never array contents or metric values. A device (a node with a
`state-dir`) writes only there, never to a path the server chose; a simulated node writes to the
run dir the server names (its query replies, sent before that, are not kept).
The checker accepts only the model's arrays and whitelisted numeric metrics: any other record,
key or type (a user ID, an item list, a string) fails the audit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from flwr.app import Context, Message

AUDIT_DIR = "message-audit"
METRIC_WHITELIST = frozenset({"client-key", "train-loss", "num-examples", "unit-weight", "declined", "epsilon",
                              "dp-steps", "noise-multiplier", "sample-rate", "user-level",
                              "dp-noise-reproducible", "users", "clipped", "refused-slot", "dropped-users"})
METRIC_PATTERNS = (re.compile(r"ndcg@\d+"), re.compile(r"hr@\d+"))
NUMERIC_TYPES = frozenset({"int", "float"})


def message_structure(reply: Message) -> dict:
    """The shape of a reply without its contents."""
    row = {"message_type": reply.metadata.message_type, "error": reply.has_error(), "records": {}}
    if reply.has_error():
        return row
    content = reply.content
    for name, record in content.array_records.items():
        row["records"][name] = {"kind": "arrays", "arrays": {key: {"shape": list(array.shape), "dtype": str(array.dtype)}
                                                             for key, array in record.items()}}
    for name, record in content.metric_records.items():
        row["records"][name] = {"kind": "metrics", "metrics": {key: type(value).__name__
                                                               for key, value in record.items()}}
    for name, record in content.config_records.items():
        row["records"][name] = {"kind": "config", "keys": {key: type(value).__name__ for key, value in record.items()}}
    return row


def _audit_file(msg: Message, context: Context) -> Path | None:
    config = msg.content.config_records.get("config") if not msg.has_error() else None
    key = context.node_config.get("partition-id", context.node_config.get("client-id", context.node_id))
    if "state-dir" in context.node_config:  # a device's files stay in the place its owner chose
        return Path(str(context.node_config["state-dir"])) / AUDIT_DIR / f"client-{key}.jsonl"
    if config is not None and "run-dir" in config:
        return Path(str(config["run-dir"])) / AUDIT_DIR / f"client-{key}.jsonl"
    return None


def message_audit_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower client mod: pass the message on, record the reply's structure if the run asks for it."""
    reply = call_next(msg, context)
    if str(context.run_config.get("audit-messages", False)).lower() != "true":
        return reply
    path = _audit_file(msg, context)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(message_structure(reply)) + "\n"
        with open(path, "a", encoding="utf-8") as handle:  # one small append per reply
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    return reply


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
                    problems.append(f"record '{name}': array {key} is {sent[key]['shape']} {sent[key]['dtype']}, "
                                    f"the model's is {list(shape)} {dtype}")
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
            failures += [f"{path.name}:{number} ({row['message_type']}): {p}" for p in check_message(row, expected_arrays)]
    return {"files": len(files), "messages": count, "by_type": types, "failures": failures,
            "whitelist": sorted(METRIC_WHITELIST) + [p.pattern for p in METRIC_PATTERNS]}
