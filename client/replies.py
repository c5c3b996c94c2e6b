"""A ClientApp's reply: numeric metrics and, for a training round, the weights; under DP only the
fields its mode lets a device send (`common.privacy.releases`)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from common.config import RunConfig
from common.privacy.releases import device_reply


def reply(msg: Message, metrics: dict, arrays: dict | None = None, config: RunConfig | None = None) -> Message:
    """The reply; a training reply under DP carries only the fields its mode lets a device send."""
    if config is not None:
        metrics = device_reply(metrics, config)
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content=content, reply_to=msg)
