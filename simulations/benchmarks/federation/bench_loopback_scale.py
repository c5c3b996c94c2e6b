"""How the deployment path scales with SuperNodes (issue 32, "Beyond one machine"): a loopback
deployment (TLS SuperLink, SuperNode authentication, fedseqrec/launch/loopback.py) with 2, 8 and 32
SuperNodes running the same small job, its seconds per round and the peak memory of the SuperLink
and of the whole process tree.

    nice -n 10 .venv/bin/python -m simulations.benchmarks.federation.bench_loopback_scale \
        --nodes 2 8 32 --rounds 4 --out /work/runs/cluster/loopback-scale

The job is fixed (128 synthetic users, 60 items, a one-layer SASRec of width 16): its users are
split over the SuperNodes and every SuperNode trains every round, so the work per round is the same
and what grows with the SuperNodes is the deployment's own cost: one `flwr-clientapp` process per
SuperNode per message (each imports torch), the SuperLink's message traffic, the ServerApp's
aggregation of more replies. The server holds only the item catalogue; the devices evaluate
(federated evaluation) in the last round only, so rounds before it are training alone.

`--turns N`: one machine standing in for many devices has a few cores for all their ClientApps;
at most N of them run at once (fedseqrec/launch/supernode.py `take_turns`), so that 32 ClientApps
importing torch together on 2 cores do not miss their first heartbeat and pile up. `--poll-interval`
and `--heartbeat-interval` set the SuperNodes' looks for work and heartbeat (Flower's own: 3 s, 30 s).

`--superlink-state file` (default) keeps the SuperLink's state in an SQLite file, as the loopback
deployment does so that a restarted SuperLink carries on; `memory` is Flower's default, in memory.

Per SuperNode count, one JSON (RESULT.json in its folder) and one line in summary.json:
`train_seconds` (each round's training: send, local training, replies, aggregation) and `seconds`
(the whole round) from the ServerApp's metrics.jsonl, the median of the first over every round and
of the second over the rounds before the last (which also evaluates), the start-up time (SuperLink,
key registration, every SuperNode online), and peak resident memory sampled every 0.5 s: the
`flower-superlink` process alone, the SuperLink with what it starts (SuperExec, ServerApp), every
process of the deployment together, and the most `flwr-clientapp` processes seen at once.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import psutil

from common.config import RunConfig
from common.data.synthetic import synthetic_interactions
from fedseqrec.deployment_data import write_node_files
from fedseqrec.launch.loopback import DeploymentError, LoopbackDeployment, nodes_from_partition
from fedseqrec.launch.processes import become_subreaper

USERS, ITEMS = 128, 60
JOB = {  # a small SASRec job on synthetic users, every SuperNode each round
    "model": "sasrec",
    "emb-dim": 16,
    "hidden-dim": 32,
    "num-layers": 1,
    "max-len": 20,
    "dropout": 0.0,
    "batch-size": 32,
    "local-epochs": 1,
    "local-lr": 0.01,
    "strategy": "fedavg",
    "num-threads": 1,
    "seed": 7,
}


def _below(pid: int, root: int, parent: dict[int, int]) -> bool:
    """`pid` is `root` or one of its descendants (by the parent pids sampled)."""
    while pid in parent:
        if pid == root:
            return True
        pid = parent[pid]
    return False


class TreeMemory:
    """Peak RSS of the deployment's processes, sampled every `interval` s from its process tracker.

    Also a safety valve for a shared machine: more than `max_clientapps` ClientApp processes at once
    (a SuperNode starts a new one for a task whose token expired while the last one was still
    importing torch, and they pile up), or less than `min_free` bytes of memory available, stops
    the run (KeyboardInterrupt in the main thread, so the deployment is stopped by pid) and says why
    in `tripped`."""

    def __init__(self, deployment: LoopbackDeployment, max_clientapps: int, min_free: int = 3 * 2**30):
        self.deployment, self.interval = deployment, 0.5
        self.max_clientapps, self.min_free, self.tripped = max_clientapps, min_free, ""
        self.peak = {"superlink": 0, "superlink_tree": 0, "tree": 0, "clientapps": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            tracker = self.deployment.tracker
            if tracker is None or "superlink" not in tracker.started:
                continue
            link_pid = tracker.started["superlink"].pid
            rss, parent, names = {}, {}, {}
            for proc in tracker.processes():
                try:
                    with proc.oneshot():
                        rss[proc.pid], parent[proc.pid] = proc.memory_info().rss, proc.ppid()
                        names[proc.pid] = proc.name()
                except psutil.Error:
                    continue
            now = {
                "superlink": rss.get(link_pid, 0),
                "superlink_tree": sum(v for pid, v in rss.items() if _below(pid, link_pid, parent)),
                "tree": sum(rss.values()),
                "clientapps": sum("flwr-clientapp" in n for n in names.values()),
            }
            self.peak = {k: max(self.peak[k], now[k]) for k in self.peak}
            free = psutil.virtual_memory().available
            if not self.tripped and (now["clientapps"] > self.max_clientapps or free < self.min_free):
                self.tripped = (
                    f"stopped by the benchmark: {now['clientapps']} flwr-clientapp processes at once "
                    f"({len(self.deployment.nodes)} SuperNodes), {free / 2**30:.1f} GiB of memory available"
                )
                _thread.interrupt_main()

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def follow_rounds(out: Path, total: int, nodes: int, done: threading.Event) -> None:
    """Progress: one line per round as the ServerApp writes it."""
    seen = 0
    while not done.wait(2.0):
        try:
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        except (FileNotFoundError, ValueError):
            continue
        for row in rows[seen:]:
            print(
                f"  [{nodes} SuperNodes] round {row['round']}/{total}: {row.get('replied')} replies, "
                f"train {row.get('train-seconds', 0):.1f} s, round {row.get('seconds', 0):.1f} s",
                flush=True,
            )
        seen = len(rows)


def measure(nodes: int, rounds: int, root: Path, state: str = "file", timings: dict | None = None) -> dict:
    work = root / f"{nodes}-nodes-{state}"
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / "interactions.csv"
    synthetic_interactions(USERS, ITEMS, seed=0).to_csv(data_file, index=False)
    config = {**JOB, "num-server-rounds": rounds, "clients-per-round": nodes, "eval-every-rounds": rounds}
    write_node_files(RunConfig.from_flat({**config, "data": str(data_file)}, where="bench"), work / "partition", nodes)
    config |= {  # the server holds no interactions: only the item catalogue
        "data": str(work / "not-on-the-server.csv"),
        "federated-evaluation": True,
        "catalogue-path": str(work / "partition" / "catalogue.json"),
        "out-dir": str(work / "run"),
    }
    deployment = LoopbackDeployment(
        work / "deployment",
        nodes_from_partition(work / "partition", work / "deployment"),
        startup_timeout=900,
        stop_grace=20,
        extra_env={"FEDSEQREC_CACHE": str(work / "cache")},
        state_file=state == "file",
        **(timings or {}),
    )
    result = {
        "supernodes": nodes,
        "superlink_state": state,
        "rounds": rounds,
        "users": USERS,
        "items": ITEMS,
        "load_before": os.getloadavg(),
        "timings": timings or {},
    }
    t0 = time.perf_counter()
    done = threading.Event()
    progress = threading.Thread(target=follow_rounds, args=(work / "run", rounds, nodes, done), daemon=True)
    try:
        with TreeMemory(deployment, max_clientapps=3 * nodes) as memory:
            try:
                with deployment:
                    result["startup_seconds"] = time.perf_counter() - t0
                    print(f"  [{nodes} SuperNodes] online after {result['startup_seconds']:.0f} s", flush=True)
                    progress.start()
                    t1 = time.perf_counter()
                    deployment.run(config, timeout=3600)
                    result["run_seconds"] = time.perf_counter() - t1
            except DeploymentError as exc:
                result["error"] = str(exc)
            except KeyboardInterrupt:
                if not memory.tripped:
                    raise
                result["error"] = memory.tripped
            finally:
                done.set()
        result["alive_after_stop"] = deployment.alive()
    finally:
        result["peak_rss_mb"] = {k: v / 2**20 for k, v in memory.peak.items() if k != "clientapps"}
        result["peak_clientapp_processes"] = memory.peak["clientapps"]
    rows_file = work / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    result["train_seconds"] = [r.get("train-seconds") for r in rows]
    result["seconds"] = [r.get("seconds") for r in rows]
    result["replied"] = [r.get("replied") for r in rows]
    if rows:
        result["median_train_seconds"] = statistics.median(result["train_seconds"])
        # the last round also evaluates (federated evaluation): the rounds before it are training alone
        result["median_seconds_before_last"] = statistics.median(result["seconds"][:-1] or result["seconds"])
    result["load_after"] = os.getloadavg()
    (work / "RESULT.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--superlink-state",
        choices=["file", "memory"],
        default="file",
        help="the SuperLink's state in an SQLite file (what a restartable deployment uses) or in memory",
    )
    parser.add_argument(
        "--turns",
        type=int,
        help="at most this many ClientApps of all the SuperNodes at once (one machine standing in for many "
        "devices; fedseqrec/launch/supernode.py); default: no limit",
    )
    parser.add_argument("--poll-interval", type=float, help="the SuperNodes' and SuperExecs' look for work, s")
    parser.add_argument("--heartbeat-interval", type=float, help="the heartbeat the SuperNodes declare, s")
    args = parser.parse_args()
    if args.turns is not None and args.turns < 1:
        parser.error(f"--turns {args.turns}: give at least 1")
    timings = {
        "turns": args.turns,
        "poll_interval": args.poll_interval,
        "heartbeat_interval": args.heartbeat_interval,
    }
    timings = {k: v for k, v in timings.items() if v is not None}
    become_subreaper()  # Flower's detached processes stay in this tree: counted, and stopped by pid
    args.out.mkdir(parents=True, exist_ok=True)
    summary = []
    # SIGINT or SIGTERM: KeyboardInterrupt, so the deployment is stopped by pid, even when the
    # benchmark was started with SIGINT ignored (`cmd &` in a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _measure_each(args, timings, summary)
    except KeyboardInterrupt:
        print(f"bench_loopback_scale: stopped; the counts measured before are in {args.out / 'summary.json'}")
        raise SystemExit(130) from None


def _measure_each(args, timings: dict, summary: list) -> None:
    for nodes in args.nodes:
        print(
            f"{nodes} SuperNodes: starting (TLS, node auth, SuperLink state in {args.superlink_state}), "
            f"{args.rounds} rounds",
            flush=True,
        )
        result = measure(nodes, args.rounds, args.out, args.superlink_state, timings)
        summary.append(result)
        keys = ("median_train_seconds", "median_seconds_before_last", "startup_seconds", "error")
        shown = {k: result.get(k) for k in keys}
        print(f"{nodes} SuperNodes: {json.dumps(shown)} peak RSS MB {json.dumps(result['peak_rss_mb'])}", flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
