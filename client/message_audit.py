"""A Flower client mod that records the structure of each reply a client sends (runtime half of the
message audit; the offline checker is common/audit/messages.py).

The mod (enabled by run config `audit-messages = true`) appends one JSON line per outgoing reply to
RUN_DIR/message-audit/client-<key>.jsonl: record names and kinds, array names / shapes / dtypes,
metric keys and value types; never array contents or metric values. A device (a node with a
`state-dir`) writes only there, never to a path the server chose; a simulated node writes to the
run dir the server names (its query replies, sent before that, are not kept).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import Context, Message

from common.audit.messages import AUDIT_DIR

__all__ = ["AUDIT_DIR", "message_audit_mod", "message_structure"]


def message_structure(reply: Message) -> dict:
    """The shape of a reply without its contents."""
    row = {"message_type": reply.metadata.message_type, "error": reply.has_error(), "records": {}}
    if reply.has_error():
        return row
    content = reply.content
    for name, record in content.array_records.items():
        row["records"][name] = {
            "kind": "arrays",
            "arrays": {key: {"shape": list(array.shape), "dtype": str(array.dtype)} for key, array in record.items()},
        }
    for name, record in content.metric_records.items():
        row["records"][name] = {
            "kind": "metrics",
            "metrics": {key: type(value).__name__ for key, value in record.items()},
        }
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
