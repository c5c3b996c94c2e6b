"""Flower ClientApp: thin handlers that decode the message, call `common`, encode the reply.

Only model weights and numeric metrics leave the client: no user IDs, item IDs or histories.
An exception in a handler becomes an error reply that the server counts; it never aborts a round.
"""

from __future__ import annotations

import warnings

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.local_data import client_key, load_local_data
from common.config import RunConfig
from common.federated import local_evaluate, local_train

# Opacus' known, harmless notices (see STACK.md); anything else still shows.
warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")

app = ClientApp()


def _reply(msg: Message, metrics: dict, arrays: dict | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Identify this client (its partition or device id) so that the server samples by identity."""
    return _reply(msg, {"client-key": client_key(context.node_config)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = RunConfig.from_flat(context.run_config)
    local = load_local_data(config, context.node_config)
    round_config = msg.content["config"]
    result = local_train(config, local, msg.content["arrays"].to_torch_state_dict(),
                         server_round=int(round_config["server-round"]), client=client_key(context.node_config),
                         proximal_mu=float(round_config.get("proximal-mu", 0.0)))
    return _reply(msg, result.metrics, result.arrays)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = RunConfig.from_flat(context.run_config)
    local = load_local_data(config, context.node_config)
    return _reply(msg, local_evaluate(config, local, msg.content["arrays"].to_torch_state_dict()))
