"""A ClientApp for tests: the real handlers, except that partition 1 always fails to train."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import app as real

app = ClientApp()
app.query()(real.query)
app.evaluate()(real.evaluate)


@app.train()
def train(msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) == 1:
        raise RuntimeError("injected failure: this client's data is unreadable")
    return real.train(msg, context)


half_app = ClientApp()  # every odd partition fails: half of a round's sampled clients drop out
half_app.query()(real.query)
half_app.evaluate()(real.evaluate)


@half_app.train()
def half_train(msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) % 2 == 1:
        raise RuntimeError("injected dropout: this device went offline")
    return real.train(msg, context)
