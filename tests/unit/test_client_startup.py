"""A ClientApp process answers what needs no model without loading torch or the data stack: on a
device each message starts a fresh process, so every import is paid per message (issue 32)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

import client.app as client_app
from common.config import RunConfig

HEAVY = ("torch", "pandas", "opacus", "scipy")
assert [m for m in HEAVY if m in sys.modules] == [], [m for m in HEAVY if m in sys.modules]
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
flat = RunConfig.from_flat({"data": "synthetic", "cohort-engine": True, "partition": "user"}).to_flat()
answers = []
for node_config in ({"client-id": 4, "data-path": "me.csv", "state-dir": "state"}, {"partition-id": 2}):
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=flat)
    ask = Message(content=RecordDict({"config": ConfigRecord({})}), message_type="query", dst_node_id=7)
    answers.append(dict(client_app.query(ask, context).content["metrics"]))
assert answers == [{"client-key": 4}, {"cohort-host": 1}], answers
assert [m for m in HEAVY if m in sys.modules] == [], [m for m in HEAVY if m in sys.modules]
from client import handlers  # what a training message loads
assert "torch" in sys.modules
"""


def test_the_identification_query_needs_no_torch_and_training_loads_it():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
