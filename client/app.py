"""Flower ClientApp: thin handlers that decode the message, call `common`, encode the reply.

Only model weights and numeric metrics leave the client: no user IDs, item IDs or histories.
An exception in a handler becomes an error reply that the server counts; it never aborts a round.

A device's SuperNode starts one ClientApp process per message, so this module loads only what every
message needs (Flower, the run config, the mods): the identification query and SecAgg+'s key stages
answer without torch (0.56 s of imports instead of ~1.8 s); training and evaluation import
`client.handlers` when their message comes.
"""

from __future__ import annotations

import warnings

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.fault_injection import fault_injection_mod
from client.identity import client_key, is_simulated
from client.message_audit import message_audit_mod
from client.replies import reply
from client.secure_aggregation import secure_aggregation_mod
from common.config import RunConfig

# Opacus' known, harmless notices (the insecure-RNG default; the full-backward-hook notice that its
# per-sample hooks raise); anything else still shows.
warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")

# message_audit_mod records each reply's structure when audit-messages = true; fault_injection_mod
# makes simulated clients drop out or attack when the run asks (sim-dropout, sim-attack).
# secure_aggregation_mod runs Flower's SecAgg+ client protocol when the server asks for it.
app = ClientApp(mods=[message_audit_mod, secure_aggregation_mod, fault_injection_mod])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Identify this client (its partition or device id) so that the server samples by identity.
    In the cohort engine a simulated node instead offers to host the run's simulated devices."""
    config = RunConfig.from_flat(context.run_config)
    if config.federation.cohort_engine and is_simulated(context.node_config):
        return reply(msg, {"cohort-host": 1})
    return reply(msg, {"client-key": client_key(context.node_config)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    from client import handlers  # torch and the data stack: only for a message that trains

    return handlers.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank this client's own held-out items; only means and a count leave (federated evaluation)."""
    from client import handlers

    return handlers.evaluate(msg, context)
