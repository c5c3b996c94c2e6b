"""The device's side of SecAgg+: Flower's `secaggplus_mod`, speaking to our train handler.

Flower's SecAgg+ client mod runs the protocol's four stages and, in the third, asks the app
to train and masks what it returns. It speaks the legacy FitIns / FitRes format (unnamed arrays,
a `num_examples` count); our handler speaks named arrays and metrics. This mod routes only SecAgg+
messages through `secaggplus_mod` and translates at the boundary, so the handler is the same one
that plain rounds use. A device that trains nobody this round (0 users) sends the global weights
with weight 0: it still has to take part in the masking.

What leaves in the clear is only the weight (Flower's protocol needs it unmasked: 1 for a device's
one user, 0 when it declined, both public); every other number rides inside the masked vector, so
the server learns only sums. The clipped flag (adaptive clipping's count) is one more masked array;
the train loss is not sent at all.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

ARRAY_NAMES = "array-names"  # as server.secure_aggregation sends it
CLIPPED_SHARE = "clipped-share"  # the masked extra array: share of the node's users whose update was clipped


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)

    def train_in_our_format(legacy: Message, ctx: Context) -> Message:
        # Read the records themselves: the legacy FitIns type cannot hold our list-valued config entries.
        config = legacy.content.config_records["fitins.config"]
        names = list(config[ARRAY_NAMES])
        arrays = legacy.content.array_records["fitins.parameters"]
        start = {name: array for name, array in zip(names, arrays.values())}
        legacy.content = RecordDict(
            {
                "arrays": ArrayRecord(start),
                "config": ConfigRecord({k: v for k, v in config.items() if k != ARRAY_NAMES}),
            }
        )
        reply = call_next(legacy, ctx)
        fitres = to_fitres(reply, names, start)
        reply.content = compat.fitres_to_recorddict(fitres, keep_input=True)
        return reply

    return secaggplus_mod(msg, context, train_in_our_format)


def to_fitres(reply: Message, names: list[str], start: dict) -> FitRes:
    """Our handler's reply as the legacy FitRes SecAgg+ masks: the weights and the share of clipped
    users as masked arrays, the weight (users) in the clear, nothing else."""
    metrics = dict(reply.content["metrics"]) if "metrics" in reply.content else {}
    trained = reply.content["arrays"] if "arrays" in reply.content else ArrayRecord(start)
    weight = int(metrics.get("num-examples", 0)) if "arrays" in reply.content else 0
    clipped_share = float(metrics.get("clipped", 0)) / max(weight, 1)
    return FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters(
            [trained[name].numpy() for name in names] + [np.array([clipped_share], dtype=np.float32)]
        ),
        weight,
        {},  # nothing else in the clear
    )
