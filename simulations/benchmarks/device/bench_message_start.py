"""CPU of one ClientApp message in a fresh process, as a SuperNode runs every message: imports, the
handler, and which heavy modules the message pulled in.

    .venv/bin/python -m simulations.benchmarks.device.bench_message_start --kind train --model sasrec gru \
        --repeats 3 --out simulations/results/message-start.json

Each repeat is a new `python` process that imports `client.handlers` and answers one message of a
cross-silo client (synthetic data, the partition's client 0), like `flwr-clientapp` minus Flower's own
start (~1 s of CPU, the same for every message). Run it in a checkout of each commit to compare them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "torch._dynamo", "opacus", "pandas", "scipy")

# One message in this process: (CPU seconds, heavy modules loaded) as JSON on the last line.
CHILD = """
import json, sys, time
started = time.process_time()
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from client import handlers
from common.config import RunConfig
from common.training.step import model_for
kind, flat = sys.argv[1], json.loads(sys.argv[2])
config = RunConfig.from_flat(flat)
arrays = model_for(config.model, config.data, flat["synthetic-items"], seed=0).arrays()
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"server-round": 1})})
context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config=config.to_flat())
answer = getattr(handlers, kind)(Message(content=content, message_type=kind, dst_node_id=7), context)
assert not answer.has_error(), answer.error.reason
heavy = [m for m in sys.argv[3].split(",") if m in sys.modules]
print(json.dumps({"cpu_s": round(time.process_time() - started, 3), "loaded": heavy}))
"""


def run_config(model: str) -> dict:
    return {
        "data": "synthetic",
        "synthetic-users": 40,
        "synthetic-items": 60,
        "partition": "iid",
        "num-partitions": 2,
        "model": model,
        "emb-dim": 16,
        "num-layers": 1,
        "max-len": 20,
        "dropout": 0.0,
        "num-threads": 1,
        "local-epochs": 1,
    }


def one_message(kind: str, model: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind, json.dumps(run_config(model)), ",".join(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench_message_start: the {kind} message on {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["train", "evaluate"], nargs="+", default=["train"])
    parser.add_argument("--model", choices=["sasrec", "gru", "lstm"], nargs="+", default=["sasrec"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON of the results")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be >= 1")
    if args.out:  # before the runs: a bad path should not cost them
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.touch()
        except OSError as exc:
            parser.error(f"--out {args.out}: cannot write there ({exc.strerror})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    results = []
    for kind in args.kind:
        for model in args.model:
            runs = [one_message(kind, model) for _ in range(args.repeats)]
            cpu = [r["cpu_s"] for r in runs]
            print(f"{kind} {model}: CPU s per fresh process {cpu}; loaded {runs[-1]['loaded']}", flush=True)
            results.append({"kind": kind, "model": model, "cpu_s": cpu, "loaded": runs[-1]["loaded"]})
    if args.out:
        args.out.write_text(json.dumps({"commit": commit.stdout.strip(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
